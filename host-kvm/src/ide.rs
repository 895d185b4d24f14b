//! The emulated IDE controller on a partition: [`KvmIde`] routes the primary channel's ports
//! (0x1F0–0x1F7, 0x3F6) to [`IdeController`] as a [`PortHandler`] (every guest access one user
//! exit, by design of the baseline) and binds its interrupt to IRQ 14 of the in-kernel irqchip with
//! an irqfd.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_kvm::ide::KvmIde;
//! use host_vsp::{backend::RamDisk, emulated::ide::IdeController};
//! let ide = KvmIde::new(Arc::new(IdeController::new(Arc::new(RamDisk::new(1 << 20)))));
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! ide.register(&mut pc);
//! let partition = pc.build()?;
//! ide.connect_irq(&partition)?; // optional: IRQ 14 (the guest must program the IOAPIC to see it)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use host_vsp::emulated::ide::{
    IdeController, IdeError, PRIMARY_COMMAND_PORTS, PRIMARY_CONTROL_PORT, PRIMARY_IRQ,
};
use hypervisor_lite::{Partition, PartitionConfig, PortHandler, VcpuCtx};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors connecting the IDE interrupt.
#[derive(Debug, thiserror::Error)]
pub enum IdeIrqError {
    /// The eventfd behind the interrupt could not be created.
    #[error("cannot create the eventfd of IDE IRQ {gsi}")]
    EventFd {
        /// The GSI.
        gsi: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// KVM refused the irqfd.
    #[error("cannot bind IDE IRQ {gsi} to the irqchip")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// What KVM said.
        source: hypervisor_lite::Error,
    },
    /// The controller refused the interrupt.
    #[error("the IDE controller refused its interrupt")]
    Controller(#[from] IdeError),
}

/// An [`IdeController`] plugged into a partition.
#[derive(Debug)]
pub struct KvmIde {
    controller: Arc<IdeController>,
}

impl KvmIde {
    /// Glue for `controller`.
    pub fn new(controller: Arc<IdeController>) -> Arc<Self> {
        Arc::new(Self { controller })
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<IdeController> {
        &self.controller
    }

    /// Claims the primary channel's ports in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        pc.add_port_handler(PRIMARY_COMMAND_PORTS, self.clone());
        pc.add_port_handler(PRIMARY_CONTROL_PORT..PRIMARY_CONTROL_PORT + 1, self.clone());
    }

    /// Delivers the channel's interrupt on IRQ 14 of the partition's irqchip (edge per assertion).
    pub fn connect_irq(&self, partition: &Partition) -> Result<(), IdeIrqError> {
        if self.controller.interrupt_connected() {
            return Err(IdeError::AlreadyConnected.into());
        }
        let gsi = PRIMARY_IRQ;
        let efd =
            EventFd::new(EFD_NONBLOCK).map_err(|source| IdeIrqError::EventFd { gsi, source })?;
        partition
            .interrupts()
            .irqfd_gsi(&efd, gsi)
            .map_err(|source| IdeIrqError::Irqfd { gsi, source })?;
        self.controller.connect_interrupt(Arc::new(efd))?;
        Ok(())
    }
}

impl PortHandler for KvmIde {
    fn read(&self, _vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]) {
        self.controller.io_read(port, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, port: u16, data: &[u8]) {
        self.controller.io_write(port, data);
    }
}
