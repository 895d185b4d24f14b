//! The device model: what a VMBus device is ([`VmbusDevice`]) and what it gets when the guest opens
//! one of its channels ([`ChannelContext`]): the channel's identity and target VP, every GPADL the
//! guest created for the device ([`MappedGpadl`], validated and mapped once, usable from the device
//! thread without the service lock, revoked safely when the guest tears it down), and the way to offer
//! sub-channels. Open, close and reopen reach the device as the life of one [`VmbusDevice::serve`]
//! call per open channel: it starts when the guest opens, [`super::ChannelSignals::is_stopped`] turns
//! true when it closes, and a reopen is a new call with [`ChannelContext::opens`] counting up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmbus::gpadl::OwnedGpaRange;
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::MAX_USER_DEFINED_BYTES;
use vmbus::server::OfferConfig;

use super::channel::HostChannel;

/// A synthetic device behind one VMBus offer (and the sub-channels it offers).
pub trait VmbusDevice: Send + Sync {
    /// Short name for logs and thread names.
    fn name(&self) -> &str;
    /// What to offer the guest for the primary channel.
    fn offer(&self) -> OfferConfig;
    /// Serve an opened channel — the primary or one of its sub-channels
    /// ([`ChannelContext::subchannel_index`]) — until [`HostChannel::is_stopped`]. Runs on a thread of
    /// its own, one per open channel. A panic is caught: the service logs it and rescinds the device.
    fn serve(&self, channel: HostChannel);
}

/// Why a GPADL access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GpadlAccessError {
    /// The guest tore the GPADL down (or closed the device): its pages are no longer the device's.
    #[error("GPADL {0:#x} was torn down")]
    Revoked(u32),
    /// The access reaches outside the GPADL's range.
    #[error("access {offset:#x}+{len:#x} is outside range {range} ({size:#x} bytes) of GPADL {gpadl:#x}")]
    OutOfRange {
        gpadl: u32,
        range: usize,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A page of the GPADL is not guest RAM (cannot happen for GPADLs the service mapped).
    #[error("GPADL {gpadl:#x} page {pfn:#x} is not guest RAM")]
    NotRam { gpadl: u32, pfn: u64 },
}

/// A GPADL the guest created for a device, mapped once when the guest's GPADL_HEADER/BODY messages
/// completed. Accesses hold a read lock for their duration; teardown takes the write lock, so once
/// the guest is told GPADL_TORNDOWN no device access is still running and every later one fails with
/// [`GpadlAccessError::Revoked`].
pub struct MappedGpadl {
    handle: u32,
    relid: u32,
    ranges: Vec<OwnedGpaRange>,
    memory: GuestMemoryMmap,
    revoked: RwLock<bool>,
}

