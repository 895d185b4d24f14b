//! virtio devices on the virtio-mmio transport, their queues walked by rust-vmm's `virtio-queue`.
//!
//! - [`mmio`]: the virtio-mmio transport registers every device here sits behind;
//! - [`blk`]: virtio-blk, the block device;
//! - [`net`]: virtio-net, the network device.

#![forbid(unsafe_code)]

pub mod blk;
pub mod mmio;
pub mod net;
