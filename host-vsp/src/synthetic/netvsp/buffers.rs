//! The guest's receive and send buffers as netvsp sees them: [`GuestBuffer`], a byte range of guest
//! memory the guest handed over by GPADL (every access bounds-checked and refused once revoked),
//! the [`ReceiveBuffer`] cut into fixed sub-allocations the host fills and the guest returns, and
//! the [`SendBuffer`] cut into sections the guest fills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::guest_memory::{self, GuestMemoryMmap};
use crate::vmbus_service::{GpadlAccessError, MappedGpadl};

/// A guest buffer handed over by GPADL.
pub trait GuestBuffer: Send + Sync {
    /// Bytes in the buffer.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f` with the guest memory of `[offset, offset + len)` as volatile slices in order
    /// (the zero-copy path); the buffer cannot be revoked while `f` runs.
    fn with_slices(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut dyn Iterator<Item = VolatileSlice<'_>>),
    ) -> Result<(), GpadlAccessError>;
    /// Copies `buf.len()` bytes at `offset` out of the guest.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), GpadlAccessError>;
    /// Copies `buf` into the guest at `offset`.
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), GpadlAccessError>;
}

impl GuestBuffer for MappedGpadl {
    fn len(&self) -> u64 {
        self.range_len(0)
    }

    fn with_slices(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut dyn Iterator<Item = VolatileSlice<'_>>),
    ) -> Result<(), GpadlAccessError> {
        MappedGpadl::with_slices(self, 0, offset, len, |it| f(it))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), GpadlAccessError> {
        MappedGpadl::read(self, 0, offset, buf)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), GpadlAccessError> {
        MappedGpadl::write(self, 0, offset, buf)
    }
}

/// A buffer over contiguous guest memory (for harnesses that run a worker without the VMBus
/// service: benchmarks, fuzzing, ring-level tests), revocable like a GPADL.
#[derive(Debug)]
pub struct ContiguousBuffer {
    memory: GuestMemoryMmap,
    gpa: u64,
    len: u64,
    handle: u32,
    revoked: AtomicBool,
}

impl ContiguousBuffer {
    /// `len` bytes of `memory` at `gpa`, known to the worker as GPADL `handle`.
    pub fn new(memory: GuestMemoryMmap, gpa: u64, len: u64, handle: u32) -> Self {
        Self {
            memory,
            gpa,
            len,
            handle,
            revoked: AtomicBool::new(false),
        }
    }

