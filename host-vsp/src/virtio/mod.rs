//! virtio devices on the virtio-mmio transport, their queues walked by rust-vmm's `virtio-queue`.
//!
//! - [`blk`]: virtio-blk, the block device.

#![forbid(unsafe_code)]

pub mod blk;
