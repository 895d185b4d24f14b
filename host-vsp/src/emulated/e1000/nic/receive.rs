//! The receive engine of [`E1000Nic`]: the receive filter, frames from the backend into the
//! staging buffer (FCS added unless SECRC), and stored across descriptors from RDH.

use std::sync::atomic::{fence, Ordering};

use super::*;

impl E1000Nic {
    /// Whether the receive filter passes a frame with this destination.
    pub(super) fn accepts(&self, frame: &[u8]) -> bool {
        let Some(dest) = frame.first_chunk::<6>() else {
            return false;
        };
        let exact = self.ra.chunks_exact(2).any(|pair| {
            let (low, high) = (pair[0], pair[1]);
            high & RAH_AV != 0
                && low.to_le_bytes() == dest[..4]
                && (high as u16).to_le_bytes() == dest[4..]
        });
        if dest[0] & 1 == 0 {
            return exact || self.rctl & rctl::UPE != 0;
        }
        if *dest == [0xFF; 6] && self.rctl & rctl::BAM != 0 {
            return true;
        }
        let hash = multicast_hash(dest, (self.rctl & rctl::MO_MASK) >> rctl::MO_SHIFT);
        let in_table = self.mta[usize::from(hash >> 5)] & (1 << (hash & 31)) != 0;
        exact || in_table || self.rctl & rctl::MPE != 0
    }

    /// One receive pass: frames from `backend` into the guest's buffers, at most [`RX_BATCH`].
    pub fn receive(
        &mut self,
        mem: Option<&GuestMemoryMmap>,
        backend: &mut dyn NetBackend,
        now_ns: u64,
    ) -> RxPass {
        let mut pass = RxPass::default();
        if self.failed.is_some() {
            return pass;
        }
        let (Some(mem), true) = (mem, self.rctl & rctl::EN != 0) else {
            // The receiver is off: frames that arrive are lost, as on the wire.
            self.staged = None;
            pass.want_rx = true;
            for _ in 0..RX_BATCH {
                match backend.recv(&VolatileSlice::from(&mut self.staging[..])) {
                    Ok(Some(_)) | Err(NetError::FrameTooLarge { .. }) => {
                        self.stats.rx_dropped_disabled += 1;
                    }
                    Ok(None) => return pass,
                    Err(_) => {
                        self.stats.rx_backend_errors += 1;
                        return pass;
                    }
                }
            }
            pass.more = true;
            return pass;
        };
        let ring = match self.rx.check(Ring::Receive, mem) {
            Ok(ring) => ring,
            Err(failure) => {
                self.fail(failure);
                return pass;
            }
        };
        for _ in 0..RX_BATCH {
            let (len, raw) = match self.staged {
                Some(staged) => staged,
                None => match self.take_frame(backend) {
                    Some(staged) => staged,
                    None => {
                        pass.want_rx = true;
                        break;
                    }
                },
            };
            self.staged = Some((len, raw));
            let size = rctl::buffer_size(self.rctl);
            let needed = len.div_ceil(size) as u32;
            let available = ring.map_or(0, |r| self.rx.available(r.count));
            let Some(ring) = ring.filter(|_| available >= needed) else {
                if !self.rx_starved {
                    self.rx_starved = true;
                    self.stats.rx_stalls += 1;
                    self.icr |= icr::RXO;
                }
                break;
            };
            if let Err(failure) = self.store(mem, ring, len, size) {
                self.fail(failure);
                break;
            }
            self.staged = None;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += raw as u64;
            pass.stored += 1;
        }
        pass.more = pass.stored == RX_BATCH;
        if pass.more {
            pass.want_rx = true;
        }
        if pass.stored > 0 {
            self.icr |= icr::RXT0;
        }
        self.update_interrupt(now_ns);
        pass
    }

    /// The next frame the filter passes, into `staging` with its FCS unless SECRC: its length
    /// with and without the FCS.
    fn take_frame(&mut self, backend: &mut dyn NetBackend) -> Option<(usize, usize)> {
        loop {
            let frame = &mut self.staging[..MAX_FRAME_LEN];
            match backend.recv(&VolatileSlice::from(frame)) {
                Ok(Some(len)) => {
                    let frame = &self.staging[..len];
                    if len < ETHERNET_HEADER_LEN || !self.accepts(frame) {
                        self.stats.rx_filtered += 1;
                        continue;
                    }
                    if self.rctl & rctl::SECRC != 0 {
                        return Some((len, len));
                    }
                    let fcs = crc32fast::hash(frame).to_le_bytes();
                    self.staging[len..len + FCS_LEN].copy_from_slice(&fcs);
                    return Some((len + FCS_LEN, len));
                }
                Ok(None) => return None,
                Err(NetError::FrameTooLarge { .. }) => self.stats.rx_too_large += 1,
                Err(_) => {
                    self.stats.rx_backend_errors += 1;
                    return None;
                }
            }
        }
    }

    /// Stores the staged `len` bytes across descriptors from RDH, `size` bytes per buffer.
    fn store(
        &mut self,
        mem: &GuestMemoryMmap,
        ring: CheckedRing,
        len: usize,
        size: usize,
    ) -> Result<(), Failure> {
        let mut at = 0;
        while at < len {
            let gpa = ring.desc_gpa(self.rx.head);
            let mut addr = [0u8; 8];
            guest_memory::read(mem, gpa, &mut addr).map_err(|_| Failure::RingNotRam {
                ring: Ring::Receive,
                gpa,
                len: DESC,
            })?;
            let buffer = u64::from_le_bytes(addr);
            let chunk = (len - at).min(size);
            let part = &self.staging[at..at + chunk];
            guest_memory::write(mem, buffer, part).map_err(|_| Failure::BufferNotRam {
                ring: Ring::Receive,
                gpa: buffer,
                len: chunk as u64,
            })?;
            at += chunk;
            let last = at == len;
            // Length and checksum, then errors and special, then (last, after a fence) status.
            let mut fields = [0u8; 4];
            fields[..2].copy_from_slice(&(chunk as u16).to_le_bytes());
            let ring_err = |_| Failure::RingNotRam {
                ring: Ring::Receive,
                gpa,
                len: DESC,
            };
            guest_memory::write(mem, gpa + 8, &fields).map_err(ring_err)?;
            guest_memory::write(mem, gpa + 13, &[0, 0, 0]).map_err(ring_err)?;
            fence(Ordering::Release);
            let eop = if last { rx_status::EOP } else { 0 };
            let status = rx_status::DD | rx_status::IXSM | eop;
            guest_memory::write(mem, gpa + RX_STATUS_OFFSET as u64, &[status]).map_err(ring_err)?;
            self.rx.head = (self.rx.head + 1) % ring.count;
        }
        Ok(())
    }
}
