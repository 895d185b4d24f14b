//! [`MemoryNet`]: two connected in-memory ends of a network, each a [`NetBackend`]. A frame sent on
//! one end is received on the other. Each direction holds at most a fixed number of frames (a full
//! direction refuses sends, as a full tap queue does), and each end's receive readiness is an
//! event fd, so device loops wait on it exactly as they wait on a tap.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{check_send_len, NetBackend, NetError};

/// Frames one direction holds before it refuses sends, unless [`MemoryNet::pair_with_capacity`]
/// says otherwise.
pub const DEFAULT_QUEUE_FRAMES: usize = 256;

/// Frames waiting in one direction, and the event fd that is readable while any wait.
#[derive(Debug)]
struct Direction {
    queue: Mutex<Queue>,
    readable: EventFd,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    capacity: usize,
}

impl Direction {
    fn new(capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::new(Queue {
                frames: VecDeque::with_capacity(capacity),
                spare: Vec::new(),
                capacity,
            }),
            readable: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves whole frames behind: the queue stays usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One end of an in-memory network. See the module documentation.
#[derive(Debug)]
pub struct MemoryNet {
    /// Frames this end receives.
    rx: Arc<Direction>,
    /// Frames the other end receives.
    tx: Arc<Direction>,
}

impl MemoryNet {
    /// Two connected ends, each direction holding up to [`DEFAULT_QUEUE_FRAMES`] frames.
    pub fn pair() -> std::io::Result<(Self, Self)> {
        Self::pair_with_capacity(DEFAULT_QUEUE_FRAMES)
    }

    /// Two connected ends, each direction holding up to `frames` frames.
    pub fn pair_with_capacity(frames: usize) -> std::io::Result<(Self, Self)> {
        let a = Arc::new(Direction::new(frames)?);
        let b = Arc::new(Direction::new(frames)?);
        Ok((
            Self {
                rx: a.clone(),
                tx: b.clone(),
            },
            Self { rx: b, tx: a },
        ))
    }

    /// Sends a frame held in host memory (a test's side of the network).
    pub fn send_bytes(&mut self, frame: &[u8]) -> Result<bool, NetError> {
        let mut copy = frame.to_vec();
        self.send(&[VolatileSlice::from(copy.as_mut_slice())])
    }

    /// Receives the next waiting frame into a new vector (a test's side of the network).
    pub fn recv_bytes(&mut self) -> Option<Vec<u8>> {
        let mut queue = self.rx.lock();
        let frame = queue.frames.pop_front()?;
        if queue.frames.is_empty() {
            // Under the lock, so no send can slip in between the pop and the reset.
            let _ = self.rx.readable.read();
        }
        Some(frame)
    }

    /// Frames waiting to be received on this end.
    pub fn pending(&self) -> usize {
        self.rx.lock().frames.len()
    }
}

impl NetBackend for MemoryNet {
    fn send(&mut self, frame: &[VolatileSlice<'_>]) -> Result<bool, NetError> {
        let len = check_send_len(frame)?;
        let mut queue = self.tx.lock();
        if queue.frames.len() >= queue.capacity {
            return Ok(false);
        }
        let mut buf = queue.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let mut at = 0;
        for part in frame {
            // In bounds: `buf` is exactly the sum of the parts' lengths.
            part.copy_to(&mut buf[at..at + part.len()]);
            at += part.len();
        }
        queue.frames.push_back(buf);
        self.tx.readable.write(1)?;
        Ok(true)
    }

    fn recv(&mut self, buf: &VolatileSlice<'_>) -> Result<Option<usize>, NetError> {
        let mut queue = self.rx.lock();
        let Some(frame) = queue.frames.pop_front() else {
            return Ok(None);
        };
        if queue.frames.is_empty() {
            let _ = self.rx.readable.read();
        }
        let len = frame.len();
        let result = if len > buf.len() {
            Err(NetError::FrameTooLarge {
                len,
                capacity: buf.len(),
            })
        } else {
            buf.write_slice(&frame, 0)
                .map_err(|e| NetError::Io(std::io::Error::other(e)))?;
            Ok(Some(len))
        };
        queue.spare.push(frame);
        result
    }

    fn rx_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the event fd is owned by `self.rx`, which lives at least as long as `&self`, so
        // the descriptor stays open for the whole borrow.
        unsafe { BorrowedFd::borrow_raw(self.rx.readable.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MAX_FRAME_LEN;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn frames_cross_in_order_gathered_and_readiness_follows_the_queue() {
        let (mut a, mut b) = MemoryNet::pair().unwrap();
        assert!(!readable(b.rx_fd()));
        let mut head = *b"0123";
        let mut tail = *b"456789";
        let parts = [
            VolatileSlice::from(&mut head[..]),
            VolatileSlice::from(&mut tail[..]),
        ];
        assert!(a.send(&parts).unwrap());
        assert!(a.send_bytes(b"second").unwrap());
        assert!(readable(b.rx_fd()));
        assert!(!readable(a.rx_fd()));

        let mut buf = [0u8; 64];
        let got = b.recv(&VolatileSlice::from(&mut buf[..])).unwrap();
        assert_eq!(got, Some(10));
        assert_eq!(&buf[..10], b"0123456789");
        assert!(readable(b.rx_fd()), "one frame still waits");
        assert_eq!(b.recv_bytes().unwrap(), b"second");
        assert!(!readable(b.rx_fd()));
        assert_eq!(b.recv(&VolatileSlice::from(&mut buf[..])).unwrap(), None);
    }

    #[test]
    fn a_full_direction_refuses_and_a_too_small_buffer_drops_the_frame() {
        let (mut a, mut b) = MemoryNet::pair_with_capacity(2).unwrap();
        assert!(a.send_bytes(&[1; 100]).unwrap());
        assert!(a.send_bytes(&[2; 10]).unwrap());
        assert!(!a.send_bytes(&[3; 10]).unwrap(), "third frame refused");
        assert_eq!(b.pending(), 2);

        let mut small = [0u8; 50];
        let err = b.recv(&VolatileSlice::from(&mut small[..])).unwrap_err();
        assert!(matches!(
            err,
            NetError::FrameTooLarge {
                len: 100,
                capacity: 50
            }
        ));
        assert_eq!(
            b.recv(&VolatileSlice::from(&mut small[..])).unwrap(),
            Some(10)
        );
        assert_eq!(small[..10], [2; 10]);
    }

    #[test]
    fn empty_and_oversized_frames_are_refused_with_their_length() {
        let (mut a, b) = MemoryNet::pair().unwrap();
        assert!(matches!(
            a.send_bytes(&[]),
            Err(NetError::BadFrameLength { len: 0 })
        ));
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            a.send_bytes(&big),
            Err(NetError::BadFrameLength { len }) if len == MAX_FRAME_LEN + 1
        ));
        assert_eq!(b.pending(), 0);
    }
}
