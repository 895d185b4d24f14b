//! hypervisor-lite: partitions on real KVM (guest RAM, vCPUs, 64-bit and 32-bit guests) with a Hyper-V style
//! enlightenment surface — synthetic CPUID leaves and MSRs, the hypercall page, HvPostMessage/HvSignalEvent,
//! SynIC message and event pages — implemented in user space, plus exit accounting and exit-free fast paths.

pub mod hv;
pub mod memory;
