//! The emulated IDE/ATA disk — the first baseline the synthetic devices are measured against. One primary
//! channel at the legacy ports (command block 0x1F0–0x1F7, control 0x3F6) with a single master disk over any
//! [`BlockBackend`], emulated register by register: every guest port access is one exit to the VMM, so a
//! 4 KiB PIO transfer costs tens to thousands of exits depending on the guest's access width.
//!
//! - [`channel`]: the sans-I/O register model ([`AtaChannel`]), testable without KVM;
//! - [`identify`]: the IDENTIFY DEVICE data block;
//! - this module: [`IdeController`], the port-level face of a channel ([`IdeController::io_read`],
//!   [`IdeController::io_write`] with absolute port numbers) and its optional legacy interrupt (IRQ 14,
//!   masked by nIEN), raised through any [`Interrupt`]. `host-kvm` registers the ports with a partition
//!   and binds the interrupt to the in-kernel irqchip.
//!
//! ```
//! use std::sync::Arc;
//! use host_vsp::{backend::RamDisk, emulated::ide::IdeController};
//! let ide = IdeController::new(Arc::new(RamDisk::new(1 << 20)));
//! let mut status = [0u8];
//! ide.io_read(0x1F7, &mut status); // what a guest `inb 0x1F7` sees
//! assert_eq!(status[0] & 0x40, 0x40, "DRDY");
//! ```

pub mod channel;
pub mod identify;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

pub use channel::{AtaChannel, IdeStats};
pub use identify::DriveIdentity;

use crate::backend::BlockBackend;
use crate::interrupt::Interrupt;

/// The primary channel's command block ports.
pub const PRIMARY_COMMAND_PORTS: Range<u16> = 0x1F0..0x1F8;
/// The primary channel's control block port (alternate status / device control).
pub const PRIMARY_CONTROL_PORT: u16 = 0x3F6;
/// The primary channel's legacy interrupt line (irqchip GSI).
pub const PRIMARY_IRQ: u32 = 14;

/// Errors connecting the controller.
#[derive(Debug, thiserror::Error)]
pub enum IdeError {
    /// The interrupt was already connected.
    #[error("the IDE interrupt is already connected")]
    AlreadyConnected,
}

/// The primary IDE channel as a port-I/O device.
pub struct IdeController {
    channel: Mutex<AtaChannel>,
    irq: OnceLock<Arc<dyn Interrupt>>,
}

impl std::fmt::Debug for IdeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdeController")
            .field("stats", &self.stats())
            .field("irq", &self.irq.get().is_some())
            .finish()
    }
}

impl IdeController {
    /// A controller whose primary master is `disk`, with the default identity strings.
    pub fn new(disk: Arc<dyn BlockBackend>) -> Self {
        Self::with_identity(disk, DriveIdentity::default())
    }

    /// A controller whose primary master is `disk` and reports `identity` in IDENTIFY DEVICE.
    pub fn with_identity(disk: Arc<dyn BlockBackend>, identity: DriveIdentity) -> Self {
        Self {
            channel: Mutex::new(AtaChannel::new(disk, identity)),
            irq: OnceLock::new(),
        }
    }

    /// Delivers the channel's interrupt (IRQ 14: one trigger per assertion) through `irq`.
    pub fn connect_interrupt(&self, irq: Arc<dyn Interrupt>) -> Result<(), IdeError> {
        self.irq.set(irq).map_err(|_| IdeError::AlreadyConnected)
    }

    /// Whether an interrupt is connected.
    pub fn interrupt_connected(&self) -> bool {
        self.irq.get().is_some()
    }

    /// Counters so far.
    pub fn stats(&self) -> IdeStats {
        self.lock().stats()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AtaChannel> {
        self.channel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps an absolute port to a channel register offset.
    fn offset(port: u16) -> Option<u16> {
        if PRIMARY_COMMAND_PORTS.contains(&port) {
            Some(port - PRIMARY_COMMAND_PORTS.start)
        } else if port == PRIMARY_CONTROL_PORT {
            Some(channel::reg::CONTROL)
        } else {
            None
        }
    }

    /// A guest `in` on `port`: fills `data` (its length is the access size; unclaimed ports read 0xFF).
    pub fn io_read(&self, port: u16, data: &mut [u8]) {
        match Self::offset(port) {
            Some(offset) => self.access(|ch| ch.read(offset, data)),
            None => data.fill(0xFF),
        }
    }

    /// A guest `out` of `data` on `port`.
    pub fn io_write(&self, port: u16, data: &[u8]) {
        if let Some(offset) = Self::offset(port) {
            self.access(|ch| ch.write(offset, data));
        }
    }

    /// Runs one register access and pulses the interrupt line if the channel asserted it.
    fn access(&self, f: impl FnOnce(&mut AtaChannel)) {
        let raised = {
            let mut ch = self.lock();
            let before = ch.stats().interrupts;
            f(&mut ch);
            ch.stats().interrupts != before
        };
        if raised {
            self.pulse_irq();
        }
    }

    fn pulse_irq(&self) {
        if let Some(irq) = self.irq.get() {
            if let Err(error) = irq.trigger() {
                crate::guest_warn!(%error, "IDE interrupt");
            }
        }
    }
}
