//! The enlightenments as partition devices: [`HvPartition`] is the partition's [`MsrHandler`] for the synthetic
//! MSR range and the [`PortHandler`] of the hypercall and doorbell ports. Thin: decode the exit by the caller's
//! calling convention ([`CallingConvention::of`] its special registers at the trap), call the partition-level
//! object, write the result back into the vCPU's registers.

use std::ops::Range;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::{MsrHandler, PortHandler};
use crate::irq::{InterruptController, IoEventAddress};
use crate::partition::{Partition, PartitionConfig};
use crate::vcpu::VcpuCtx;

use super::abi::{CallingConvention, HypercallResult};
use super::hypercall::HvStatus;
use super::msr::SYNTHETIC_MSR_RANGE;
use super::{HvError, HvPartition, HvPlatform};

/// The partition's interrupt controller is the enlightenments' platform: KVM_SIGNAL_MSI for SINTs and
/// KVM_IOEVENTFD (4-byte port write, datamatch = connection id) for doorbells.
impl HvPlatform for InterruptController {
    fn signal_msi(&self, apic_id: u32, vector: u8) -> std::io::Result<()> {
        match InterruptController::signal_msi(self, apic_id, vector) {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::debug!(
                    apic_id,
                    vector,
                    "SINT interrupt blocked by the guest's LAPIC"
                );
                Ok(())
            }
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    fn register_doorbell(&self, port: u16, datamatch: u32) -> std::io::Result<EventFd> {
        self.register_ioeventfd(IoEventAddress::Port(port), 4, Some(u64::from(datamatch)))
            .map_err(std::io::Error::other)
    }
}

impl HvPartition {
    /// Wires the enlightenments into a partition configuration: MSR handler for 0x40000000–0x400000FF, the
    /// hypercall and doorbell port handlers, and the synthetic CPUID leaves (which also removes KVM's).
    pub fn install(self: &Arc<Self>, config: &mut PartitionConfig) {
        config.set_msr_handler(self.clone());
        for range in self.port_ranges() {
            config.add_port_handler(range, self.clone());
        }
        config.extra_cpuid(self.cpuid_leaves());
    }

    /// [`HvPartition::attach`] to a built partition: its RAM and its interrupt controller.
    pub fn attach_to(&self, partition: &Partition) -> Result<(), HvError> {
        self.attach(partition.ram().clone(), Arc::new(partition.interrupts()))
    }

    /// The port ranges to register this object as a [`PortHandler`] for: the hypercall port (1 byte) and the
    /// doorbell port (4 bytes; writes of connection ids without an ioeventfd land here).
    pub fn port_ranges(&self) -> [Range<u16>; 2] {
        let p = self.config.ports;
        [p.hypercall..p.hypercall + 1, p.doorbell..p.doorbell + 1]
    }
}

impl MsrHandler for HvPartition {
    fn msr_ranges(&self) -> Vec<Range<u32>> {
        vec![SYNTHETIC_MSR_RANGE]
    }

    fn rdmsr(&self, vcpu: &mut VcpuCtx, msr: u32) -> Option<u64> {
        match HvPartition::rdmsr(self, vcpu.vp_index(), msr) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(vp = vcpu.vp_index(), msr, error = %e, "synthetic RDMSR #GP");
                None
            }
        }
    }

    fn wrmsr(&self, vcpu: &mut VcpuCtx, msr: u32, value: u64) -> bool {
        match HvPartition::wrmsr(self, vcpu.vp_index(), msr, value) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(vp = vcpu.vp_index(), msr, value, error = %e, "synthetic WRMSR #GP");
                false
            }
        }
    }
}

impl PortHandler for HvPartition {
    fn read(&self, vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]) {
        tracing::debug!(vp = vcpu.vp_index(), port, "read of a hypercall port");
        data.fill(0xFF);
    }

    fn write(&self, vcpu: &mut VcpuCtx, port: u16, data: &[u8]) {
        let vp = vcpu.vp_index();
        let (mut regs, sregs) = match (vcpu.regs(), vcpu.sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(vp, port, error = %e, "cannot read registers of a hypercall");
                return;
            }
        };
        let convention = CallingConvention::of(&sregs);
        let ports = self.config.ports;
        if port == ports.hypercall {
            let status = self.hypercall(vp, convention.decode_trap(&regs));
            convention.complete_trap(&mut regs, HypercallResult::simple(status));
        } else if port == ports.doorbell {
            let status = match <[u8; 4]>::try_from(data) {
                Ok(b) => self.doorbell(vp, u32::from_le_bytes(b)),
                Err(_) => {
                    tracing::warn!(
                        vp,
                        len = data.len(),
                        "doorbell written with the wrong width"
                    );
                    HvStatus::INVALID_HYPERCALL_INPUT
                }
            };
            convention.complete_doorbell(&mut regs, status);
        } else {
            tracing::warn!(vp, port, "write to a port the enlightenments do not own");
            return;
        }
        if let Err(e) = vcpu.set_regs(&regs) {
            tracing::error!(vp, error = %e, "cannot return hypercall status");
        }
    }
}