impl std::fmt::Debug for MappedGpadl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedGpadl")
            .field("handle", &self.handle)
            .field("relid", &self.relid)
            .field("ranges", &self.ranges.len())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl MappedGpadl {
    /// Check every page of `ranges` against `memory` (each page wholly inside one region).
    pub(super) fn map(
        memory: &GuestMemoryMmap,
        handle: u32,
        relid: u32,
        ranges: Vec<OwnedGpaRange>,
    ) -> Result<Self, GpadlAccessError> {
        for range in &ranges {
            for &pfn in &range.pfns {
                let whole_page = pfn
                    .checked_mul(PAGE_SIZE as u64)
                    .is_some_and(|gpa| memory.get_slice(GuestAddress(gpa), PAGE_SIZE).is_ok());
                if !whole_page {
                    return Err(GpadlAccessError::NotRam { gpadl: handle, pfn });
                }
            }
        }
        Ok(Self {
            handle,
            relid,
            ranges,
            memory: memory.clone(),
            revoked: RwLock::new(false),
        })
    }

    /// The guest's handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The channel the guest created it on.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Bytes in range `range` (0 for a range that does not exist).
    pub fn range_len(&self, range: usize) -> u64 {
        self.ranges
            .get(range)
            .map_or(0, |r| u64::from(r.byte_count))
    }

    /// Whether the guest tore it down.
    pub fn is_revoked(&self) -> bool {
        *self.revoked.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Revoke: wait for running accesses, then refuse every later one.
    pub(super) fn revoke(&self) {
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Call `f` with the guest memory of `[offset, offset + len)` of range `range`, as one volatile
    /// slice per guest page piece, in order — the zero-copy path for backends. The GPADL cannot be
    /// revoked while `f` runs.
    pub fn with_slices<R>(
        &self,
        range: usize,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut dyn Iterator<Item = VolatileSlice<'_>>) -> R,
    ) -> Result<R, GpadlAccessError> {
        let guard = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        if *guard {
            return Err(GpadlAccessError::Revoked(self.handle));
        }
        let r = self.checked(range, offset, len)?;
        let start = u64::from(r.byte_offset) + offset;
        let mut pieces = Pieces {
            memory: &self.memory,
            pfns: &r.pfns,
            at: start,
            end: start + len,
        };
        let mut failed = None;
        let out = {
            let mut iter = std::iter::from_fn(|| match pieces.next() {
                Some(Ok(slice)) => Some(slice),
                Some(Err(pfn)) => {
                    failed = Some(pfn);
                    None
                }
                None => None,
            });
            f(&mut iter)
        };
        match failed {
            Some(pfn) => Err(GpadlAccessError::NotRam {
                gpadl: self.handle,
                pfn,
            }),
            None => Ok(out),
        }
    }

    /// Copy `buf.len()` bytes at `offset` of range `range` out of the guest.
    pub fn read(&self, range: usize, offset: u64, buf: &mut [u8]) -> Result<(), GpadlAccessError> {
        let mut done = 0;
        self.with_slices(range, offset, buf.len() as u64, |slices| {
            for slice in slices {
                let n = slice.len();
                slice.copy_to(&mut buf[done..done + n]);
                done += n;
            }
        })
    }

    /// Copy `buf` into the guest at `offset` of range `range`.
    pub fn write(&self, range: usize, offset: u64, buf: &[u8]) -> Result<(), GpadlAccessError> {
        let mut done = 0;
        self.with_slices(range, offset, buf.len() as u64, |slices| {
            for slice in slices {
                let n = slice.len();
                slice.copy_from(&buf[done..done + n]);
                done += n;
            }
        })
    }

    fn checked(
        &self,
        range: usize,
        offset: u64,
        len: u64,
    ) -> Result<&OwnedGpaRange, GpadlAccessError> {
        let size = self.range_len(range);
        let out = GpadlAccessError::OutOfRange {
            gpadl: self.handle,
            range,
            offset,
            len,
            size,
        };
        let r = self.ranges.get(range).ok_or(out)?;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(r),
            _ => Err(out),
        }
    }
}

/// Walks a byte range of a GPADL range page by page.
struct Pieces<'a> {
    memory: &'a GuestMemoryMmap,
    pfns: &'a [u64],
    at: u64,
    end: u64,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Result<VolatileSlice<'a>, u64>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let page = (self.at / PAGE_SIZE as u64) as usize;
        let in_page = self.at % PAGE_SIZE as u64;
        let n = (PAGE_SIZE as u64 - in_page).min(self.end - self.at);
        let pfn = *self.pfns.get(page)?;
        self.at += n;
        let gpa = pfn * PAGE_SIZE as u64 + in_page;
        Some(
            self.memory
                .get_slice(GuestAddress(gpa), n as usize)
                .map_err(|_| pfn),
        )
    }
}

/// The GPADLs of one device (its primary channel and sub-channels), by handle.
#[derive(Debug, Default)]
pub(super) struct GpadlTable {
    gpadls: RwLock<BTreeMap<u32, Arc<MappedGpadl>>>,
}

