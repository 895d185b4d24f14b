//! virtio-blk on a partition: [`KvmVirtioBlk`] places the device's 4 KiB virtio-mmio window in the
//! MMIO hole as an [`MmioHandler`], gives it the partition's guest memory, makes QueueNotify (queue 0)
//! a KVM ioeventfd the device's worker sleeps on — a guest kick never leaves the kernel — and routes
//! used-buffer interrupts to a vCPU as an MSI: through an irqfd (injected in the kernel) or, without
//! one, with `KVM_SIGNAL_MSI` from the worker.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_kvm::virtio_blk::{KvmVirtioBlk, VirtioBlkPlacement};
//! use host_vsp::{backend::RamDisk, virtio::blk::{VirtioBlkConfig, VirtioBlkDevice}};
//! let dev = Arc::new(VirtioBlkDevice::new(Arc::new(RamDisk::new(1 << 20)), VirtioBlkConfig::default())?);
//! let kvm = KvmVirtioBlk::new(dev, VirtioBlkPlacement::default());
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! kvm.register(&mut pc);
//! let partition = pc.build()?;
//! kvm.attach(&partition)?; // guest memory, ioeventfd, irqfd, worker thread
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use host_vsp::virtio::blk::transport::regs;
use host_vsp::virtio::blk::{VirtioBlkDevice, VirtioBlkError, VIRTIO_BLK_MMIO_SIZE};
use hypervisor_lite::{IoEventAddress, MmioHandler, Partition, PartitionConfig, VcpuCtx};

/// Default guest-physical base of the MMIO window (in the MMIO hole).
pub const VIRTIO_BLK_MMIO_BASE: u64 = 0xD000_0000;
/// Default interrupt vector of used-buffer notifications.
pub const VIRTIO_BLK_VECTOR: u8 = 0x50;

/// Where the device sits in the partition and how it signals.
#[derive(Debug, Clone)]
pub struct VirtioBlkPlacement {
    /// Guest-physical base of the 4 KiB MMIO window.
    pub base: u64,
    /// Vector of used-buffer interrupts.
    pub vector: u8,
    /// APIC id the interrupts go to.
    pub apic_id: u32,
    /// Catch QueueNotify with a KVM ioeventfd (no user exit); otherwise every notify exits.
    pub ioeventfd: bool,
    /// Inject interrupts through an irqfd; otherwise with KVM_SIGNAL_MSI from the worker.
    pub irqfd: bool,
}

impl Default for VirtioBlkPlacement {
    fn default() -> Self {
        Self {
            base: VIRTIO_BLK_MMIO_BASE,
            vector: VIRTIO_BLK_VECTOR,
            apic_id: 0,
            ioeventfd: true,
            irqfd: true,
        }
    }
}

/// Errors wiring the device to a partition.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkWiringError {
    /// KVM refused a fast path (the ioeventfd or the irqfd MSI route).
    #[error("cannot set up the virtio-blk {what}")]
    Kvm {
        /// Which fast path.
        what: &'static str,
        /// What KVM said.
        source: hypervisor_lite::Error,
    },
    /// The device refused its memory, interrupt or worker.
    #[error("the virtio-blk device could not be attached")]
    Device(#[from] VirtioBlkError),
}

/// A [`VirtioBlkDevice`] plugged into a partition.
#[derive(Debug)]
pub struct KvmVirtioBlk {
    device: Arc<VirtioBlkDevice>,
    placement: VirtioBlkPlacement,
}

impl KvmVirtioBlk {
    /// Glue placing `device` as `placement` says.
    pub fn new(device: Arc<VirtioBlkDevice>, placement: VirtioBlkPlacement) -> Arc<Self> {
        Arc::new(Self { device, placement })
    }

    /// The device.
    pub fn device(&self) -> &Arc<VirtioBlkDevice> {
        &self.device
    }

    /// Where it sits.
    pub fn placement(&self) -> &VirtioBlkPlacement {
        &self.placement
    }

    /// Claims the MMIO window in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        let base = self.placement.base;
        pc.add_mmio_handler(base..base + VIRTIO_BLK_MMIO_SIZE, self.clone());
    }

    /// Wires the device to a built partition: guest memory, the interrupt route, the QueueNotify
    /// ioeventfd and the worker thread.
    pub fn attach(&self, partition: &Partition) -> Result<(), VirtioBlkWiringError> {
        let p = &self.placement;
        let irq = crate::msi::msi_interrupt(partition, p.apic_id, p.vector, p.irqfd).map_err(
            |source| VirtioBlkWiringError::Kvm {
                what: "irqfd MSI route",
                source,
            },
        )?;
        let notify = if p.ioeventfd {
            let efd = partition
                .register_ioeventfd(
                    IoEventAddress::Mmio(p.base + regs::QUEUE_NOTIFY),
                    4,
                    Some(0),
                )
                .map_err(|source| VirtioBlkWiringError::Kvm {
                    what: "QueueNotify ioeventfd",
                    source,
                })?;
            Some(efd)
        } else {
            None
        };
        self.device
            .attach_memory(partition.ram().memory().clone())?;
        self.device.connect_interrupt(irq)?;
        self.device.start(notify)?;
        Ok(())
    }
}

impl MmioHandler for KvmVirtioBlk {
    fn read(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]) {
        self.device.mmio_read(gpa - self.placement.base, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]) {
        self.device.mmio_write(gpa - self.placement.base, data);
    }
}
