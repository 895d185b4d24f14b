//! storvsp: the host side of the Hyper-V synthetic SCSI controller, wire-compatible with Linux's
//! `hv_storvsc`, serving LUNs from [`BlockBackend`]s.
//!
//! - [`handshake`]: the init handshake (BEGIN_INIT, protocol version with fallback, properties,
//!   END_INIT) and the state it leaves;
//! - [`request`]: decoding an inbound ring packet into a request: the vstor packet and the guest data
//!   buffer described by GPA-direct ranges, translated and checked against guest memory ([`crate::guest_memory`]);
//! - [`scsi`] (with [`scsi_pages`]): the SCSI commands a guest issues, executed against a LUN's backend,
//!   with fixed-format sense data for every error;
//! - [`worker`]: [`StorvspWorker`], which owns the channel's two rings, drains requests in batches,
//!   executes them (inline or on a small thread pool, completing out of order), and writes completions,
//!   keeping them pending while the guest's ring is full;
//! - [`executor`]: executing SRBs (inline or on the pool) with their panics contained: a request whose
//!   backend panics fails alone, as a HARDWARE ERROR.
//!
//! Everything the guest controls is validated here: no request can reach host memory outside guest RAM,
//! bytes outside a disk image, or make the worker panic or stall.

#![forbid(unsafe_code)]

pub mod device;
pub mod executor;
pub mod handshake;
pub mod request;
pub mod scsi;
pub mod scsi_pages;
pub mod worker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod worker_tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use storvsp_protocol::{ProtocolVersion, LINUX_PROTOCOL_VERSIONS};

use crate::backend::BlockBackend;
use crate::vmbus_service::MAX_SUBCHANNELS;

pub use device::{ChannelStatsMap, StorvspDevice, StorvspDeviceStats};
pub use handshake::Handshake;
pub use request::{DataBuffer, Segment};
pub use scsi::ScsiOutcome;
pub use worker::{PollResult, StorvspStats, StorvspWorker};

/// Default largest data transfer of one request (reported in QUERY_PROPERTIES and VPD block limits).
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 2 << 20;
/// Default number of requests the worker keeps in flight (executing or waiting for ring space).
pub const DEFAULT_QUEUE_DEPTH: usize = 256;

/// How a controller behaves.
#[derive(Debug, Clone)]
pub struct StorvspConfig {
    /// Largest data transfer of one SRB; a non-zero multiple of 4096 (rounded down, at least 4096).
    pub max_transfer_bytes: u32,
    /// Protocol versions accepted, in any order (default: 0x0602, 0x0600, 0x0501).
    pub versions: Vec<ProtocolVersion>,
    /// Threads executing requests; 0 executes them inline in [`StorvspWorker::poll`].
    pub io_threads: usize,
    /// Requests in flight at most (executing plus completions waiting for ring space); when reached the
    /// worker stops taking packets from the guest until completions drain.
    pub queue_depth: usize,
    /// Keep polling the rings while I/O is outstanding instead of returning to wait for a signal.
    pub poll_mode: bool,
    /// Packets taken from the ring per batch (interrupts masked meanwhile).
    pub batch: usize,
    /// Sub-channels the guest may create (CREATE_SUB_CHANNELS; Linux asks for one per vCPU beyond the
    /// first): reported with the multi-channel flag in QUERY_PROPERTIES when non-zero. Each sub-channel
    /// is served by a worker on a thread of its own. At most [`MAX_SUBCHANNELS`].
    pub max_sub_channels: u16,
}

impl Default for StorvspConfig {
    fn default() -> Self {
        Self {
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            versions: LINUX_PROTOCOL_VERSIONS.to_vec(),
            io_threads: 0,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            poll_mode: false,
            batch: 64,
            max_sub_channels: 0,
        }
    }
}

impl StorvspConfig {
    /// `max_sub_channels` as reported: at most [`MAX_SUBCHANNELS`].
    pub fn effective_max_sub_channels(&self) -> u16 {
        self.max_sub_channels.min(MAX_SUBCHANNELS)
    }

    /// `max_transfer_bytes` as reported: rounded down to 4096, at least 4096.
    pub fn effective_max_transfer(&self) -> u32 {
        (self.max_transfer_bytes & !4095).max(4096)
    }
}

/// One logical unit: a backend and the identity it reports (INQUIRY serial number and NAA id).
#[derive(Clone)]
pub struct ScsiDisk {
    /// The disk.
    pub backend: Arc<dyn BlockBackend>,
    /// VPD 0x80 unit serial number (ASCII).
    pub serial: String,
    /// VPD 0x83 NAA IEEE registered extended designator (the top nibble is forced to 6).
    pub naa_id: [u8; 16],
}

impl std::fmt::Debug for ScsiDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiDisk")
            .field("capacity", &self.backend.capacity())
            .field("read_only", &self.backend.read_only())
            .field("serial", &self.serial)
            .finish()
    }
}

impl ScsiDisk {
    /// A disk whose identity is derived from `serial`.
    pub fn new(backend: Arc<dyn BlockBackend>, serial: impl Into<String>) -> Self {
        let serial = serial.into();
        // FNV-1a over the serial, spread over 16 bytes: stable, distinct per serial.
        let mut naa_id = [0u8; 16];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, chunk) in naa_id.chunks_mut(8).enumerate() {
            for b in serial.bytes().chain([i as u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            chunk.copy_from_slice(&h.to_be_bytes());
        }
        naa_id[0] = 0x60 | (naa_id[0] & 0x0F);
        Self {
            backend,
            serial,
            naa_id,
        }
    }
}

/// The logical units of one controller, by LUN (all on path 0, target 0).
#[derive(Debug, Clone, Default)]
pub struct LunMap {
    luns: BTreeMap<u8, ScsiDisk>,
}

impl LunMap {
    /// No LUNs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `lun` with a default serial number `VIRIDIAN-LUNnnn`.
    pub fn with_backend(mut self, lun: u8, backend: Arc<dyn BlockBackend>) -> Self {
        self.luns
            .insert(lun, ScsiDisk::new(backend, format!("VIRIDIAN-LUN{lun:03}")));
        self
    }

    /// Adds (or replaces) `lun`.
    pub fn insert(&mut self, lun: u8, disk: ScsiDisk) {
        self.luns.insert(lun, disk);
    }

    /// The disk at `lun`.
    pub fn get(&self, lun: u8) -> Option<&ScsiDisk> {
        self.luns.get(&lun)
    }

    /// LUNs present, ascending.
    pub fn luns(&self) -> impl Iterator<Item = u8> + '_ {
        self.luns.keys().copied()
    }

    /// Number of LUNs.
    pub fn len(&self) -> usize {
        self.luns.len()
    }

    /// Whether there are no LUNs.
    pub fn is_empty(&self) -> bool {
        self.luns.is_empty()
    }
}
