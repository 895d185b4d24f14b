//! The emulated IDE/ATA disk — the first baseline the synthetic devices are measured against. One primary
//! channel at the legacy ports (command block 0x1F0–0x1F7, control 0x3F6) with a single master disk over any
//! [`BlockBackend`], emulated register by register: every guest port access is one exit to this process, so a
//! 4 KiB PIO transfer costs tens to thousands of exits depending on the guest's access width.
//!
//! - [`channel`]: the sans-I/O register model ([`AtaChannel`]), testable without KVM;
//! - [`identify`]: the IDENTIFY DEVICE data block;
//! - this module: [`IdeController`], the thin [`PortHandler`] around a channel, and its optional legacy
//!   interrupt (IRQ 14 through the in-kernel irqchip, masked by nIEN).
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_vsp::{backend::RamDisk, emulated::ide::IdeController};
//! let ide = Arc::new(IdeController::new(Arc::new(RamDisk::new(1 << 20))));
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! ide.register(&mut pc);
//! let partition = pc.build()?;
//! ide.connect_irq(&partition)?; // optional: IRQ 14 (the guest must program the IOAPIC to see it)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod channel;
pub mod identify;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use hypervisor_lite::{Partition, PartitionConfig, PortHandler, VcpuCtx};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use channel::{AtaChannel, IdeStats};
pub use identify::DriveIdentity;

use crate::backend::BlockBackend;

/// The primary channel's command block ports.
pub const PRIMARY_COMMAND_PORTS: Range<u16> = 0x1F0..0x1F8;
/// The primary channel's control block port (alternate status / device control).
pub const PRIMARY_CONTROL_PORT: u16 = 0x3F6;
/// The primary channel's legacy interrupt line (irqchip GSI).
pub const PRIMARY_IRQ: u32 = 14;

/// Errors wiring the controller to a partition.
#[derive(Debug, thiserror::Error)]
pub enum IdeError {
    /// Creating the interrupt eventfd or binding it to the irqchip failed.
    #[error("connecting IDE IRQ {gsi}: {source}")]
    Irq {
        /// The GSI.
        gsi: u32,
        /// What failed.
        source: hypervisor_lite::Error,
    },
    /// The interrupt was already connected.
    #[error("the IDE interrupt is already connected")]
    AlreadyConnected,
}

/// The primary IDE channel as a port-I/O device. Register it with [`IdeController::register`].
pub struct IdeController {
    channel: Mutex<AtaChannel>,
    irq: OnceLock<EventFd>,
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

    /// Claims the primary channel's ports in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        pc.add_port_handler(PRIMARY_COMMAND_PORTS, self.clone());
        pc.add_port_handler(PRIMARY_CONTROL_PORT..PRIMARY_CONTROL_PORT + 1, self.clone());
    }

    /// Delivers the channel's interrupt on IRQ 14 of the partition's irqchip (edge per assertion).
    pub fn connect_irq(&self, partition: &Partition) -> Result<(), IdeError> {
        let irq_err = |source| IdeError::Irq {
            gsi: PRIMARY_IRQ,
            source,
        };
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| {
            irq_err(hypervisor_lite::Error::Os {
                op: "eventfd",
                source,
            })
        })?;
        partition
            .interrupts()
            .irqfd_gsi(&efd, PRIMARY_IRQ)
            .map_err(irq_err)?;
        self.irq.set(efd).map_err(|_| IdeError::AlreadyConnected)
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

    /// A guest `in` on `port` (what the [`PortHandler`] does, without a vCPU).
    pub fn io_read(&self, port: u16, data: &mut [u8]) {
        match Self::offset(port) {
            Some(offset) => self.access(|ch| ch.read(offset, data)),
            None => data.fill(0xFF),
        }
    }

    /// A guest `out` on `port` (what the [`PortHandler`] does, without a vCPU).
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
        if let Some(efd) = self.irq.get() {
            if let Err(e) = efd.write(1) {
                tracing::warn!("IDE IRQ eventfd: {e}");
            }
        }
    }
}

impl PortHandler for IdeController {
    fn read(&self, _vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]) {
        self.io_read(port, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, port: u16, data: &[u8]) {
        self.io_write(port, data);
    }
}
