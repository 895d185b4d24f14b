//! Host side of viridian's synthetic devices: the VMBus service and device model that serve a guest's
//! channel messages, the VSPs (virtual service providers) behind its channels, and the emulated and
//! virtio storage baselines they are compared with — all over the same disk backends.
//!
//! - [`vmbus_service`]: the VMBus service of one partition and its device model;
//! - [`device_threads`]: which host threads serve a partition's devices, and their CPU time;
//! - [`synthetic`]: the VSPs: storvsp (synthetic SCSI), netvsp (synthetic NIC) and the integration
//!   components;
//! - [`emulated`]: devices a guest drives register by register (the IDE disk);
//! - [`virtio`]: virtio devices (virtio-blk over virtio-mmio);
//! - [`backend`]: the disk backends every storage device serves from;
//! - [`guest_memory`]: guest physical memory as every device model sees it;
//! - [`interrupt`]: the interrupt a device model raises;
//! - [`net`]: the network backends every network device serves from;
//! - [`log_limit`]: rate limits for the log lines a guest can trigger ([`guest_warn!`], [`guest_error!`]).
//!
//! The emulated and virtio devices know nothing of KVM: their port/MMIO handlers, ioeventfds,
//! irqfds and MSI routes are plugged into a partition by the `host-kvm` crate.

pub mod backend;
pub mod device_threads;
pub mod emulated;
pub mod guest_memory;
pub mod interrupt;
pub mod log_limit;
pub mod net;
pub mod synthetic;
pub mod virtio;
pub mod vmbus_service;

#[cfg(test)]
mod profile_tests;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
