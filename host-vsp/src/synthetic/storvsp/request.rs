//! Decoding one inbound ring packet into a storvsc request: the [`VstorPacket`] and, for GPA-direct
//! packets, the guest data buffer as a list of guest-physical [`Segment`]s (in storage the worker
//! reuses across requests), and [`DataBuffer`], through which commands reach that buffer: small
//! checked copies for informational data, or the buffer's guest pages pushed into [`IoBuffers`] so
//! the disk backend moves data straight between the disk and guest memory.
//!
//! Every field comes from the guest: ranges are parsed by `vmbus::packet` (offsets inside the first
//! page, PFN counts matching lengths), the total is bounded by `max_transfer_bytes` before any
//! translation, each PFN is translated with overflow checks and each segment is checked to be guest
//! RAM before the request may run, so a request either gets its whole buffer or fails without I/O.

use storvsp_protocol::{ProtocolError, VstorPacket};
use vmbus::packet::{Packet, PacketDescriptor, PacketError, PacketKind, PacketType};
use zerocopy::FromBytes;

use crate::backend::IoBuffers;
use crate::guest_memory::{self, gpa_of_pfn, GuestMemoryError, GuestMemoryMmap, PAGE_SIZE};

/// A guest-physically contiguous piece of a data buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u32,
}

/// Why a packet cannot be served as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The VMBus packet's headers are malformed (ranges, offsets, PFN counts).
    #[error("malformed VMBus packet")]
    Packet(#[from] PacketError),
    /// The vstor packet is too short.
    #[error("malformed vstor packet")]
    Vstor(#[from] ProtocolError),
    /// The data buffer exceeds the largest transfer.
    #[error("data buffer of {bytes} bytes exceeds the {max}-byte transfer limit")]
    TooLarge {
        /// Bytes described.
        bytes: u64,
        /// Limit.
        max: u32,
    },
    /// A page number cannot be an address.
    #[error("page number {pfn:#x} overflows a guest physical address")]
    BadPfn {
        /// The page number.
        pfn: u64,
    },
    /// A buffer page is not guest RAM.
    #[error("a data buffer page is not guest RAM")]
    NotRam(#[from] GuestMemoryError),
}

/// A decoded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Transaction id to echo in the completion.
    pub trans_id: u64,
    /// The vstor packet (zero-extended if the guest sent the pre-Windows 8 size).
    pub packet: VstorPacket,
    /// Bytes of vstor packet the guest sent (payload bytes, including its padding to 8).
    pub packet_len: usize,
    /// Total bytes of the data buffer (its segments, validated against guest memory, are in the
    /// storage [`decode`] was given; none for in-band packets).
    pub data_len: u64,
}

/// What an inbound packet is.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A request to execute and complete.
    Request(Request),
    /// A request that must be completed with an error.
    Malformed {
        /// Its transaction id.
        trans_id: u64,
        /// The vstor packet, if it could be decoded (to echo in the error completion).
        packet: Option<VstorPacket>,
        /// What is wrong.
        error: RequestError,
    },
    /// Not a request (a completion, or a packet type storvsc never sends): dropped.
    Ignored {
        /// Its type.
        packet_type: PacketType,
    },
}

/// Decodes a packet the ring consumer copied out (`bytes` = the packet, `len8 * 8` bytes); the data
/// buffer's segments go to `segments` (cleared first, so its capacity is reused).
pub fn decode(
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    max_transfer: u32,
    segments: &mut Vec<Segment>,
) -> Inbound {
    segments.clear();
    let Ok((desc, _)) = PacketDescriptor::read_from_prefix(bytes) else {
        return Inbound::Ignored {
            packet_type: PacketType::INVALID,
        };
    };
    if desc.packet_type != PacketType::INBAND
        && desc.packet_type != PacketType::DATA_USING_GPA_DIRECT
    {
        return Inbound::Ignored {
            packet_type: desc.packet_type,
        };
    }
    let trans_id = desc.trans_id;
    match decode_request(bytes, mem, max_transfer, segments) {
        Ok(request) => Inbound::Request(request),
        Err((packet, error)) => Inbound::Malformed {
            trans_id,
            packet,
            error,
        },
    }
}

