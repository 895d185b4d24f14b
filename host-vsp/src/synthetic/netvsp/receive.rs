//! The receive path of [`NetvspWorker`]: RNDIS answers and indications first, then frames from the
//! backend, each landing straight in a free receive-buffer section (RNDIS PACKET header + frame),
//! several per transfer-page packet when several wait. Sections come back when the guest completes
//! the packet. Without free sections or ring space nothing is taken from the backend (its frames
//! wait, and it drops what it cannot hold); while the guest's filter is 0 frames are taken and
//! dropped.

use netvsp_protocol::nvsp::RndisChannelType;
use netvsp_protocol::rndis::{packet_message_header, PACKET_MESSAGE_HEADER_SIZE};
use netvsp_protocol::transfer_page_header_len;
use vm_memory::VolatileSlice;
use vmbus::mem::RingMemory;
use vmbus::packet::{PacketFlags, TransferPageRange};
use vmbus::ring::RingError;

use super::worker::{NetvspWorker, PollResult};
use crate::net::NetError;
use crate::vmbus_service::GpadlAccessError;

/// Frames one transfer-page packet carries at most.
pub const MAX_FRAMES_PER_PACKET: usize = 32;
/// Frames taken from the backend per poll at most (fairness towards the guest's sends).
const MAX_FRAMES_PER_POLL: usize = 256;

/// What receiving one frame into a section did.
enum Landed {
    Frame(usize),
    Empty,
    Dropped,
    Revoked,
    Failed,
}

impl<M: RingMemory> NetvspWorker<M> {
    /// Whether the backend's fd is worth waiting on: frames can be delivered (or must be dropped).
    pub(super) fn rx_ready(&self) -> bool {
        if self.failed {
            return false;
        }
        if !self.control.delivers_frames() || self.recv.is_none() {
            return true;
        }
        !self.outbound_blocked
            && self.free_receive_sections() > 0
            && self.pending_control.is_empty()
    }

    /// Bytes of a transfer-page packet of `ranges` ranges and its NVSP payload.
    fn packet_len(ranges: usize) -> usize {
        transfer_page_header_len(ranges) + netvsp_protocol::nvsp::NVSP_MESSAGE_SIZE
    }

    /// Whether a packet of `ranges` ranges fits the guest's ring now; if not, the producer has
    /// armed `pending_send_sz` so the guest signals once it has room.
    fn ring_has_room(&mut self, ranges: usize) -> bool {
        let need = Self::packet_len(ranges);
        match self.outbound.writable_len() {
            Ok(n) if n >= need => {
                self.outbound_blocked = false;
                true
            }
            Ok(_) => {
                // Only a refused reservation arms pending_send_sz; it publishes nothing.
                match self.outbound.reserve(need) {
                    // Unfilled and uncommitted: the reservation publishes nothing.
                    Ok(_unused) => {
                        self.outbound_blocked = false;
                        true
                    }
                    Err(RingError::Full { .. }) => {
                        self.stats.ring_full += 1;
                        self.outbound_blocked = true;
                        false
                    }
                    Err(e) => {
                        self.fail("outbound", e);
                        false
                    }
                }
            }
            Err(e) => {
                self.fail("outbound", e);
                false
            }
        }
    }

    pub(super) fn receive(&mut self, r: &mut PollResult) {
        self.send_control(r);
        if self.failed || !self.pending_control.is_empty() {
            return;
        }
        if !self.control.delivers_frames() || self.recv.is_none() {
            return self.drop_waiting_frames();
        }
        let mut taken = 0;
        while taken < MAX_FRAMES_PER_POLL && self.free_receive_sections() > 0 {
            let batch = MAX_FRAMES_PER_PACKET.min(self.free_receive_sections());
            if !self.ring_has_room(1) {
                return;
            }
            let room = self.outbound.writable_len().unwrap_or(0);
            let fits = (1..=batch)
                .rev()
                .find(|&n| Self::packet_len(n) <= room)
                .unwrap_or(1);
            let mut ranges: Vec<TransferPageRange> = Vec::with_capacity(fits);
            let mut sections = Vec::with_capacity(fits);
            let mut done = false;
            while ranges.len() < fits {
                let Some(recv) = self.recv.as_mut() else {
                    return;
                };
                let Some(section) = recv.take() else { break };
                match self.land(section) {
                    Landed::Frame(len) => {
                        let Some(recv) = self.recv.as_ref() else {
                            return;
                        };
                        ranges.push(TransferPageRange {
                            byte_count: (PACKET_MESSAGE_HEADER_SIZE + len) as u32,
                            byte_offset: recv.offset(section) as u32,
                        });
                        sections.push(section);
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += len as u64;
                    }
                    Landed::Dropped => self.give_back(section),
                    Landed::Empty => {
                        self.give_back(section);
                        done = true;
                        break;
                    }
                    Landed::Failed => {
                        self.give_back(section);
                        done = true;
                        break;
                    }
                    Landed::Revoked => return self.lose_receive_buffer(),
                }
            }
            taken += ranges.len();
            if !ranges.is_empty() {
                self.publish(ranges, sections, RndisChannelType::DATA, r);
            }
            if done || self.failed {
                return;
            }
        }
    }

    fn give_back(&mut self, section: u32) {
        if let Some(recv) = &mut self.recv {
            recv.give_back(section);
        }
    }

