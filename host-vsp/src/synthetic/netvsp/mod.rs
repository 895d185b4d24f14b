//! netvsp: the host side of the Hyper-V synthetic NIC, wire-compatible with Linux's `hv_netvsc`,
//! moving frames between the guest and a [`NetBackend`](crate::net::NetBackend).
//!
//! - [`buffers`]: the guest's receive buffer (sections the host fills) and send buffer (sections
//!   the guest fills), every access checked and refused once the GPADL is torn down;
//! - [`control`]: the RNDIS control plane (INITIALIZE, QUERY, SET, KEEPALIVE, RESET, HALT, link
//!   indications), sans I/O;
//! - [`transmit`]: reading the RNDIS messages of a SEND_RNDIS_PKT from a send-buffer section and/or
//!   GPA-direct pages, frames handed to the backend as guest memory;
//! - [`worker`]: [`NetvspWorker`], NVSP (version, buffers, RNDIS carriage) over the channel's rings;
//! - [`receive`]: the worker's receive path (backend → receive sections → transfer-page packets);
//! - [`device`]: [`NetvspDevice`], the VMBus device and its channel thread.
//!
//! Everything the guest controls is validated here: section indices, RNDIS lengths and offsets,
//! PPIs, frame sizes, GPA-direct pages. No request reaches host memory outside guest RAM or another
//! device's state, or makes the worker panic or spin.

#![forbid(unsafe_code)]

pub mod buffers;
pub mod control;
pub mod device;
pub mod receive;
pub mod transmit;
pub mod worker;

#[cfg(test)]
mod tests;

use netvsp_protocol::nvsp::{NvspVersion, LINUX_NVSP_VERSIONS, LINUX_SEND_SECTION_SIZE};

pub use buffers::{ContiguousBuffer, GuestBuffer};
pub use device::{NetvspDevice, NetvspDeviceStats, NetvspStatsHandle};
pub use worker::{GpadlLookup, NetvspStats, NetvspWorker, PollResult};

/// Default receive sub-allocation: two per page, so a section never straddles a guest page and
/// every frame lands in one piece of guest memory (a 1514-byte frame plus its 44-byte RNDIS header
/// needs 1558).
pub const DEFAULT_RECEIVE_SECTION_SIZE: u32 = 2048;
/// Default link speed: 10 Gbit/s in 100 bps units.
pub const DEFAULT_LINK_SPEED_100BPS: u32 = 100_000_000;

/// How a NIC behaves.
#[derive(Debug, Clone)]
pub struct NetvspConfig {
    /// The permanent MAC address.
    pub mac: [u8; 6],
    /// NVSP versions accepted (default: all six Linux knows).
    pub versions: Vec<NvspVersion>,
    /// Receive sub-allocation size (≥ 68; frames larger than it minus 44 are dropped).
    pub receive_section_size: u32,
    /// Send section size offered to the guest.
    pub send_section_size: u32,
    /// Link speed reported (100 bps units).
    pub link_speed_100bps: u32,
}

impl NetvspConfig {
    /// Defaults with `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            versions: LINUX_NVSP_VERSIONS.to_vec(),
            receive_section_size: DEFAULT_RECEIVE_SECTION_SIZE,
            send_section_size: LINUX_SEND_SECTION_SIZE,
            link_speed_100bps: DEFAULT_LINK_SPEED_100BPS,
        }
    }

    /// The sizes as used: sections at least [`netvsp_protocol::nvsp::MIN_SECTION_SIZE`].
    pub fn normalized(mut self) -> Self {
        let min = netvsp_protocol::nvsp::MIN_SECTION_SIZE;
        self.receive_section_size = self.receive_section_size.max(min) & !7;
        self.send_section_size = self.send_section_size.max(min);
        self
    }
}
