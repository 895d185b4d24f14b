//! A packet storvsc sends: the vstor packet, its transaction id and, for an SRB with data, the data
//! buffer's page list held inline (at most [`MAX_DATA_PFNS`] pages), so building and sending a
//! request never allocates and a [`Request`] owns everything it needs until it is written.
#![forbid(unsafe_code)]

use storvsp_protocol::VstorPacket;
use vmbus::mem::{RingMemory, PAGE_SIZE};
use vmbus::packet::{GpaRangeSpec, PacketFlags};
use vmbus::ring::{RingError, RingProducer, Written};

/// Pages one SRB's buffer may span: 512 KiB of data starting anywhere in its first page.
/// [`super::Storvsc::max_transfer_bytes`] is capped so every accepted transfer fits.
pub const MAX_DATA_PFNS: usize = 129;

/// Largest transfer whose pages fit [`MAX_DATA_PFNS`] at any offset.
pub const MAX_INLINE_TRANSFER: u32 = ((MAX_DATA_PFNS - 1) * PAGE_SIZE) as u32;

/// A data buffer by physical pages: `byte_count` bytes starting `byte_offset` bytes into the first
/// page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRange {
    /// Bytes.
    pub byte_count: u32,
    /// Offset in the first page (< 4096).
    pub byte_offset: u32,
    pfns: [u64; MAX_DATA_PFNS],
    pages: u8,
}

impl DataRange {
    /// A range over `pfns`; `None` if there are more than [`MAX_DATA_PFNS`] of them (the caller
    /// checks that they match `byte_count` and `byte_offset`).
    pub fn new(byte_count: u32, byte_offset: u32, pfns: &[u64]) -> Option<Self> {
        let mut inline = [0u64; MAX_DATA_PFNS];
        inline.get_mut(..pfns.len())?.copy_from_slice(pfns);
        Some(Self {
            byte_count,
            byte_offset,
            pfns: inline,
            pages: u8::try_from(pfns.len()).ok()?,
        })
    }

    /// Page numbers, exactly `ceil((offset + len) / 4096)`.
    pub fn pfns(&self) -> &[u64] {
        &self.pfns[..usize::from(self.pages)]
    }
}

/// A packet to send: in-band (no data) or GPA-direct (with [`DataRange`]).
#[derive(Debug, Clone)]
pub struct Request {
    /// Transaction id; the completion carries it.
    pub trans_id: u64,
    /// The vstor packet (payload of the VMBus packet).
    pub packet: VstorPacket,
    /// The data buffer, if any.
    pub data: Option<DataRange>,
}

impl Request {
    /// The VMBus packet payload.
    pub fn payload(&self) -> &[u8] {
        self.packet.as_wire()
    }

    /// Every storvsc request asks for a completion.
    pub fn flags(&self) -> PacketFlags {
        PacketFlags::COMPLETION_REQUESTED
    }

    /// The GPA range for `RingProducer::write_gpa_direct`, if the request has data.
    pub fn range(&self) -> Option<GpaRangeSpec<'_>> {
        self.data.as_ref().map(|d| GpaRangeSpec {
            byte_count: d.byte_count,
            byte_offset: d.byte_offset,
            pfns: d.pfns(),
        })
    }

    /// Writes the request into the guest→host ring.
    pub fn write_to<M: RingMemory>(
        &self,
        ring: &mut RingProducer<M>,
    ) -> Result<Written, RingError> {
        match self.range() {
            Some(range) => {
                ring.write_gpa_direct(self.trans_id, self.flags(), &[range], &[self.payload()])
            }
            None => ring.write_inband(self.trans_id, self.flags(), &[self.payload()]),
        }
    }
}
