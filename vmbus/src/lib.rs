//! VMBus, the Hyper-V synthetic device bus, as a `no_std` protocol library.
//!
//! Byte-compatible with Hyper-V and Linux's `hv_vmbus`:
//! - [`ring`]: the shared-memory ring buffer (control page + data area), producer and consumer halves
//!   and the signalling rules that decide when a peer must be interrupted;
//! - [`packet`]: VMBus packet descriptors and the packet kinds carried in rings;
//! - [`protocol`]: channel management messages (`CHANNELMSG_*`), versions and interface GUIDs;
//! - [`gpadl`]: splitting a GPADL into header/body messages and reassembling them;
//! - [`client`] and [`server`]: sans-I/O state machines for the guest connection and the host channel server.
//!
//! Everything here is safe code except [`mem`], the one audited module that touches raw shared memory.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod mem;
mod open_enum;
pub mod packet;
pub mod ring;

pub mod gpadl;
pub mod protocol;

#[cfg(feature = "alloc")]
pub mod client;
#[cfg(feature = "alloc")]
pub mod server;
