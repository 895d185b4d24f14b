//! Host side of viridian's synthetic devices: the VMBus server that serves a guest's channel messages
//! on hypervisor-lite's SynIC hooks, the VSPs (virtual service providers) behind its channels, and the
//! emulated and virtio storage baselines they are compared with — all over the same disk backends.
//!
//! - [`disk`]: the disk backend trait, raw image files and RAM disks;
//! - [`ic`]: host side of the heartbeat and shutdown integration components;
//! - [`vmbus_service`]: the VMBus server on hypervisor-lite's SynIC hooks, serving [`vmbus_service::VmbusDevice`]s;
//! - [`ic_vsp`]: the heartbeat and shutdown VSPs.

pub mod disk;
pub mod guest_memory;
pub mod ic;
pub mod ic_vsp;
pub mod ide;
pub mod storvsp;
pub mod storvsp_device;
pub mod virtio_blk;
pub mod vmbus_service;
