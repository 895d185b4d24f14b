//! The device's counters: [`VirtioNetStats`], and [`VirtioNetStatsHandle`], a live view that outlives
//! the device (atomics the worker bumps as it goes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of the device's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetStats {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Their bytes (frames only, no headers).
    pub tx_bytes: u64,
    /// Guest frames dropped: the backend was full.
    pub tx_dropped_backend_full: u64,
    /// Guest frames dropped: empty or longer than [`MAX_FRAME_LEN`](crate::net::MAX_FRAME_LEN).
    pub tx_dropped_bad_length: u64,
    /// Guest frames lost: the backend failed.
    pub tx_errors: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Frames the backend had that were larger than a frame may be (dropped by it).
    pub rx_dropped_too_large: u64,
    /// Receive failures of the backend.
    pub rx_errors: u64,
    /// Times a frame could have been received but the guest had no receive buffer posted: the
    /// worker stopped reading the backend until the driver's next receive kick.
    pub rx_no_buffer: u64,
    /// Guest kicks of the receive queue (ioeventfd or register).
    pub rx_kicks: u64,
    /// Guest kicks of the transmit queue.
    pub tx_kicks: u64,
    /// QueueNotify writes that reached [`VirtioNetDevice::mmio_write`] (no ioeventfd caught them).
    pub register_notifies: u64,
    /// Interrupts raised (used buffers, configuration changes, NEEDS_RESET).
    pub interrupts: u64,
    /// Times the worker woke up.
    pub wakeups: u64,
    /// Chains that broke the rules and stopped the device until reset.
    pub failed: u64,
    /// Link changes reported through the configuration space.
    pub link_changes: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) tx_dropped_backend_full: AtomicU64,
    pub(super) tx_dropped_bad_length: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) rx_dropped_too_large: AtomicU64,
    pub(super) rx_errors: AtomicU64,
    pub(super) rx_no_buffer: AtomicU64,
    pub(super) rx_kicks: AtomicU64,
    pub(super) tx_kicks: AtomicU64,
    pub(super) register_notifies: AtomicU64,
    pub(super) interrupts: AtomicU64,
    pub(super) wakeups: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) link_changes: AtomicU64,
}

impl Counters {
    /// The kick counter of queue `q` (receive or transmit).
    pub(super) fn kicks(&self, q: u16) -> &AtomicU64 {
        if q == super::RX_QUEUE {
            &self.rx_kicks
        } else {
            &self.tx_kicks
        }
    }
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A live view of a device's counters (it outlives the device).
#[derive(Debug, Clone)]
pub struct VirtioNetStatsHandle(pub(super) Arc<Counters>);

impl VirtioNetStatsHandle {
    /// The counters now.
    pub fn get(&self) -> VirtioNetStats {
        let c = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VirtioNetStats {
            tx_frames: g(&c.tx_frames),
            tx_bytes: g(&c.tx_bytes),
            tx_dropped_backend_full: g(&c.tx_dropped_backend_full),
            tx_dropped_bad_length: g(&c.tx_dropped_bad_length),
            tx_errors: g(&c.tx_errors),
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            rx_dropped_too_large: g(&c.rx_dropped_too_large),
            rx_errors: g(&c.rx_errors),
            rx_no_buffer: g(&c.rx_no_buffer),
            rx_kicks: g(&c.rx_kicks),
            tx_kicks: g(&c.tx_kicks),
            register_notifies: g(&c.register_notifies),
            interrupts: g(&c.interrupts),
            wakeups: g(&c.wakeups),
            failed: g(&c.failed),
            link_changes: g(&c.link_changes),
        }
    }
}
