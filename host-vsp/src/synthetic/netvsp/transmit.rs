//! Where a guest's SEND_RNDIS_PKT keeps its RNDIS messages, and reading them there: a
//! [`MessageStream`] is the bytes of a send-buffer section (`sec_size` of them) followed by the
//! bytes of the packet's GPA-direct ranges — the three ways Linux sends (section only, pages only,
//! header in a section and data in pages). Headers, PPIs and control messages are copied out;
//! frames are handed to the backend as volatile slices of guest memory, never copied.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmbus::packet::GpaRanges;

use super::buffers::GuestBuffer;
use crate::guest_memory::{self, GuestMemoryMmap};
use crate::net::{NetBackend, NetError};
use crate::vmbus_service::GpadlAccessError;

/// Why bytes of a message stream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The range reaches past the stream.
    #[error("stream bytes {offset}+{len} beyond its {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A GPA-direct page is not guest RAM.
    #[error("GPA-direct page {pfn:#x} is not guest RAM")]
    NotRam { pfn: u64 },
    /// The send buffer is gone or refused the access.
    #[error("send buffer access failed")]
    SendBuffer(#[source] GpadlAccessError),
    /// The backend failed.
    #[error("backend send failed")]
    Backend(#[source] NetError),
}

/// A piece of guest memory named by a GPA-direct range.
#[derive(Debug, Clone, Copy)]
struct Piece {
    gpa: u64,
    len: u64,
}

/// The bytes of one SEND_RNDIS_PKT: a section part, then a GPA-direct part.
pub struct MessageStream<'a> {
    section: Option<(Arc<dyn GuestBuffer>, u64, u64)>,
    pieces: Vec<Piece>,
    memory: &'a GuestMemoryMmap,
    len: u64,
}

impl std::fmt::Debug for MessageStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("section", &self.section.as_ref().map(|(_, o, l)| (*o, *l)))
            .field("pieces", &self.pieces.len())
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> MessageStream<'a> {
    /// The stream of `section` (`(buffer, offset, len)`) followed by `ranges`. Ranges whose pages
    /// overflow an address are refused.
    pub fn new(
        memory: &'a GuestMemoryMmap,
        section: Option<(Arc<dyn GuestBuffer>, u64, u64)>,
        ranges: Option<&GpaRanges<'_>>,
    ) -> Result<Self, StreamError> {
        let mut pieces = Vec::new();
        let mut len = section.as_ref().map_or(0, |s| s.2);
        for range in ranges.into_iter().flat_map(|r| r.iter()) {
            let mut left = u64::from(range.byte_count);
            let mut in_page = u64::from(range.byte_offset);
            for i in 0..range.pfns.len() {
                if left == 0 {
                    break;
                }
                let pfn = range.pfn(i).unwrap_or(u64::MAX);
                let gpa =
                    guest_memory::gpa_of_pfn(pfn, in_page).ok_or(StreamError::NotRam { pfn })?;
                let n = (guest_memory::PAGE_SIZE - in_page).min(left);
                pieces.push(Piece { gpa, len: n });
                len += n;
                left -= n;
                in_page = 0;
            }
        }
        Ok(Self {
            section,
            pieces,
            memory,
            len,
        })
    }

    /// Bytes in the stream.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), StreamError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StreamError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// The GPA-direct pieces overlapping `[offset, offset + len)` of the GPA part.
    fn gpa_overlaps(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = offset + len;
        let mut at = 0u64;
        self.pieces.iter().filter_map(move |p| {
            let (start, stop) = (at, at + p.len);
            at = stop;
            let (a, b) = (start.max(offset), stop.min(end));
            (a < b).then(|| Piece {
                gpa: p.gpa + (a - start),
                len: b - a,
            })
        })
    }

    fn section_len(&self) -> u64 {
        self.section.as_ref().map_or(0, |s| s.2)
    }

    /// Copies `buf.len()` bytes at `offset` of the stream.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StreamError> {
        let len = buf.len() as u64;
        self.check(offset, len)?;
        let split = self.section_len();
        let mut done = 0usize;
        if let Some((buffer, base, _)) = &self.section {
            if offset < split {
                let n = (split - offset).min(len) as usize;
                buffer
                    .read(base + offset, &mut buf[..n])
                    .map_err(StreamError::SendBuffer)?;
                done = n;
            }
        }
        if done < buf.len() {
            let from = offset + done as u64 - split;
            for piece in self.gpa_overlaps(from, len - done as u64) {
                let n = piece.len as usize;
                guest_memory::read(self.memory, piece.gpa, &mut buf[done..done + n]).map_err(
                    |_| StreamError::NotRam {
                        pfn: piece.gpa / guest_memory::PAGE_SIZE,
                    },
                )?;
                done += n;
            }
        }
        Ok(())
    }

    /// Sends `[offset, offset + len)` of the stream to `backend` as one gathered frame of guest
    /// memory; `Ok(false)` if the backend refused it (full).
    pub fn send(
        &self,
        offset: u64,
        len: u64,
        backend: &mut dyn NetBackend,
    ) -> Result<bool, StreamError> {
        self.check(offset, len)?;
        let split = self.section_len();
        let end = offset + len;
        let (gpa_from, gpa_len) = if end > split {
            let from = offset.max(split) - split;
            (from, end - split - from)
        } else {
            (0, 0)
        };
        let memory = self.memory;
        let mut result: Option<Result<bool, StreamError>> = None;
        let mut run = |section: &mut dyn Iterator<Item = VolatileSlice<'_>>| {
            let mut parts: Vec<VolatileSlice<'_>> = section.collect();
            if gpa_len > 0 {
                for piece in self.gpa_overlaps(gpa_from, gpa_len) {
                    match memory.get_slice(GuestAddress(piece.gpa), piece.len as usize) {
                        Ok(slice) => parts.push(slice),
                        Err(_) => {
                            result = Some(Err(StreamError::NotRam {
                                pfn: piece.gpa / guest_memory::PAGE_SIZE,
                            }));
                            return;
                        }
                    }
                }
            }
            result = Some(backend.send(&parts).map_err(StreamError::Backend));
        };
        match &self.section {
            Some((buffer, base, _)) if offset < split => {
                let n = (split - offset).min(len);
                buffer
                    .with_slices(base + offset, n, &mut run)
                    .map_err(StreamError::SendBuffer)?;
            }
            _ => run(&mut std::iter::empty()),
        }
        result.unwrap_or(Ok(false))
    }
}