    /// Writes one transfer-page packet lending `sections`; on failure the sections come back.
    fn publish(
        &mut self,
        ranges: Vec<TransferPageRange>,
        sections: Vec<u32>,
        channel: RndisChannelType,
        r: &mut PollResult,
    ) {
        let Some(id) = self.recv.as_ref().map(|b| b.id) else {
            return;
        };
        let trans_id = self.next_trans_id;
        self.next_trans_id = self.next_trans_id.wrapping_add(1).max(1);
        let msg = Self::transfer_message(channel);
        match self.outbound.write_transfer_pages(
            trans_id,
            PacketFlags::COMPLETION_REQUESTED,
            id,
            false,
            &ranges,
            &[msg.as_wire()],
        ) {
            Ok(written) => {
                r.signal_guest |= written.signal;
                r.progressed = true;
                self.stats.rx_packets += 1;
                self.in_flight.insert(trans_id, sections);
            }
            Err(e) => {
                // Room was checked first; a full ring here means the guest moved its read index
                // backwards: the frames are lost, the sections come back.
                for s in sections {
                    self.give_back(s);
                }
                self.stats.rx_errors += ranges.len() as u64;
                if let RingError::Full { .. } = e {
                    self.stats.ring_full += 1;
                    self.outbound_blocked = true;
                } else {
                    self.fail("outbound", e);
                }
            }
        }
    }

    /// Receives one frame from the backend into `section` and writes its RNDIS header.
    fn land(&mut self, section: u32) -> Landed {
        let Some(recv) = self.recv.as_ref() else {
            return Landed::Revoked;
        };
        let buffer = recv.buffer.clone();
        let offset = recv.offset(section);
        let room = u64::from(recv.sub_allocation_size) - PACKET_MESSAGE_HEADER_SIZE as u64;
        let backend = &mut self.backend;
        let scratch = &mut self.scratch;
        let mut got: Option<Result<Option<usize>, NetError>> = None;
        let mut bounced = false;
        let access = buffer.with_slices(
            offset + PACKET_MESSAGE_HEADER_SIZE as u64,
            room,
            &mut |it| {
                let first = it.next();
                match (first, it.next()) {
                    // The section lies in one guest page piece: the frame lands straight in it.
                    (Some(slice), None) => got = Some(backend.recv(&slice)),
                    // It straddles pages: receive into host memory, copy below.
                    _ => {
                        let n = (room as usize).min(scratch.len());
                        got = Some(backend.recv(&VolatileSlice::from(&mut scratch[..n])));
                        bounced = true;
                    }
                }
            },
        );
        match access {
            Err(GpadlAccessError::Revoked(_)) => return Landed::Revoked,
            Err(_) => return Landed::Failed,
            Ok(()) => {}
        }
        let len = match got {
            Some(Ok(Some(len))) => len,
            Some(Ok(None)) | None => return Landed::Empty,
            Some(Err(NetError::FrameTooLarge { .. })) => {
                self.stats.rx_dropped_too_large += 1;
                return Landed::Dropped;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "netvsp: backend receive failed");
                self.stats.rx_errors += 1;
                return Landed::Failed;
            }
        };
        let header = packet_message_header(len as u32, 0);
        let mut result = buffer.write(offset, &header);
        if bounced && result.is_ok() {
            result = buffer.write(
                offset + PACKET_MESSAGE_HEADER_SIZE as u64,
                &self.scratch[..len],
            );
        }
        match result {
            Ok(()) => Landed::Frame(len),
            Err(GpadlAccessError::Revoked(_)) => Landed::Revoked,
            Err(_) => {
                self.stats.rx_errors += 1;
                Landed::Failed
            }
        }
    }

    /// While frames cannot be delivered, take them from the backend and drop them.
    fn drop_waiting_frames(&mut self) {
        for _ in 0..MAX_FRAMES_PER_POLL {
            let n = self.scratch.len();
            match self
                .backend
                .recv(&VolatileSlice::from(&mut self.scratch[..n]))
            {
                Ok(Some(_)) | Err(NetError::FrameTooLarge { .. }) => {
                    if self.recv.is_none() {
                        self.stats.rx_dropped_no_buffer += 1;
                    } else {
                        self.stats.rx_dropped_filtered += 1;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    self.stats.rx_errors += 1;
                    return;
                }
            }
        }
    }

    /// Delivers waiting RNDIS answers and indications, one per section and packet.
    fn send_control(&mut self, r: &mut PollResult) {
        while let Some(len) = self.pending_control.front().map(Vec::len) {
            let Some(recv) = self.recv.as_mut() else {
                self.stats.control_dropped += self.pending_control.len() as u64;
                self.pending_control.clear();
                return;
            };
            if len > recv.sub_allocation_size as usize {
                self.stats.control_dropped += 1;
                self.pending_control.pop_front();
                continue;
            }
            if recv.free() == 0 || !self.ring_has_room(1) {
                return;
            }
            let Some(recv) = self.recv.as_mut() else {
                return;
            };
            let Some(section) = recv.take() else { return };
            let offset = recv.offset(section);
            let buffer = recv.buffer.clone();
            let written = match self.pending_control.front() {
                Some(message) => buffer.write(offset, message),
                None => return,
            };
            match written {
                Ok(()) => {}
                Err(GpadlAccessError::Revoked(_)) => return self.lose_receive_buffer(),
                Err(_) => {
                    self.give_back(section);
                    self.stats.control_dropped += 1;
                    self.pending_control.pop_front();
                    continue;
                }
            }
            self.pending_control.pop_front();
            let range = TransferPageRange {
                byte_count: len as u32,
                byte_offset: offset as u32,
            };
            self.publish(vec![range], vec![section], RndisChannelType::CONTROL, r);
            if self.failed || self.outbound_blocked {
                return;
            }
        }
    }
}
