//! Guest-side drivers for viridian, `no_std` + `alloc`: any guest kernel links this crate and implements
//! [`platform::Platform`] (DMA-able pages, MSRs, CPUID, interrupt counters) for it.
//!
//! - [`hv`]: Hyper-V enlightenment detection (CPUID leaves), the hypercall page, SynIC setup and message
//!   receive/EOM;
//! - the VMBus client and the VSC drivers build on it ([`storvsc`], [`netvsc`] with a smoltcp device);
//! - [`net`]: [`net::GuestNic`], what every NIC driver offers a guest's network stack;
//! - [`e1000`]: the emulated Intel 82540EM NIC, driven register by register as Linux's e1000 does;
//! - [`virtio`] and [`virtio_blk`]: virtio 1.x (split virtqueue, virtio-mmio) and the virtio-blk baseline,
//!   written from the specification with Linux's notification discipline.
//!
//! The crate's README is the guest SDK: what a guest kernel must provide (the `Platform`,
//! `EventSignal`, `PortIo` and `IdentityMapped` contracts) and a compiled example bringing up a
//! VMBus disk and NIC.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod ata;
pub mod e1000;
pub mod hv;
pub mod ic;
pub mod net;
pub mod netvsc;
pub mod platform;
pub mod storvsc;
pub mod storvsc_disk;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;
pub mod vmbus_client;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
