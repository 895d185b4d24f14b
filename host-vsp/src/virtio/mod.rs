//! virtio devices on the virtio-mmio transport, their queues walked by rust-vmm's `virtio-queue`.
//!
//! - [`blk`] — virtio-blk.

pub mod blk;
