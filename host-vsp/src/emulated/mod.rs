//! Emulated devices: hardware models a guest drives register by register, each access an exit to the
//! host — the baselines the synthetic devices are measured against.
//!
//! - [`ide`]: the primary IDE channel with one ATA disk (PIO);
//! - [`e1000`]: an Intel 82540EM NIC (MMIO registers, descriptor rings, MSI).

#![forbid(unsafe_code)]

pub mod e1000;
pub mod ide;
