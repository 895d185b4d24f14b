//! The emulated e1000 on a partition: [`KvmE1000`] places the NIC's 128 KiB register window as an
//! [`MmioHandler`] (every guest access one user exit, by design of the baseline — a TDT write
//! transmits inside its exit), gives the NIC the partition's guest memory, routes its interrupt to
//! a vCPU as an MSI through an irqfd, and starts its receive thread.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_kvm::e1000::{E1000Placement, KvmE1000};
//! use host_vsp::{emulated::e1000::E1000Device, net::MemoryNet};
//! let (end, _peer) = MemoryNet::pair()?;
//! let nic = Arc::new(E1000Device::new([0x52, 0x54, 0, 0, 0, 1], Box::new(end))?);
//! let kvm = KvmE1000::new(nic, E1000Placement { base: 0xD100_0000, vector: 0x58, apic_id: 0 });
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! kvm.register(&mut pc);
//! let partition = pc.build()?;
//! kvm.attach(&partition)?; // guest memory, irqfd MSI, receive thread
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use host_vsp::emulated::e1000::{E1000Device, E1000Error, E1000_MMIO_SIZE};
use hypervisor_lite::{MmioHandler, Partition, PartitionConfig, VcpuCtx};

/// Where the NIC sits in the partition and how it signals.
#[derive(Debug, Clone)]
pub struct E1000Placement {
    /// Guest-physical base of the 128 KiB register window.
    pub base: u64,
    /// Vector of the NIC's MSI.
    pub vector: u8,
    /// APIC id the interrupts go to.
    pub apic_id: u32,
}

/// Errors wiring the NIC to a partition.
#[derive(Debug, thiserror::Error)]
pub enum E1000WiringError {
    /// KVM refused the irqfd MSI route.
    #[error("cannot set up the e1000's irqfd MSI route")]
    Irqfd(#[source] hypervisor_lite::Error),
    /// The NIC refused its memory, interrupt or receive thread.
    #[error("the e1000 could not be attached")]
    Device(#[from] E1000Error),
}

/// An [`E1000Device`] plugged into a partition.
#[derive(Debug)]
pub struct KvmE1000 {
    device: Arc<E1000Device>,
    placement: E1000Placement,
}

impl KvmE1000 {
    /// Glue placing `device` as `placement` says.
    pub fn new(device: Arc<E1000Device>, placement: E1000Placement) -> Arc<Self> {
        Arc::new(Self { device, placement })
    }

    /// The NIC.
    pub fn device(&self) -> &Arc<E1000Device> {
        &self.device
    }

    /// Claims the register window in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        let base = self.placement.base;
        pc.add_mmio_handler(base..base + E1000_MMIO_SIZE, self.clone());
    }

    /// Wires the NIC to a built partition: guest memory, the MSI route and the receive thread.
    pub fn attach(&self, partition: &Partition) -> Result<(), E1000WiringError> {
        let p = &self.placement;
        let irq = crate::msi::msi_interrupt(partition, p.apic_id, p.vector, true)
            .map_err(E1000WiringError::Irqfd)?;
        self.device
            .attach_memory(partition.ram().memory().clone())?;
        self.device.connect_interrupt(irq)?;
        self.device.start()?;
        Ok(())
    }
}

impl MmioHandler for KvmE1000 {
    fn read(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]) {
        self.device.mmio_read(gpa - self.placement.base, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]) {
        self.device.mmio_write(gpa - self.placement.base, data);
    }
}
