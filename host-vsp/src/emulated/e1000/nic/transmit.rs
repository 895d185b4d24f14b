//! The transmit engine of [`E1000Nic`]: whole frames from TDH to TDT gathered from guest
//! memory into one backend send each, DD written back where RS asks.

use super::*;

impl E1000Nic {
    /// Sends every whole frame between TDH and TDT.
    pub(super) fn transmit(
        &mut self,
        mem: Option<&GuestMemoryMmap>,
        backend: &mut dyn NetBackend,
        now_ns: u64,
    ) {
        if self.failed.is_some() || self.tctl & tctl::EN == 0 {
            return;
        }
        let Some(mem) = mem else { return };
        let ring = match self.tx.check(Ring::Transmit, mem) {
            Ok(Some(ring)) => ring,
            Ok(None) => return,
            Err(failure) => return self.fail(failure),
        };
        let mut reported = false;
        // Every descriptor is looked at once per doorbell at most.
        let mut budget = ring.count;
        while self.tx.head != self.tx.tail && budget > 0 {
            match self.transmit_frame(mem, ring, backend, &mut budget) {
                Ok(Some(rs)) => reported |= rs,
                Ok(None) => break,
                Err(failure) => {
                    self.fail(failure);
                    break;
                }
            }
        }
        let mut causes = if reported { icr::TXDW } else { 0 };
        if budget < ring.count && self.tx.head == self.tx.tail {
            causes |= icr::TXQE;
        }
        self.raise(causes, now_ns);
    }

    /// Sends the frame at TDH if its EOP descriptor is before TDT: `Some(any RS)`, or `None` if
    /// the frame is not complete yet.
    fn transmit_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        ring: CheckedRing,
        backend: &mut dyn NetBackend,
        budget: &mut u32,
    ) -> Result<Option<bool>, Failure> {
        let read_desc = |index: u32| -> Result<TxDescriptor, Failure> {
            let gpa = ring.desc_gpa(index);
            let mut bytes = [0u8; DESCRIPTOR_SIZE];
            guest_memory::read(mem, gpa, &mut bytes).map_err(|_| Failure::RingNotRam {
                ring: Ring::Transmit,
                gpa,
                len: DESC,
            })?;
            Ok(TxDescriptor::read_from_bytes(&bytes).unwrap_or_default())
        };
        // Find the frame's descriptors, each read once: the length check, the gather and the
        // write-back all use this copy, so a guest rewriting a descriptor meanwhile changes
        // nothing the checks saw.
        let mut descs = std::mem::take(&mut self.tx_descs);
        descs.clear();
        let mut index = self.tx.head;
        let mut total = 0usize;
        let mut extended = false;
        let mut complete = false;
        while index != self.tx.tail && (descs.len() as u32) < *budget {
            let d = read_desc(index)?;
            descs.push(d);
            index = (index + 1) % ring.count;
            extended |= d.cmd & tx_cmd::DEXT != 0;
            total = total.saturating_add(usize::from(d.length));
            if d.cmd & tx_cmd::EOP != 0 {
                complete = true;
                break;
            }
        }
        if !complete {
            self.tx_descs = descs;
            return Ok(None);
        }
        *budget -= descs.len() as u32;
        // Gather and send.
        let start = self.tx.head;
        if extended || total == 0 || total > MAX_FRAME_LEN {
            self.stats.tx_dropped_bad_frame += 1;
        } else {
            let mut pad = [0u8; MIN_FRAME_LEN];
            let mut parts: Vec<VolatileSlice<'_>> = Vec::with_capacity(descs.len() + 1);
            for d in &descs {
                let (gpa, len) = (d.buffer_addr, u64::from(d.length));
                guest_memory::for_each_slice(mem, gpa, len, |s| {
                    parts.push(s);
                    Ok::<(), guest_memory::GuestMemoryError>(())
                })
                .map_err(|_| Failure::BufferNotRam {
                    ring: Ring::Transmit,
                    gpa,
                    len,
                })?;
            }
            if self.tctl & tctl::PSP != 0 && total < MIN_FRAME_LEN {
                parts.push(VolatileSlice::from(&mut pad[..MIN_FRAME_LEN - total]));
            }
            match backend.send(&parts) {
                Ok(true) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += crate::net::frame_len(&parts) as u64;
                }
                Ok(false) => self.stats.tx_dropped_backend_full += 1,
                Err(_) => self.stats.tx_backend_errors += 1,
            }
        }
        // Write back DD where asked.
        let mut reported = false;
        let mut i = start;
        for d in &descs {
            if d.cmd & (tx_cmd::RS | tx_cmd::RPS) != 0 {
                let gpa = ring.desc_gpa(i) + TX_STATUS_OFFSET as u64;
                guest_memory::write(mem, gpa, &[d.status | tx_status::DD]).map_err(|_| {
                    Failure::RingNotRam {
                        ring: Ring::Transmit,
                        gpa,
                        len: 1,
                    }
                })?;
                reported = true;
            }
            i = (i + 1) % ring.count;
        }
        self.tx_descs = descs;
        self.tx.head = index;
        Ok(Some(reported))
    }
}
