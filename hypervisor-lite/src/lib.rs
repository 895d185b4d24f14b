//! hypervisor-lite: partitions on real KVM (guest RAM, vCPUs, 64-bit and 32-bit guests) with a Hyper-V style
//! enlightenment surface — synthetic CPUID leaves and MSRs, the hypercall page, HvPostMessage/HvSignalEvent,
//! SynIC message and event pages — implemented in user space, plus exit accounting and exit-free fast paths.
//!
//! Core modules: [`memory`] (guest RAM), [`partition`] (building and running a VM), [`vcpu`] (run loop, handler
//! context, outcomes), [`devices`] (port/MMIO/MSR handler traits), [`irq`] (ioeventfd, MSI, irqfd), [`stats`]
//! (user exits and KVM statistics), [`boot`] (boot area and initial registers), [`loader`] (ELF), [`serial`]
//! (COM1), [`testing`] (test-guest paths and the KVM skip rule), [`tsc`] (the host TSC rate).

pub mod boot;
pub mod devices;
pub mod error;
pub mod hv;
pub mod irq;
pub mod kvm_setup;
pub mod loader;
pub mod memory;
pub mod partition;
pub mod serial;
pub mod stats;
pub mod testing;
pub mod tsc;
pub mod vcpu;

pub use boot::BootMode;
pub use devices::{MmioHandler, MsrHandler, PortHandler};
pub use error::{Error, KvmUnavailableCause, Result};
pub use irq::{InterruptController, IoEventAddress};
pub use memory::{GuestRam, MemoryError};
pub use partition::{Partition, PartitionConfig, StopHandle};
pub use stats::{ExitReason, StatsProbe, StatsSnapshot, UserExits, VcpuStats};
pub use vcpu::{GuestState, VcpuCtx, VcpuOutcome, EXIT_PORT};