impl GpadlTable {
    pub fn insert(&self, gpadl: Arc<MappedGpadl>) {
        self.gpadls
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gpadl.handle, gpadl);
    }

    /// Remove and revoke (waiting for accesses in progress).
    pub fn revoke(&self, handle: u32) -> bool {
        let gone = self
            .gpadls
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle);
        match gone {
            Some(gpadl) => {
                gpadl.revoke();
                true
            }
            None => false,
        }
    }

    pub fn get(&self, handle: u32) -> Option<Arc<MappedGpadl>> {
        self.gpadls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.gpadls.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What a device thread asks the service to do. Device threads never take the service lock (the
/// service may be joining them while holding it): they queue requests for the service's own thread.
#[derive(Debug)]
pub(super) enum DeviceRequest {
    /// Offer `count` sub-channels of the primary channel `primary`.
    OfferSubchannels { primary: u32, count: u16 },
    /// The device serving `relid` failed (panicked): rescind the device.
    Failed {
        relid: u32,
        device: String,
        what: String,
    },
    /// The service is going away.
    Exit,
}

/// Why a request to the device model could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("the VMBus service is gone")]
    ServiceGone,
    #[error("only the primary channel can offer sub-channels")]
    NotPrimary,
    #[error("{0} sub-channels is more than a device may have")]
    TooMany(u16),
}

/// Most sub-channels one device may offer (Linux's storvsc and netvsc ask for at most one per vCPU).
pub const MAX_SUBCHANNELS: u16 = 64;

/// What the device model tells a device about one of its open channels.
pub struct ChannelContext {
    pub(super) relid: u32,
    pub(super) primary: u32,
    pub(super) subchannel_index: u16,
    pub(super) user_data: [u8; MAX_USER_DEFINED_BYTES],
    pub(super) opens: u64,
    pub(super) target_vp: Arc<AtomicU32>,
    pub(super) gpadls: Arc<GpadlTable>,
    pub(super) requests: Sender<DeviceRequest>,
    pub(super) memory: GuestMemoryMmap,
}

impl std::fmt::Debug for ChannelContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelContext")
            .field("relid", &self.relid)
            .field("primary", &self.primary)
            .field("subchannel_index", &self.subchannel_index)
            .field("opens", &self.opens)
            .field("target_vp", &self.target_vp())
            .field("gpadls", &self.gpadls.len())
            .finish()
    }
}

impl ChannelContext {
    /// This channel's relid.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// The relid of the device's primary channel.
    pub fn primary_relid(&self) -> u32 {
        self.primary
    }

    /// 0 for the primary channel, 1.. for sub-channels.
    pub fn subchannel_index(&self) -> u16 {
        self.subchannel_index
    }

    /// The user-defined bytes of the guest's OPENCHANNEL.
    pub fn user_data(&self) -> &[u8; MAX_USER_DEFINED_BYTES] {
        &self.user_data
    }

    /// How many times the guest has opened this channel (1 on the first open; more is a reopen).
    pub fn opens(&self) -> u64 {
        self.opens
    }

    /// The guest's memory (for packets that name guest pages directly, such as GPA-direct ranges).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The VP this channel interrupts now.
    pub fn target_vp(&self) -> u32 {
        self.target_vp.load(Ordering::Acquire)
    }

    /// The GPADL `handle` if the guest created it for this device and has not torn it down.
    pub fn gpadl(&self, handle: u32) -> Option<Arc<MappedGpadl>> {
        self.gpadls.get(handle)
    }

    /// Offer `count` sub-channels of this (primary) channel: each gets its own relid, rings, target
    /// VP and device thread, and [`VmbusDevice::serve`] is called for it when the guest opens it. The
    /// offers reach the guest shortly after this returns (the service's thread sends them).
    pub fn offer_subchannels(&self, count: u16) -> Result<(), ContextError> {
        if self.subchannel_index != 0 {
            return Err(ContextError::NotPrimary);
        }
        if count > MAX_SUBCHANNELS {
            return Err(ContextError::TooMany(count));
        }
        self.requests
            .send(DeviceRequest::OfferSubchannels {
                primary: self.primary,
                count,
            })
            .map_err(|_| ContextError::ServiceGone)
    }
}
