//! Synthetic devices: the VSPs behind VMBus channels.
//!
//! - [`storvsp`]: the synthetic SCSI controller (Linux's `hv_storvsc` talks to it);
//! - [`netvsp`]: the synthetic NIC (Linux's `hv_netvsc` talks to it);
//! - [`ic`]: the heartbeat and shutdown integration components.

pub mod ic;
pub mod netvsp;
pub mod storvsp;