    /// Refuse every later access (as a GPADL teardown does).
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    fn checked(&self, offset: u64, len: u64) -> Result<u64, GpadlAccessError> {
        if self.revoked.load(Ordering::Acquire) {
            return Err(GpadlAccessError::Revoked(self.handle));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.gpa + offset),
            _ => Err(GpadlAccessError::OutOfRange {
                gpadl: self.handle,
                range: 0,
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn not_ram(&self, gpa: u64) -> GpadlAccessError {
        GpadlAccessError::NotRam {
            gpadl: self.handle,
            pfn: gpa / guest_memory::PAGE_SIZE,
        }
    }
}

impl GuestBuffer for ContiguousBuffer {
    fn len(&self) -> u64 {
        self.len
    }

    fn with_slices(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&mut dyn Iterator<Item = VolatileSlice<'_>>),
    ) -> Result<(), GpadlAccessError> {
        let gpa = self.checked(offset, len)?;
        let mut slices = Vec::new();
        let mut at = gpa;
        let end = gpa + len;
        while at < end {
            let in_page = at % guest_memory::PAGE_SIZE;
            let n = (guest_memory::PAGE_SIZE - in_page).min(end - at);
            let slice = self
                .memory
                .get_slice(GuestAddress(at), n as usize)
                .map_err(|_| self.not_ram(at))?;
            slices.push(slice);
            at += n;
        }
        f(&mut slices.into_iter());
        Ok(())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), GpadlAccessError> {
        let gpa = self.checked(offset, buf.len() as u64)?;
        guest_memory::read(&self.memory, gpa, buf).map_err(|_| self.not_ram(gpa))
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), GpadlAccessError> {
        let gpa = self.checked(offset, buf.len() as u64)?;
        guest_memory::write(&self.memory, gpa, buf).map_err(|_| self.not_ram(gpa))
    }
}

/// The receive buffer: `count` sub-allocations of `sub_allocation_size` bytes from offset 0, each
/// free or lent to the guest inside a transfer-page packet.
pub struct ReceiveBuffer {
    /// The guest memory.
    pub buffer: Arc<dyn GuestBuffer>,
    /// The GPADL handle the guest named.
    pub gpadl: u32,
    /// The id the guest gave it (the transfer page set id of every frame packet).
    pub id: u16,
    /// Bytes of each sub-allocation.
    pub sub_allocation_size: u32,
    /// Number of sub-allocations.
    pub count: u32,
    free: Vec<u32>,
}

impl std::fmt::Debug for ReceiveBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveBuffer")
            .field("gpadl", &self.gpadl)
            .field("id", &self.id)
            .field("sub_allocation_size", &self.sub_allocation_size)
            .field("count", &self.count)
            .field("free", &self.free.len())
            .finish()
    }
}

impl ReceiveBuffer {
    /// Cuts `buffer` into as many `sub_allocation_size` sections as fit (capped at `max_sections`);
    /// `None` if not even one fits.
    pub fn new(
        buffer: Arc<dyn GuestBuffer>,
        gpadl: u32,
        id: u16,
        sub_allocation_size: u32,
        max_sections: u32,
    ) -> Option<Self> {
        let count = (buffer.len() / u64::from(sub_allocation_size)).min(u64::from(max_sections));
        let count = u32::try_from(count).ok().filter(|&c| c > 0)?;
        // Handed out lowest first.
        let free = (0..count).rev().collect();
        Some(Self {
            buffer,
            gpadl,
            id,
            sub_allocation_size,
            count,
            free,
        })
    }

    /// Byte offset of section `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.sub_allocation_size)
    }

    /// Takes a free section.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a section the guest completed (or the host did not use). Out-of-range or already
    /// free sections are ignored; returns whether it was accepted.
    pub fn give_back(&mut self, index: u32) -> bool {
        if index >= self.count || self.free.contains(&index) {
            return false;
        }
        self.free.push(index);
        true
    }

    /// Free sections.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

/// The send buffer: `count` sections of `section_size` bytes the guest fills with RNDIS messages.
pub struct SendBuffer {
    /// The guest memory.
    pub buffer: Arc<dyn GuestBuffer>,
    /// The GPADL handle the guest named.
    pub gpadl: u32,
    /// The id the guest gave it.
    pub id: u16,
    /// Bytes of each section.
    pub section_size: u32,
    /// Number of sections.
    pub count: u32,
}

impl std::fmt::Debug for SendBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBuffer")
            .field("gpadl", &self.gpadl)
            .field("id", &self.id)
            .field("section_size", &self.section_size)
            .field("count", &self.count)
            .finish()
    }
}

impl SendBuffer {
    /// Cuts `buffer` into `section_size` sections; `None` if not even one fits.
    pub fn new(
        buffer: Arc<dyn GuestBuffer>,
        gpadl: u32,
        id: u16,
        section_size: u32,
    ) -> Option<Self> {
        let count = u32::try_from(buffer.len() / u64::from(section_size))
            .ok()
            .filter(|&c| c > 0)?;
        Some(Self {
            buffer,
            gpadl,
            id,
            section_size,
            count,
        })
    }

    /// Offset of `size` bytes of section `index`, if the section exists and holds them.
    pub fn section(&self, index: u32, size: u32) -> Option<u64> {
        (index < self.count && size <= self.section_size)
            .then(|| u64::from(index) * u64::from(self.section_size))
    }
}
