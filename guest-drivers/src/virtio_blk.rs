//! The guest side of virtio-blk over virtio-mmio, through the `virtio-drivers` crate: its [`Hal`] implemented
//! over [`Platform`] (DMA = the platform's identity-mapped `alloc_dma` pages, buffers shared by address), an
//! `MmioTransport` over the device's 4 KiB window, and batched I/O that keeps up to a queue's worth of
//! requests in flight (`read_blocks_nb`/`write_blocks_nb`) and reaps completions as they land in the used
//! ring — sleeping in [`Platform::wait_for_interrupt`] between them, or spinning ([`Completion::Poll`]).
//! EVENT_IDX is negotiated when the device offers it (the crate then keeps `used_event` at its last
//! consumed index and honours `avail_event` before notifying).

use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;

use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use zerocopy::FromZeros;

use crate::platform::{DmaRegion, Platform, PAGE_SIZE};

/// A [`Platform`] whose memory is identity mapped, reachable without an instance (virtio-drivers' [`Hal`]
/// is a set of static functions).
///
/// # Safety
/// Implementors guarantee that every address the driver hands to the device — heap, stack, DMA pages —
/// has guest physical address == virtual address, and that the device's MMIO window is mapped at its
/// physical address, uncached or at least without write combining across registers.
pub unsafe trait IdentityMapped: Platform + 'static {
    /// The platform.
    fn platform() -> Self;
}

/// virtio-drivers' [`Hal`] over a [`Platform`].
#[derive(Debug)]
pub struct PlatformHal<P>(PhantomData<P>);

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned pages from `alloc_dma` (or a null
// physical address, which virtio-drivers reports as a DMA error); `share` returns the buffer's own address,
// which `IdentityMapped` guarantees is its physical address; nothing is copied, so `unshare` has nothing to do.
unsafe impl<P: IdentityMapped> Hal for PlatformHal<P> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match P::platform().alloc_dma(pages) {
            Some(region) => (region.pa, region.va),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        P::platform().free_dma(DmaRegion {
            va: vaddr,
            pa: paddr,
            len: pages * PAGE_SIZE,
        });
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// The MMIO window does not hold a usable virtio-mmio device.
    #[error("virtio-mmio transport: {0}")]
    Transport(MmioError),
    /// The device is not a block device.
    #[error("virtio device type {0} is not a block device")]
    NotBlock(u32),
    /// The device or queue reported an error.
    #[error("virtio-blk: {0}")]
    Device(virtio_drivers::Error),
    /// A request completed with a status other than OK.
    #[error("request {index} failed: {status:?}")]
    Request {
        /// Index of the buffer in the batch.
        index: usize,
        /// The status.
        status: RespStatus,
    },
    /// A buffer is not a non-empty multiple of the sector size.
    #[error("buffer of {0} bytes is not whole sectors")]
    BadLength(usize),
}

/// How a batch waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Sleep until the device's interrupt (the platform's halt) when nothing has completed.
    Interrupt,
    /// Spin on the used ring.
    Poll,
}

/// What a batch cost on the guest side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests completed.
    pub requests: usize,
    /// Times the driver slept waiting for an interrupt.
    pub sleeps: u64,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
}

/// A request in flight through the queue API: its header and status live in a box so their addresses
/// stay put while the device owns them.
struct InFlight {
    tag: u32,
    write: bool,
    req: BlkReq,
    resp: BlkResp,
    buf: NonNull<u8>,
    len: usize,
}

/// A virtio-blk disk.
pub struct VirtioBlk<P: IdentityMapped> {
    dev: VirtIOBlk<PlatformHal<P>, MmioTransport<'static>>,
    in_flight: alloc::collections::BTreeMap<u16, alloc::boxed::Box<InFlight>>,
}

impl<P: IdentityMapped> core::fmt::Debug for VirtioBlk<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("capacity", &self.dev.capacity())
            .finish_non_exhaustive()
    }
}

