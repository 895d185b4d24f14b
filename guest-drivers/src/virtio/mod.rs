//! virtio 1.x on the driver side, written from the specification (no external virtio crate):
//!
//! - [`split_queue`]: the split virtqueue (§2.7) — rings in DMA memory, the driver's private bookkeeping,
//!   and Linux's notification discipline ([`vring_need_event`], batched kicks, used-buffer notifications
//!   suppressed while draining and re-enabled with a re-check);
//! - [`mmio`]: the virtio-mmio transport, version 2 (§4.2.2) — registers, the initialisation sequence with
//!   feature negotiation, queue setup, the doorbell;
//! - [`features`]: the feature bits these drivers know.
//!
//! The block driver on top is [`crate::virtio_blk`].

pub mod mmio;
pub mod split_queue;

pub use split_queue::{vring_need_event, SplitQueue};

/// Feature bits (virtio 1.x §6 and §5.2.3).
pub mod features {
    /// virtio-blk: `seg_max` is valid.
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    /// virtio-blk: the device is read-only.
    pub const BLK_RO: u64 = 1 << 5;
    /// virtio-blk: `blk_size` is valid.
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    /// virtio-blk: FLUSH is supported.
    pub const BLK_FLUSH: u64 = 1 << 9;
    /// Descriptors may point to indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x ("modern") device.
    pub const VERSION_1: u64 = 1 << 32;
}