fn decode_request(
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    max_transfer: u32,
    segments: &mut Vec<Segment>,
) -> Result<Request, (Option<VstorPacket>, RequestError)> {
    let packet = Packet::parse(bytes).map_err(|e| (None, e.into()))?;
    let vstor = VstorPacket::parse(packet.payload).map_err(|e| (None, e.into()))?;
    let data_len =
        data_segments(&packet, mem, max_transfer, segments).map_err(|e| (Some(vstor), e))?;
    Ok(Request {
        trans_id: packet.desc.trans_id,
        packet: vstor,
        packet_len: packet.payload.len(),
        data_len,
    })
}

/// The guest buffer of a GPA-direct packet as validated segments (into `segments`); its length.
fn data_segments(
    packet: &Packet<'_>,
    mem: &GuestMemoryMmap,
    max_transfer: u32,
    segments: &mut Vec<Segment>,
) -> Result<u64, RequestError> {
    let mut data_len = 0u64;
    if let PacketKind::GpaDirect(ranges) = packet.kind {
        let total = ranges.total_bytes();
        if total > u64::from(max_transfer) {
            return Err(RequestError::TooLarge {
                bytes: total,
                max: max_transfer,
            });
        }
        for range in ranges.iter() {
            let mut left = u64::from(range.byte_count);
            let mut offset = u64::from(range.byte_offset);
            for pfn in range.pfns.iter().map(|p| p.get()) {
                if left == 0 {
                    break;
                }
                let gpa = gpa_of_pfn(pfn, offset).ok_or(RequestError::BadPfn { pfn })?;
                let len = left.min(PAGE_SIZE - offset);
                push_segment(segments, gpa, len);
                left -= len;
                offset = 0;
            }
        }
        for s in segments.iter() {
            guest_memory::check(mem, s.gpa, u64::from(s.len))?;
        }
        data_len = total;
    }
    Ok(data_len)
}

/// Appends `[gpa, gpa + len)`, merging with the previous segment when contiguous (`len <= 4096`,
/// and merged segments stay below the transfer limit, which fits in `u32`).
fn push_segment(segments: &mut Vec<Segment>, gpa: u64, len: u64) {
    if let Some(last) = segments.last_mut() {
        if last.gpa.checked_add(u64::from(last.len)) == Some(gpa) {
            last.len += len as u32;
            return;
        }
    }
    segments.push(Segment {
        gpa,
        len: len as u32,
    });
}

/// A request's data buffer in guest memory, limited to its first `len` bytes.
#[derive(Clone, Copy)]
pub struct DataBuffer<'a> {
    mem: &'a GuestMemoryMmap,
    segments: &'a [Segment],
    len: u64,
}

