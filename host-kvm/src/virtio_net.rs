//! virtio-net on a partition: [`KvmVirtioNet`] places the device's 4 KiB virtio-mmio window in the MMIO
//! hole as an [`MmioHandler`], gives it the partition's guest memory, makes QueueNotify a KVM ioeventfd
//! per queue (the written queue index as datamatch: 0 receive, 1 transmit) that the device's worker
//! sleeps on — a guest kick never leaves the kernel — and routes its interrupts to a vCPU as an MSI
//! through an irqfd (injected in the kernel) or, without one, with `KVM_SIGNAL_MSI` from the worker.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host_kvm::virtio_net::{KvmVirtioNet, VirtioNetPlacement};
//! use host_vsp::net::MemoryNet;
//! use host_vsp::virtio::net::{VirtioNetConfig, VirtioNetDevice};
//! let (nic_end, _network) = MemoryNet::pair()?;
//! let dev = VirtioNetDevice::new(Box::new(nic_end), VirtioNetConfig::new([2, 0, 0, 0, 0, 1]))?;
//! let kvm = KvmVirtioNet::new(Arc::new(dev), VirtioNetPlacement::default());
//! let mut pc = hypervisor_lite::PartitionConfig::new(64 << 20, 1);
//! kvm.register(&mut pc);
//! let partition = pc.build()?;
//! kvm.attach(&partition)?; // guest memory, ioeventfds, irqfd, worker thread
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use host_vsp::virtio::mmio::regs;
use host_vsp::virtio::net::{
    VirtioNetDevice, VirtioNetError, RX_QUEUE, TX_QUEUE, VIRTIO_NET_MMIO_SIZE,
};
use hypervisor_lite::{IoEventAddress, MmioHandler, Partition, PartitionConfig, VcpuCtx};

/// Default guest-physical base of the MMIO window (in the MMIO hole, after virtio-blk's).
pub const VIRTIO_NET_MMIO_BASE: u64 = 0xD000_1000;
/// Default interrupt vector.
pub const VIRTIO_NET_VECTOR: u8 = 0x51;

/// Where the device sits in the partition and how it signals.
#[derive(Debug, Clone)]
pub struct VirtioNetPlacement {
    /// Guest-physical base of the 4 KiB MMIO window.
    pub base: u64,
    /// Vector of its interrupts.
    pub vector: u8,
    /// APIC id the interrupts go to.
    pub apic_id: u32,
    /// Catch QueueNotify with KVM ioeventfds (no user exit); otherwise every kick exits.
    pub ioeventfd: bool,
    /// Inject interrupts through an irqfd; otherwise with KVM_SIGNAL_MSI from the worker.
    pub irqfd: bool,
}

impl Default for VirtioNetPlacement {
    fn default() -> Self {
        Self {
            base: VIRTIO_NET_MMIO_BASE,
            vector: VIRTIO_NET_VECTOR,
            apic_id: 0,
            ioeventfd: true,
            irqfd: true,
        }
    }
}

/// Errors wiring the device to a partition.
#[derive(Debug, thiserror::Error)]
pub enum VirtioNetWiringError {
    /// KVM refused a fast path (an ioeventfd or the irqfd MSI route).
    #[error("cannot set up the virtio-net {what}")]
    Kvm {
        /// Which fast path.
        what: &'static str,
        /// What KVM said.
        source: hypervisor_lite::Error,
    },
    /// The device refused its memory, interrupt or worker.
    #[error("the virtio-net device could not be attached")]
    Device(#[from] VirtioNetError),
}

/// A [`VirtioNetDevice`] plugged into a partition.
#[derive(Debug)]
pub struct KvmVirtioNet {
    device: Arc<VirtioNetDevice>,
    placement: VirtioNetPlacement,
}

impl KvmVirtioNet {
    /// Glue placing `device` as `placement` says.
    pub fn new(device: Arc<VirtioNetDevice>, placement: VirtioNetPlacement) -> Arc<Self> {
        Arc::new(Self { device, placement })
    }

    /// The device.
    pub fn device(&self) -> &Arc<VirtioNetDevice> {
        &self.device
    }

    /// Where it sits.
    pub fn placement(&self) -> &VirtioNetPlacement {
        &self.placement
    }

    /// Claims the MMIO window in `pc`.
    pub fn register(self: &Arc<Self>, pc: &mut PartitionConfig) {
        let base = self.placement.base;
        pc.add_mmio_handler(base..base + VIRTIO_NET_MMIO_SIZE, self.clone());
    }

    /// Wires the device to a built partition: guest memory, the interrupt route, one QueueNotify
    /// ioeventfd per queue and the worker thread.
    pub fn attach(&self, partition: &Partition) -> Result<(), VirtioNetWiringError> {
        let p = &self.placement;
        let irq = crate::msi::msi_interrupt(partition, p.apic_id, p.vector, p.irqfd).map_err(
            |source| VirtioNetWiringError::Kvm {
                what: "irqfd MSI route",
                source,
            },
        )?;
        let notify = |queue: u16| {
            if !p.ioeventfd {
                return Ok(None);
            }
            partition
                .register_ioeventfd(
                    IoEventAddress::Mmio(p.base + regs::QUEUE_NOTIFY),
                    4,
                    Some(u64::from(queue)),
                )
                .map(Some)
                .map_err(|source| VirtioNetWiringError::Kvm {
                    what: "QueueNotify ioeventfd",
                    source,
                })
        };
        let notifies = [notify(RX_QUEUE)?, notify(TX_QUEUE)?];
        self.device
            .attach_memory(partition.ram().memory().clone())?;
        self.device.connect_interrupt(irq)?;
        self.device.start(notifies)?;
        Ok(())
    }
}

impl MmioHandler for KvmVirtioNet {
    fn read(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]) {
        self.device.mmio_read(gpa - self.placement.base, data);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]) {
        self.device.mmio_write(gpa - self.placement.base, data);
    }
}
