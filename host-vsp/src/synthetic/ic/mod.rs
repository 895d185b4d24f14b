//! The integration components on the host.
//!
//! - [`host`]: the host's side of the heartbeat and shutdown protocol, sans-I/O (requests built,
//!   responses checked);
//! - [`vsp`]: the heartbeat and shutdown devices on the VMBus service;
//! - [`timesync`]: the time-sync IC, protocol and device (the host's UTC and the guest's reference
//!   time, SYNC at open, SAMPLE periodically);
//! - [`kvp`] and [`kvp_vsp`]: the key-value pair exchange IC, protocol and device with the host's
//!   [`KvpHandle`];
//! - [`link`]: what the time-sync and KVP devices share.

pub mod host;
pub mod kvp;
pub mod kvp_vsp;
pub mod link;
pub mod timesync;
pub mod vsp;

pub use kvp_vsp::{KvpCallError, KvpHandle, KvpState, KvpVsp};
pub use timesync::{ReferenceClock, TimeSyncState, TimeSyncVsp};
pub use vsp::{IcControl, IcState, IcVsp};