impl std::fmt::Debug for DataBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataBuffer")
            .field("segments", &self.segments)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> DataBuffer<'a> {
    /// The first `len` bytes (at most the segments' total) of `segments` in `mem`.
    pub fn new(mem: &'a GuestMemoryMmap, segments: &'a [Segment], len: u64) -> Self {
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        Self {
            mem,
            segments,
            len: len.min(total),
        }
    }

    /// An empty buffer (no data phase).
    pub fn empty(mem: &'a GuestMemoryMmap) -> Self {
        Self {
            mem,
            segments: &[],
            len: 0,
        }
    }

    /// Usable bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` (device → guest) to the start of the buffer; returns the bytes copied
    /// (`min(src.len(), len)`).
    pub fn write_from(&self, src: &[u8]) -> Result<usize, GuestMemoryError> {
        let n = src.len().min(self.len as usize);
        let mut done = 0;
        for s in self.segments {
            if done == n {
                break;
            }
            let k = (s.len as usize).min(n - done);
            guest_memory::write(self.mem, s.gpa, &src[done..done + k])?;
            done += k;
        }
        Ok(done)
    }

    /// Pushes the guest pages of the buffer's first `len` bytes into `bufs`, for a backend to move
    /// data straight between the disk and guest memory. Fails (pushing nothing of the failing
    /// segment) if `len` exceeds the buffer or a segment is not guest RAM.
    pub fn push_to<'b>(&self, bufs: &mut IoBuffers<'b>, len: u64) -> Result<(), GuestMemoryError>
    where
        'a: 'b,
    {
        if len > self.len {
            return Err(GuestMemoryError {
                gpa: self.segments.first().map_or(0, |s| s.gpa),
                len,
            });
        }
        let mut left = len;
        for s in self.segments {
            if left == 0 {
                break;
            }
            let k = u64::from(s.len).min(left);
            bufs.push_guest(self.mem, s.gpa, k)?;
            left -= k;
        }
        Ok(())
    }

    /// Fills `dst` (guest → device) from the start of the buffer; `dst` must not be longer than the
    /// buffer.
    pub fn read_into(&self, dst: &mut [u8]) -> Result<(), GuestMemoryError> {
        if dst.len() as u64 > self.len {
            return Err(GuestMemoryError {
                gpa: self.segments.first().map_or(0, |s| s.gpa),
                len: dst.len() as u64,
            });
        }
        let mut done = 0;
        for s in self.segments {
            if done == dst.len() {
                break;
            }
            let k = (s.len as usize).min(dst.len() - done);
            guest_memory::read(self.mem, s.gpa, &mut dst[done..done + k])?;
            done += k;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storvsp_protocol::{Operation, REQUEST_COMPLETION_FLAG};
    use vm_memory::GuestAddress;
    use vmbus::packet::{build_packet, write_gpa_direct_header, GpaRangeSpec, PacketFlags};

    fn packet(ranges: &[GpaRangeSpec<'_>], payload: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; 4096];
        let n = write_gpa_direct_header(&mut header, ranges).unwrap();
        let mut buf = vec![0u8; 8192];
        let len = build_packet(
            &mut buf,
            PacketType::DATA_USING_GPA_DIRECT,
            PacketFlags::COMPLETION_REQUESTED,
            77,
            &header[..n],
            payload,
        )
        .unwrap();
        buf.truncate(len);
        buf
    }

    fn ram(pages: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), pages * PAGE_SIZE as usize)]).unwrap()
    }

    fn srb() -> VstorPacket {
        VstorPacket::new(Operation::EXECUTE_SRB, REQUEST_COMPLETION_FLAG)
    }

    #[test]
    fn multi_page_unaligned_buffer_becomes_merged_segments() {
        let mem = ram(16);
        // 3 pages: 5, 6 (contiguous) and 9; offset 100, 9000 bytes.
        let pfns = [5, 6, 9];
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 9000,
                byte_offset: 100,
                pfns: &pfns,
            }],
            srb().as_wire(),
        );
        let mut segments = Vec::new();
        let Inbound::Request(r) = decode(&bytes, &mem, 1 << 20, &mut segments) else {
            panic!("not a request")
        };
        assert_eq!(r.trans_id, 77);
        assert_eq!(r.packet.operation(), Operation::EXECUTE_SRB);
        assert_eq!(r.data_len, 9000);
        assert_eq!(
            segments,
            vec![
                Segment {
                    gpa: 5 * 4096 + 100,
                    len: 8192 - 100
                },
                Segment {
                    gpa: 9 * 4096,
                    len: 9000 - (8192 - 100)
                }
            ]
        );
        // Scatter and gather through the buffer.
        let buf = DataBuffer::new(&mem, &segments, r.data_len);
        let src: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf.write_from(&src).unwrap(), 9000);
        let mut back = vec![0u8; 9000];
        buf.read_into(&mut back).unwrap();
        assert_eq!(back, src);
        let mut page9 = [0u8; 4];
        guest_memory::read(&mem, 9 * 4096, &mut page9).unwrap();
        assert_eq!(page9, src[8092..8096]);
        assert!(buf.read_into(&mut vec![0u8; 9001]).is_err());
    }

    #[test]
    fn pages_outside_ram_are_refused() {
        let mem = ram(4);
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 4096,
                byte_offset: 0,
                pfns: &[4],
            }],
            srb().as_wire(),
        );
        assert!(matches!(
            decode(&bytes, &mem, 1 << 20, &mut Vec::new()),
            Inbound::Malformed {
                trans_id: 77,
                error: RequestError::NotRam(_),
                ..
            }
        ));
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 10,
                byte_offset: 4000,
                pfns: &[u64::MAX],
            }],
            srb().as_wire(),
        );
        assert!(matches!(
            decode(&bytes, &mem, 1 << 20, &mut Vec::new()),
            Inbound::Malformed {
                error: RequestError::BadPfn { .. },
                ..
            }
        ));
    }

    #[test]
    fn pages_above_4_gib_are_served_at_their_full_address() {
        const GIB: u64 = 1 << 30;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(4 * GIB), 0x1_0000),
            (GuestAddress(32 * GIB), 0x2000),
        ])
        .unwrap();
        // PFN 2^20 (GPA 4 GiB) and 2^23 + 1 (GPA 32 GiB + 4 KiB), 5000 bytes from offset 96.
        let pfns = [0x10_0000, 0x80_0001];
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 5000,
                byte_offset: 96,
                pfns: &pfns,
            }],
            srb().as_wire(),
        );
        let mut segments = Vec::new();
        let Inbound::Request(r) = decode(&bytes, &mem, 1 << 20, &mut segments) else {
            panic!("not a request")
        };
        assert_eq!(
            segments,
            vec![
                Segment {
                    gpa: 4 * GIB + 96,
                    len: 4096 - 96
                },
                Segment {
                    gpa: 32 * GIB + 4096,
                    len: 5000 - (4096 - 96)
                }
            ]
        );
        let src: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8 + 1).collect();
        let buf = DataBuffer::new(&mem, &segments, r.data_len);
        assert_eq!(buf.write_from(&src).unwrap(), 5000);
        let mut high = vec![0u8; 5000 - (4096 - 96)];
        guest_memory::read(&mem, 32 * GIB + 4096, &mut high).unwrap();
        assert_eq!(high, src[4096 - 96..]);
        let mut back = vec![0u8; 5000];
        buf.read_into(&mut back).unwrap();
        assert_eq!(back, src);
        // Nothing landed at the 32-bit truncations of those addresses.
        let mut low = vec![0u8; 0x1_0000];
        guest_memory::read(&mem, 0, &mut low).unwrap();
        assert!(low.iter().all(|&b| b == 0));
        // A page number that is low RAM once truncated to 32 bits (page 3), and beyond RAM in full.
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 4096,
                byte_offset: 0,
                pfns: &[(1 << 32) + 3],
            }],
            srb().as_wire(),
        );
        assert!(matches!(
            decode(&bytes, &mem, 1 << 20, &mut Vec::new()),
            Inbound::Malformed {
                error: RequestError::NotRam(_),
                ..
            }
        ));
    }

    #[test]
    fn oversized_and_truncated_requests() {
        let mem = ram(4);
        let pfns = [0, 1, 2];
        let bytes = packet(
            &[GpaRangeSpec {
                byte_count: 12288,
                byte_offset: 0,
                pfns: &pfns,
            }],
            srb().as_wire(),
        );
        assert!(matches!(
            decode(&bytes, &mem, 8192, &mut Vec::new()),
            Inbound::Malformed {
                error: RequestError::TooLarge {
                    bytes: 12288,
                    max: 8192
                },
                ..
            }
        ));
        let mut buf = vec![0u8; 64];
        let len = build_packet(
            &mut buf,
            PacketType::INBAND,
            PacketFlags::empty(),
            3,
            &[],
            &[0; 40],
        )
        .unwrap();
        assert!(matches!(
            decode(&buf[..len], &mem, 8192, &mut Vec::new()),
            Inbound::Malformed {
                trans_id: 3,
                error: RequestError::Vstor(_),
                ..
            }
        ));
        let len = build_packet(
            &mut buf,
            PacketType::COMPLETION,
            PacketFlags::empty(),
            3,
            &[],
            &[0; 40],
        )
        .unwrap();
        assert!(matches!(
            decode(&buf[..len], &mem, 8192, &mut Vec::new()),
            Inbound::Ignored {
                packet_type: PacketType::COMPLETION
            }
        ));
    }

    #[test]
    fn pfn_count_disagreeing_with_length_is_malformed() {
        let mem = ram(4);
        // Claims 8192 bytes but carries one PFN: forge the header by hand.
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&8192u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&1u64.to_le_bytes());
        let mut buf = vec![0u8; 256];
        let len = build_packet(
            &mut buf,
            PacketType::DATA_USING_GPA_DIRECT,
            PacketFlags::empty(),
            9,
            &header,
            srb().as_wire(),
        )
        .unwrap();
        // The vstor packet's bytes are misread as the missing PFN's place: the range must not
        // swallow them — either the parser refuses, or RAM validation does.
        match decode(&buf[..len], &mem, 1 << 20, &mut Vec::new()) {
            Inbound::Malformed { trans_id: 9, .. } => {}
            other => panic!("accepted: {other:?}"),
        }
    }
}
