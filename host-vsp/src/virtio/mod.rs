//! virtio devices on the virtio-mmio transport, their queues walked by rust-vmm's `virtio-queue`.
//!
//! - [`blk`] — virtio-blk.

#![forbid(unsafe_code)]

pub mod blk;
