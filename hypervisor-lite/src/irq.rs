//! Exit-free fast paths between host and guest: ioeventfds (a guest write to a port or MMIO address signals an
//! eventfd inside the kernel, no user exit), direct MSI injection (KVM_SIGNAL_MSI) and irqfds bound to MSI routes
//! (writing the eventfd injects the interrupt from any host thread). [`InterruptController`] is cheap to clone and
//! usable from any thread while the partition runs.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_ioeventfd, kvm_ioeventfd_flag_nr_datamatch, kvm_ioeventfd_flag_nr_pio,
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::memory::GuestRam;

vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, kvm_bindings::KVMIO, 0x79, kvm_ioeventfd);

/// Base of the MSI address window (xAPIC).
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
/// GSIs wired to the in-kernel PIC/IOAPIC; MSI routes are allocated above.
pub const IOAPIC_PINS: u32 = 24;

/// Where a guest write triggers an ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    /// An I/O port.
    Port(u16),
    /// A guest physical MMIO address (must not be RAM).
    Mmio(u64),
}

/// The VM fd together with the RAM its memory slots point at: the RAM mapping is kept alive as long as
/// anything can still reach the VM (dropped after the VM fd).
pub(crate) struct VmShared {
    pub(crate) vm: VmFd,
    pub(crate) _ram: GuestRam,
}

struct Routes {
    table: Vec<kvm_irq_routing_entry>,
    next_gsi: u32,
}

/// Injects interrupts into and registers fast paths on one partition. Clones share the VM.
#[derive(Clone)]
pub struct InterruptController {
    shared: Arc<VmShared>,
    routes: Arc<Mutex<Routes>>,
}

impl std::fmt::Debug for InterruptController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .table
            .len();
        f.debug_struct("InterruptController")
            .field("routes", &n)
            .finish()
    }
}

/// The MSI message that delivers `vector` to the LAPIC with id `apic_id` (fixed, physical destination).
pub fn msi_message(apic_id: u32, vector: u8) -> (u32, u32) {
    (
        MSI_ADDRESS_BASE | ((apic_id & 0xFF) << 12),
        u32::from(vector),
    )
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    e
}

/// KVM's default routing (PIC for GSI 0–15, IOAPIC pin = GSI for 0–23), which KVM_SET_GSI_ROUTING replaces
/// wholesale and we therefore repeat.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

impl InterruptController {
    pub(crate) fn new(shared: Arc<VmShared>) -> Self {
        Self {
            shared,
            routes: Arc::new(Mutex::new(Routes {
                table: default_routes(),
                next_gsi: IOAPIC_PINS,
            })),
        }
    }

    pub(crate) fn vm(&self) -> &VmFd {
        &self.shared.vm
    }