impl<P: IdentityMapped> VirtioBlk<P> {
    /// Initialises the virtio-mmio block device whose window (at least 0x100 + config bytes) is at `gpa`.
    ///
    /// # Safety
    /// `gpa..gpa + size` must be a virtio-mmio device window, identity mapped and used by nothing else
    /// for as long as the returned driver lives.
    pub unsafe fn probe(gpa: u64, size: usize) -> Result<Self, VirtioBlkError> {
        let header = NonNull::new(gpa as *mut VirtIOHeader)
            .ok_or(VirtioBlkError::Transport(MmioError::MmioRegionTooSmall))?;
        // SAFETY: the caller guarantees the window is a virtio-mmio device mapped for the driver's lifetime.
        let transport =
            unsafe { MmioTransport::new(header, size) }.map_err(VirtioBlkError::Transport)?;
        let kind = virtio_drivers::transport::Transport::device_type(&transport);
        if kind != virtio_drivers::transport::DeviceType::Block {
            return Err(VirtioBlkError::NotBlock(kind as u32));
        }
        let dev = VirtIOBlk::new(transport).map_err(VirtioBlkError::Device)?;
        Ok(Self {
            dev,
            in_flight: alloc::collections::BTreeMap::new(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.dev.capacity()
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.dev.readonly()
    }

    /// Requests the queue can hold at once.
    pub fn queue_size(&self) -> usize {
        usize::from(self.dev.virt_queue_size())
    }

    /// The device id string (GET_ID).
    pub fn device_id(&mut self) -> Result<Vec<u8>, VirtioBlkError> {
        let mut id = [0u8; 20];
        let n = self
            .dev
            .device_id(&mut id)
            .map_err(VirtioBlkError::Device)?;
        Ok(id[..n].to_vec())
    }

    /// Reads `buf` from sector `lba`, one request, waiting by spinning.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), VirtioBlkError> {
        check_len(buf.len())?;
        self.dev
            .read_blocks(lba as usize, buf)
            .map_err(VirtioBlkError::Device)
    }

    /// Writes `buf` at sector `lba`, one request, waiting by spinning.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), VirtioBlkError> {
        check_len(buf.len())?;
        self.dev
            .write_blocks(lba as usize, buf)
            .map_err(VirtioBlkError::Device)
    }

    /// FLUSH.
    pub fn flush(&mut self) -> Result<(), VirtioBlkError> {
        self.dev.flush().map_err(VirtioBlkError::Device)
    }

    /// Requests submitted through [`VirtioBlk::submit`] and not yet returned by [`VirtioBlk::poll`].
    pub fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// Queue one request (the queue API: many in flight, completions by [`VirtioBlk::poll`]).
    /// `Err(Device(QueueFull))` when the queue has no room.
    ///
    /// # Safety
    /// `buf..buf + len` must be valid, identity-mapped memory that nothing touches until `poll` returns
    /// this request's `tag`.
    pub unsafe fn submit(
        &mut self,
        tag: u32,
        write: bool,
        lba: u64,
        buf: NonNull<u8>,
        len: usize,
    ) -> Result<(), VirtioBlkError> {
        check_len(len)?;
        let mut entry = alloc::boxed::Box::new(InFlight {
            tag,
            write,
            req: BlkReq::default(),
            resp: BlkResp::new_zeroed(),
            buf,
            len,
        });
        let e = &mut *entry;
        // SAFETY: the caller keeps `buf` valid and untouched until completion; `req`/`resp` live in a box
        // kept in `in_flight` until the token is completed in `poll`, so their addresses are stable.
        let token = unsafe {
            let data = core::slice::from_raw_parts_mut(e.buf.as_ptr(), e.len);
            if write {
                self.dev
                    .write_blocks_nb(lba as usize, &mut e.req, data, &mut e.resp)
            } else {
                self.dev
                    .read_blocks_nb(lba as usize, &mut e.req, data, &mut e.resp)
            }
        }
        .map_err(VirtioBlkError::Device)?;
        self.in_flight.insert(token, entry);
        Ok(())
    }

    /// Collect finished requests (non-blocking): `(tag, result)` appended to `out`.
    pub fn poll(&mut self, out: &mut Vec<(u32, Result<(), VirtioBlkError>)>) -> usize {
        let before = out.len();
        while let Some(token) = self.dev.peek_used() {
            let Some(mut e) = self.in_flight.remove(&token) else {
                // A token we never handed out: the device is broken; stop reaping.
                break;
            };
            // SAFETY: request `token` was submitted with exactly these buffers, still valid (caller
            // contract of `submit`), and it is the next used entry.
            let done = unsafe {
                let data = core::slice::from_raw_parts_mut(e.buf.as_ptr(), e.len);
                if e.write {
                    self.dev
                        .complete_write_blocks(token, &e.req, data, &mut e.resp)
                } else {
                    self.dev
                        .complete_read_blocks(token, &e.req, data, &mut e.resp)
                }
            };
            let result = done.map_err(|_| VirtioBlkError::Request {
                index: 0,
                status: e.resp.status(),
            });
            out.push((e.tag, result));
        }
        out.len() - before
    }

    /// Reads consecutive extents into `bufs` (buffer `i` at `lba` + the sectors of the buffers before it),
    /// as many requests in flight as the queue holds.
    pub fn read_batch(
        &mut self,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        self.batch(false, lba, bufs, wait)
    }

    /// Writes `bufs` to consecutive extents starting at `lba`, as many requests in flight as fit.
    pub fn write_batch(
        &mut self,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        self.batch(true, lba, bufs, wait)
    }

    fn batch(
        &mut self,
        write: bool,
        lba: u64,
        bufs: &mut [Vec<u8>],
        wait: Completion,
    ) -> Result<BatchStats, VirtioBlkError> {
        let n = bufs.len();
        let mut starts = Vec::with_capacity(n);
        let mut at = lba;
        for b in bufs.iter() {
            check_len(b.len())?;
            starts.push(at);
            at += (b.len() / SECTOR_SIZE) as u64;
        }
        let mut reqs: Vec<BlkReq> = (0..n).map(|_| BlkReq::default()).collect();
        let mut resps: Vec<BlkResp> = (0..n).map(|_| BlkResp::new_zeroed()).collect();
        let mut tokens: Vec<Option<u16>> = vec![None; n];
        let platform = P::platform();
        let mut stats = BatchStats::default();
        let (mut next, mut in_flight) = (0, 0);
        let mut failed = None;
        // On a failed request, stop submitting but reap everything in flight: the device may still be
        // writing into those buffers.
        while in_flight > 0 || (failed.is_none() && stats.requests < n) {
            while next < n && failed.is_none() {
                let sector = starts[next] as usize;
                // SAFETY: `reqs[next]`, `bufs[next]` and `resps[next]` are not touched again until this
                // request's token shows up in the used ring and is completed below with the same buffers;
                // none of the vectors is resized while requests are in flight.
                let submitted = unsafe {
                    if write {
                        self.dev.write_blocks_nb(
                            sector,
                            &mut reqs[next],
                            &bufs[next],
                            &mut resps[next],
                        )
                    } else {
                        self.dev.read_blocks_nb(
                            sector,
                            &mut reqs[next],
                            &mut bufs[next],
                            &mut resps[next],
                        )
                    }
                };
                match submitted {
                    Ok(token) => {
                        tokens[next] = Some(token);
                        next += 1;
                        in_flight += 1;
                        stats.max_in_flight = stats.max_in_flight.max(in_flight);
                    }
                    Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => break,
                    Err(e) => {
                        failed = Some(VirtioBlkError::Device(e));
                        break;
                    }
                }
            }
            let seen = platform.interrupt_total();
            let mut reaped = false;
            while let Some(token) = self.dev.peek_used() {
                let i = tokens
                    .iter()
                    .position(|t| *t == Some(token))
                    .ok_or(VirtioBlkError::Device(virtio_drivers::Error::WrongToken))?;
                // SAFETY: request `i` was submitted with exactly these buffers and its token is the next
                // used entry.
                let done = unsafe {
                    if write {
                        self.dev
                            .complete_write_blocks(token, &reqs[i], &bufs[i], &mut resps[i])
                    } else {
                        self.dev
                            .complete_read_blocks(token, &reqs[i], &mut bufs[i], &mut resps[i])
                    }
                };
                tokens[i] = None;
                in_flight -= 1;
                stats.requests += 1;
                reaped = true;
                if done.is_err() && failed.is_none() {
                    failed = Some(VirtioBlkError::Request {
                        index: i,
                        status: resps[i].status(),
                    });
                }
            }
            if !reaped && in_flight > 0 {
                match wait {
                    Completion::Interrupt => {
                        platform.wait_for_interrupt(seen);
                        stats.sleeps += 1;
                    }
                    Completion::Poll => core::hint::spin_loop(),
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

impl VirtioBlkError {
    /// The queue had no room for the request (retry after completions were polled).
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Self::Device(virtio_drivers::Error::QueueFull))
    }
}

fn check_len(len: usize) -> Result<(), VirtioBlkError> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(VirtioBlkError::BadLength(len));
    }
    Ok(())
}
