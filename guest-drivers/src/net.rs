//! What every guest NIC driver offers a guest's network stack: [`GuestNic`], a smoltcp
//! [`Device`] plus the few calls a kernel's loop makes around it, so one stack (and one
//! workload) runs unchanged over netvsc, virtio-net or an emulated NIC.
//!
//! A guest kernel's loop, whatever the NIC:
//! ```text
//! nic.poll()?;                              // device events in: completions, frames, link
//! iface.poll(now, &mut nic, &mut sockets);  // smoltcp consumes frames, queues replies
//! nic.flush()?;                             // tell the device about every frame queued
//! nic.wait();                               // sleep until the device may have written
//! ```
#![forbid(unsafe_code)]

use smoltcp::phy::Device;

/// Counters every NIC driver keeps, in the same sense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames queued to the device.
    pub tx_frames: u64,
    /// Sends refused for want of a buffer or descriptor.
    pub tx_busy: u64,
    /// Frames received and handed to the stack's queue.
    pub rx_frames: u64,
    /// Frames dropped because the receive queue was full.
    pub rx_dropped: u64,
    /// Malformed completions, descriptors or messages from the device (skipped).
    pub rx_errors: u64,
    /// Notifications the driver sent the device: VMBus signals, virtio kicks, transmit-tail
    /// register writes.
    pub signals: u64,
}

/// A NIC a guest network stack runs on.
pub trait GuestNic: Device {
    /// Error of the device's own calls.
    type Error: core::fmt::Display;

    /// The NIC's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest Ethernet payload the NIC carries.
    fn mtu(&self) -> usize;
    /// Whether the link is up as last seen.
    fn link_up(&self) -> bool;
    /// Handles everything the device did since the last call (frames, completions, link
    /// changes). Returns how many events were handled.
    fn poll(&mut self) -> Result<usize, Self::Error>;
    /// Tells the device about every frame queued since the last flush (at most one
    /// notification, and none the device asked not to get).
    fn flush(&mut self) -> Result<(), Self::Error>;
    /// Sleeps until the device may have written something (returns at once if it has).
    fn wait(&mut self);
    /// The driver's counters.
    fn counters(&self) -> NicCounters;
}
