//! A device model's interrupt as an MSI to one vCPU: through a KVM irqfd (injected in the kernel,
//! no user-space hop) or, without one, with `KVM_SIGNAL_MSI` from the device's thread. One route
//! for every MSI-signalling device glue (virtio-blk, virtio-net, e1000).

use std::io;
use std::sync::Arc;

use host_vsp::interrupt::Interrupt;
use hypervisor_lite::{InterruptController, Partition};

/// An interrupt injected with `KVM_SIGNAL_MSI`.
struct SignalMsi {
    interrupts: InterruptController,
    apic_id: u32,
    vector: u8,
}

impl Interrupt for SignalMsi {
    fn trigger(&self) -> io::Result<()> {
        self.interrupts
            .signal_msi(self.apic_id, self.vector)
            .map(|_| ())
            .map_err(io::Error::other)
    }
}

/// The MSI `vector` to `apic_id` on `partition`: an irqfd route when `irqfd`, else
/// `KVM_SIGNAL_MSI`. Fails only when KVM refuses the irqfd route.
pub fn msi_interrupt(
    partition: &Partition,
    apic_id: u32,
    vector: u8,
    irqfd: bool,
) -> Result<Arc<dyn Interrupt>, hypervisor_lite::Error> {
    let interrupts = partition.interrupts();
    if irqfd {
        return Ok(Arc::new(interrupts.irqfd_msi(apic_id, vector)?));
    }
    Ok(Arc::new(SignalMsi {
        interrupts,
        apic_id,
        vector,
    }))
}