    /// Registers an ioeventfd: a guest write of `len` bytes (1, 2, 4 or 8; 0 = any length, only without
    /// `datamatch`) to `addr` — equal to `datamatch` if given — signals the returned eventfd in the kernel
    /// without a user exit. The eventfd is non-blocking.
    pub fn register_ioeventfd(
        &self,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<EventFd> {
        if ![0, 1, 2, 4, 8].contains(&len) || (len == 0 && datamatch.is_some()) {
            return Err(Error::InvalidConfig(format!(
                "ioeventfd length {len} (datamatch {datamatch:?}): use 1, 2, 4 or 8 (0 only without datamatch)"
            )));
        }
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?;
        let mut flags = 0;
        if datamatch.is_some() {
            flags |= 1 << kvm_ioeventfd_flag_nr_datamatch;
        }
        let addr = match addr {
            IoEventAddress::Port(p) => {
                flags |= 1 << kvm_ioeventfd_flag_nr_pio;
                u64::from(p)
            }
            IoEventAddress::Mmio(a) => a,
        };
        let req = kvm_ioeventfd {
            datamatch: datamatch.unwrap_or(0),
            addr,
            len,
            fd: std::os::fd::AsRawFd::as_raw_fd(&efd),
            flags,
            ..Default::default()
        };
        // SAFETY: KVM_IOEVENTFD reads exactly one `kvm_ioeventfd` from the pointer; `req` lives across the call.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.shared.vm, KVM_IOEVENTFD(), &req) };
        if rc != 0 {
            return Err(Error::Kvm {
                op: "KVM_IOEVENTFD",
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(efd)
    }

    /// Injects `vector` into the vCPU with LAPIC id `apic_id` (KVM_SIGNAL_MSI). Returns `false` if the guest's
    /// LAPIC blocked it (e.g. software-disabled).
    pub fn signal_msi(&self, apic_id: u32, vector: u8) -> Result<bool> {
        let (address_lo, data) = msi_message(apic_id, vector);
        let msi = kvm_msi {
            address_lo,
            address_hi: 0,
            data,
            ..Default::default()
        };
        let delivered = self
            .shared
            .vm
            .signal_msi(msi)
            .map_err(Error::kvm("KVM_SIGNAL_MSI"))?;
        Ok(delivered > 0)
    }

    /// Creates an irqfd: writing 1 to the returned eventfd (from any thread) injects `vector` into the vCPU with
    /// LAPIC id `apic_id`, entirely in the kernel. The MSI route lives as long as the partition.
    pub fn irqfd_msi(&self, apic_id: u32, vector: u8) -> Result<EventFd> {
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?;
        let (address_lo, data) = msi_message(apic_id, vector);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let gsi = routes.next_gsi;
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi = kvm_irq_routing_msi {
            address_lo,
            address_hi: 0,
            data,
            ..Default::default()
        };
        routes.table.push(entry);
        if let Err(e) = self.apply(&routes.table) {
            routes.table.pop();
            return Err(e);
        }
        if let Err(source) = self.shared.vm.register_irqfd(&efd, gsi) {
            routes.table.pop();
            // Restoring the previous table cannot make things worse than the error we already report.
            let _ = self.apply(&routes.table);
            return Err(Error::Kvm {
                op: "KVM_IRQFD",
                source,
            });
        }
        routes.next_gsi += 1;
        Ok(efd)
    }

    /// Binds `efd` to an in-kernel irqchip GSI (0–23: PIC/IOAPIC pins), e.g. for a legacy device's IRQ line.
    pub fn irqfd_gsi(&self, efd: &EventFd, gsi: u32) -> Result<()> {
        if gsi >= IOAPIC_PINS {
            return Err(Error::InvalidConfig(format!(
                "GSI {gsi} is not an irqchip pin (0..{IOAPIC_PINS})"
            )));
        }
        self.shared
            .vm
            .register_irqfd(efd, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }

    fn apply(&self, table: &[kvm_irq_routing_entry]) -> Result<()> {
        let routing = KvmIrqRouting::from_entries(table).map_err(|e| {
            Error::InvalidConfig(format!(
                "GSI routing table of {} entries: {e:?}",
                table.len()
            ))
        })?;
        self.shared
            .vm
            .set_gsi_routing(&routing)
            .map_err(Error::kvm("KVM_SET_GSI_ROUTING"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_message_targets_the_apic() {
        assert_eq!(msi_message(0, 0x30), (0xFEE0_0000, 0x30));
        assert_eq!(msi_message(3, 0xF3), (0xFEE0_3000, 0xF3));
    }

    #[test]
    fn default_routes_cover_pic_and_ioapic() {
        let r = default_routes();
        assert_eq!(r.len(), 16 + 24);
        let pins: Vec<(u32, u32, u32)> = r
            .iter()
            .map(|e| {
                // SAFETY: routes built by `irqchip_route` always initialise the `irqchip` member.
                let chip = unsafe { e.u.irqchip };
                (e.gsi, chip.irqchip, chip.pin)
            })
            .collect();
        assert!(pins.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(pins.contains(&(10, KVM_IRQCHIP_PIC_SLAVE, 2)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
    }
}
