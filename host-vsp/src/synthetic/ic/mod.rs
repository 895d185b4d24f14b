//! The integration components (heartbeat, shutdown) on the host.
//!
//! - [`host`]: the host's side of the IC protocol, sans-I/O (requests built, responses checked);
//! - [`vsp`]: the IC devices on the VMBus service.

pub mod host;
pub mod vsp;

pub use vsp::{IcControl, IcState, IcVsp};
