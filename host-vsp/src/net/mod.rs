//! Network backends shared by every network device model (netvsp, and later the emulated NIC and
//! virtio-net): one [`NetBackend`] trait that moves whole Ethernet frames straight between the
//! device's buffers (guest pages as vm-memory [`VolatileSlice`]s, or a device's own buffer) and the
//! host side, plus [`MemoryNet`], an in-memory pair for tests and benchmarks.
//!
//! Frames are Ethernet frames without FCS. A backend never buffers without bound: a send it cannot
//! take now is refused (`Ok(false)`), and the device drops and counts the frame.
//!
//! - [`memory`] — [`MemoryNet`], two connected in-memory ends;
//! - [`tap`] — [`TapNet`], a Linux TAP interface;
//! - [`netns`] — [`netns::Netns`], a network namespace of one's own for tests and benchmarks.

pub mod memory;
pub mod netns;
pub mod tap;

use std::io;
use std::os::fd::BorrowedFd;

use vm_memory::VolatileSlice;

pub use memory::MemoryNet;
pub use tap::{TapError, TapNet};

/// Largest Ethernet payload (MTU) every backend carries.
pub const MTU: usize = 1500;
/// Ethernet header bytes in front of the payload (destination, source, EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Largest frame every backend carries: [`MTU`] plus the Ethernet header (no FCS, no VLAN tag).
pub const MAX_FRAME_LEN: usize = MTU + ETHERNET_HEADER_LEN;

/// Errors of a network backend.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The waiting frame does not fit the buffer it was received into; it was consumed and dropped.
    #[error("a {len}-byte frame does not fit a {capacity}-byte receive buffer")]
    FrameTooLarge {
        /// Bytes of the frame.
        len: usize,
        /// Bytes of the buffer.
        capacity: usize,
    },
    /// A frame to send is empty or longer than [`MAX_FRAME_LEN`]; it was not sent.
    #[error("a {len}-byte frame cannot be sent (frames are 1..={max} bytes)", max = MAX_FRAME_LEN)]
    BadFrameLength {
        /// Bytes of the frame.
        len: usize,
    },
    /// The host I/O failed.
    #[error("network backend I/O failed")]
    Io(#[from] io::Error),
}

/// Where a network device's frames go and come from. One device thread owns a backend at a time.
pub trait NetBackend: Send {
    /// Sends one frame gathered from `frame` in order (the slices together are the frame).
    /// `Ok(false)` when the backend cannot take it now (its queue is full): the caller drops and
    /// counts the frame, it is not retried.
    fn send(&mut self, frame: &[VolatileSlice<'_>]) -> Result<bool, NetError>;

    /// Receives the next waiting frame into `buf`, returning its length, or `Ok(None)` when none
    /// waits. A frame longer than `buf` is consumed and reported as [`NetError::FrameTooLarge`].
    fn recv(&mut self, buf: &VolatileSlice<'_>) -> Result<Option<usize>, NetError>;

    /// A file descriptor that is readable (poll `POLLIN`) while frames wait to be received: device
    /// loops wait on it together with their channel's event fd.
    fn rx_fd(&self) -> BorrowedFd<'_>;

    /// Whether the link is up (the host side of the backend is connected).
    fn link_up(&self) -> bool {
        true
    }
}

/// Total length of a gathered frame.
pub fn frame_len(frame: &[VolatileSlice<'_>]) -> usize {
    frame.iter().map(|s| s.len()).sum()
}

/// Checks that a gathered frame has a length a backend can send.
pub fn check_send_len(frame: &[VolatileSlice<'_>]) -> Result<usize, NetError> {
    let len = frame_len(frame);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(NetError::BadFrameLength { len });
    }
    Ok(len)
}
