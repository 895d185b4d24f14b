//! storvsc: the guest side of the Hyper-V synthetic SCSI controller, sans-I/O.
//!
//! [`Storvsc`] builds the packets and consumes the host's answers; the caller moves them over a VMBus
//! channel ([`Request::write_to`] writes one into a `vmbus::ring::RingProducer`, as an in-band packet or
//! as a GPA-direct packet naming the data buffer's physical pages — no copies of data). It runs the
//! init handshake (BEGIN_INIT, QUERY_PROTOCOL_VERSION falling back 0x0602 → 0x0600 → 0x0501,
//! QUERY_PROPERTIES, END_INIT), builds SRBs (READ/WRITE(16), SYNCHRONIZE CACHE(16), INQUIRY, READ
//! CAPACITY(16), TEST UNIT READY, or any CDB), tracks any number of outstanding requests by
//! transaction id (completions may come in any order) and turns completion packets into typed results:
//! bytes transferred, or the SRB/SCSI status with decoded sense data.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use storvsp_protocol::scsi::{opcode, FixedSense, ScsiStatus, SAI_READ_CAPACITY_16};
use storvsp_protocol::{
    sense_buffer_size, srb_flags, vmscsi_size_delta, ChannelProperties, DataDirection, NtStatus,
    Operation, ProtocolVersion, SrbStatus, VmscsiRequest, VstorPacket, CDB_MAX_LEN,
    LINUX_PROTOCOL_VERSIONS, REQUEST_COMPLETION_FLAG, TRANS_ID_INIT, TRANS_ID_RESET,
    VMSCSI_REQUEST_SIZE, VSTOR_PACKET_SIZE,
};
use vmbus::mem::{RingMemory, PAGE_SIZE};
use vmbus::packet::{
    gpa_range_pfn_count, GpaRangeSpec, Packet, PacketError, PacketFlags, PacketKind, PacketType,
};
use vmbus::ring::{RingError, RingProducer, Written};
use zerocopy::FromZeros;

/// Logical block size of the disks storvsp serves.
pub const BLOCK_SIZE: u32 = 512;
/// `queue_action` Linux uses: a simple tagged request.
const SRB_SIMPLE_TAG_REQUEST: u8 = 0x20;
/// `queue_tag` for untagged requests.
const SP_UNTAGGED: u8 = 0xFF;

/// Errors of the storvsc logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorvscError {
    /// The host's packet is malformed.
    #[error("malformed packet from the host: {0}")]
    Packet(#[from] PacketError),
    /// The host's packet is shorter than a vstor packet.
    #[error("vstor packet of {len} bytes from the host is too short")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// A completion for no outstanding request.
    #[error("completion for unknown transaction {0:#x}")]
    UnknownTransaction(u64),
    /// A packet of a type the host never sends us.
    #[error("unexpected packet type {0:?}")]
    UnexpectedPacket(PacketType),
    /// The host refused a handshake step.
    #[error("host answered {operation:?} with {status:?}")]
    Handshake {
        /// The step.
        operation: Operation,
        /// The status.
        status: NtStatus,
    },
    /// The host refused every protocol version we offered.
    #[error("no common protocol version")]
    NoCommonVersion,
    /// The host reported an unusable max transfer size.
    #[error("host reports max_transfer_bytes {0}, not a non-zero multiple of 4096")]
    BadProperties(u32),
    /// I/O before the handshake finished.
    #[error("the handshake has not finished")]
    NotReady,
    /// A request larger than the host accepts.
    #[error("transfer of {bytes} bytes exceeds the host's {max}")]
    TooLarge {
        /// Bytes asked for.
        bytes: u64,
        /// The host's limit.
        max: u32,
    },
    /// The buffer's page list does not match its offset and length.
    #[error("buffer of {len} bytes at offset {offset} needs {need} pages, {have} given")]
    BadBuffer {
        /// Bytes.
        len: u64,
        /// Offset in the first page.
        offset: u32,
        /// Pages needed.
        need: u64,
        /// Pages given.
        have: usize,
    },
    /// A CDB longer than 16 bytes or empty.
    #[error("CDB of {0} bytes")]
    BadCdb(usize),
}

/// A data buffer by physical pages: `len` bytes starting `offset` bytes into `pfns[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRange {
    /// Bytes.
    pub byte_count: u32,
    /// Offset in the first page (< 4096).
    pub byte_offset: u32,
    /// Page numbers, exactly `ceil((offset + len) / 4096)`.
    pub pfns: Vec<u64>,
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
            pfns: &d.pfns,
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

/// Why an SRB failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// The host refused the request itself (`vstor_packet.status`).
    Status(NtStatus),
    /// The SRB completed with an error.
    Scsi {
        /// SRB status (with flags).
        srb_status: SrbStatus,
        /// SCSI status.
        scsi_status: ScsiStatus,
        /// Decoded sense data when the host returned it.
        sense: Option<FixedSense>,
    },
}

/// A finished SRB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request's transaction id.
    pub trans_id: u64,
    /// The LUN it addressed.
    pub lun: u8,
    /// Its CDB operation code.
    pub opcode: u8,
    /// Bytes transferred, or the error.
    pub result: Result<u32, IoError>,
}

/// Progress of the handshake after a host answer.
#[derive(Debug, Clone)]
pub enum HandshakeStep {
    /// Send this next.
    Send(Request),
    /// Done: the agreed version.
    Ready(ProtocolVersion),
}

/// What a packet from the host was.
#[derive(Debug, Clone)]
pub enum Event {
    /// An answer in the handshake.
    Handshake(HandshakeStep),
    /// An SRB completed.
    Completed(Completion),
    /// The host asked for something on its own (ENUMERATE_BUS, REMOVE_DEVICE).
    HostRequest(Operation),
    /// The host acknowledged a reset.
    ResetDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    Idle,
    BeginInit,
    QueryVersion(usize),
    QueryProperties,
    EndInit,
    Ready,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    lun: u8,
    opcode: u8,
}

/// The storvsc driver logic for one controller (path 0, target 0).
#[derive(Debug, Clone)]
pub struct Storvsc {
    state: InitState,
    versions: Vec<ProtocolVersion>,
    version: Option<ProtocolVersion>,
    properties: Option<ChannelProperties>,
    next_id: u64,
    outstanding: BTreeMap<u64, Outstanding>,
}

impl Default for Storvsc {
    fn default() -> Self {
        Self::new()
    }
}

impl Storvsc {
    /// A driver proposing Linux's versions (0x0602, 0x0600, 0x0501).
    pub fn new() -> Self {
        Self::with_versions(&LINUX_PROTOCOL_VERSIONS)
    }

    /// A driver proposing `versions` in order.
    pub fn with_versions(versions: &[ProtocolVersion]) -> Self {
        Self {
            state: InitState::Idle,
            versions: versions.to_vec(),
            version: None,
            properties: None,
            next_id: 1,
            outstanding: BTreeMap::new(),
        }
    }

    /// The agreed version once the handshake is done.
    pub fn version(&self) -> Option<ProtocolVersion> {
        (self.state == InitState::Ready)
            .then_some(self.version)
            .flatten()
    }

    /// Largest transfer the host accepts (after QUERY_PROPERTIES).
    pub fn max_transfer_bytes(&self) -> Option<u32> {
        self.properties.map(|p| p.max_transfer_bytes.get())
    }

    /// SRBs awaiting completion.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    fn control(operation: Operation) -> Request {
        Request {
            trans_id: TRANS_ID_INIT,
            packet: VstorPacket::new(operation, REQUEST_COMPLETION_FLAG),
            data: None,
        }
    }

    fn query_version(&mut self, index: usize) -> Request {
        self.state = InitState::QueryVersion(index);
        let mut r = Self::control(Operation::QUERY_PROTOCOL_VERSION);
        r.packet.set_version(self.versions[index]);
        r
    }

    /// Starts (or restarts) the handshake: the BEGIN_INIT request.
    pub fn begin_init(&mut self) -> Request {
        self.state = InitState::BeginInit;
        self.version = None;
        self.properties = None;
        Self::control(Operation::BEGIN_INIT)
    }

    /// A RESET_BUS request (acknowledged by [`Event::ResetDone`]).
    pub fn reset_bus(&self) -> Request {
        Request {
            trans_id: TRANS_ID_RESET,
            packet: VstorPacket::new(Operation::RESET_BUS, REQUEST_COMPLETION_FLAG),
            data: None,
        }
    }

    fn handshake(&mut self, reply: &VstorPacket) -> Result<HandshakeStep, StorvscError> {
        let status = reply.status();
        let ok = reply.operation() == Operation::COMPLETE_IO && status == NtStatus::SUCCESS;
        let refuse = |state: &mut InitState, operation| {
            *state = InitState::Failed;
            Err(StorvscError::Handshake { operation, status })
        };
        match self.state {
            InitState::BeginInit if ok => match self.versions.is_empty() {
                true => {
                    self.state = InitState::Failed;
                    Err(StorvscError::NoCommonVersion)
                }
                false => Ok(HandshakeStep::Send(self.query_version(0))),
            },
            InitState::BeginInit => refuse(&mut self.state, Operation::BEGIN_INIT),
            InitState::QueryVersion(i) if ok => {
                self.version = Some(self.versions[i]);
                self.state = InitState::QueryProperties;
                Ok(HandshakeStep::Send(Self::control(
                    Operation::QUERY_PROPERTIES,
                )))
            }
            // A refused version (any non-zero status): try the next one, as Linux does.
            InitState::QueryVersion(i) if i + 1 < self.versions.len() => {
                Ok(HandshakeStep::Send(self.query_version(i + 1)))
            }
            InitState::QueryVersion(_) => {
                self.state = InitState::Failed;
                Err(StorvscError::NoCommonVersion)
            }
            InitState::QueryProperties if ok => {
                let props = reply.properties();
                let max = props.max_transfer_bytes.get();
                if max == 0 || !max.is_multiple_of(PAGE_SIZE as u32) {
                    self.state = InitState::Failed;
                    return Err(StorvscError::BadProperties(max));
                }
                self.properties = Some(props);
                self.state = InitState::EndInit;
                Ok(HandshakeStep::Send(Self::control(Operation::END_INIT)))
            }
            InitState::QueryProperties => refuse(&mut self.state, Operation::QUERY_PROPERTIES),
            InitState::EndInit if ok => {
                self.state = InitState::Ready;
                Ok(HandshakeStep::Ready(
                    self.version.unwrap_or(ProtocolVersion::WIN8),
                ))
            }
            InitState::EndInit => refuse(&mut self.state, Operation::END_INIT),
            InitState::Idle | InitState::Ready | InitState::Failed => {
                Err(StorvscError::UnknownTransaction(TRANS_ID_INIT))
            }
        }
    }

    /// Handles one packet read from the host→guest ring.
    pub fn handle_packet(&mut self, bytes: &[u8]) -> Result<Event, StorvscError> {
        let packet = Packet::parse(bytes)?;
        let trans_id = packet.desc.trans_id;
        let payload = packet.payload;
        if payload.len() < VSTOR_PACKET_SIZE {
            return Err(StorvscError::Truncated { len: payload.len() });
        }
        let vstor = VstorPacket::parse(payload)
            .map_err(|_| StorvscError::Truncated { len: payload.len() })?;
        match packet.kind {
            PacketKind::Completion => {}
            PacketKind::InBand if trans_id == 0 => {
                return match vstor.operation() {
                    op @ (Operation::ENUMERATE_BUS | Operation::REMOVE_DEVICE) => {
                        Ok(Event::HostRequest(op))
                    }
                    _ => Err(StorvscError::UnexpectedPacket(PacketType::INBAND)),
                };
            }
            _ => return Err(StorvscError::UnexpectedPacket(packet.desc.packet_type)),
        }
        match trans_id {
            TRANS_ID_INIT => self.handshake(&vstor).map(Event::Handshake),
            TRANS_ID_RESET => Ok(Event::ResetDone),
            id => {
                let Some(o) = self.outstanding.remove(&id) else {
                    return Err(StorvscError::UnknownTransaction(id));
                };
                Ok(Event::Completed(Completion {
                    trans_id: id,
                    lun: o.lun,
                    opcode: o.opcode,
                    result: decode_result(&vstor),
                }))
            }
        }
    }

    /// Handles a packet that must be an SRB completion.
    pub fn complete(&mut self, bytes: &[u8]) -> Result<Completion, StorvscError> {
        match self.handle_packet(bytes)? {
            Event::Completed(c) => Ok(c),
            _ => Err(StorvscError::UnexpectedPacket(PacketType::COMPLETION)),
        }
    }

    fn allocate_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0 && id < TRANS_ID_RESET && !self.outstanding.contains_key(&id) {
                return id;
            }
        }
    }

    /// An SRB with `cdb` for `lun`; `data` is `(bytes, pfns, offset)` of the buffer.
    pub fn scsi(
        &mut self,
        lun: u8,
        cdb: &[u8],
        direction: DataDirection,
        data: Option<(u32, &[u64], u32)>,
    ) -> Result<Request, StorvscError> {
        if self.state != InitState::Ready {
            return Err(StorvscError::NotReady);
        }
        let version = self.version.unwrap_or(ProtocolVersion::WIN8);
        if cdb.is_empty() || cdb.len() > CDB_MAX_LEN {
            return Err(StorvscError::BadCdb(cdb.len()));
        }
        let range = match data {
            Some((len, pfns, offset)) if len > 0 => {
                let max = self.max_transfer_bytes().unwrap_or(0);
                if len > max {
                    return Err(StorvscError::TooLarge {
                        bytes: u64::from(len),
                        max,
                    });
                }
                let need = gpa_range_pfn_count(len, offset);
                if offset >= PAGE_SIZE as u32 || need != pfns.len() as u64 {
                    return Err(StorvscError::BadBuffer {
                        len: u64::from(len),
                        offset,
                        need,
                        have: pfns.len(),
                    });
                }
                Some(DataRange {
                    byte_count: len,
                    byte_offset: offset,
                    pfns: pfns.to_vec(),
                })
            }
            _ => None,
        };
        let mut srb = VmscsiRequest::new_zeroed();
        srb.length
            .set((VMSCSI_REQUEST_SIZE - vmscsi_size_delta(version)) as u16);
        srb.lun = lun;
        srb.cdb_length = cdb.len() as u8;
        srb.cdb_or_sense[..cdb.len()].copy_from_slice(cdb);
        srb.sense_info_length = sense_buffer_size(version) as u8;
        let len = range.as_ref().map_or(0, |r| r.byte_count);
        srb.data_transfer_length.set(len);
        let mut flags = srb_flags::QUEUE_ACTION_ENABLE | srb_flags::DISABLE_SYNCH_TRANSFER;
        srb.data_in = if len == 0 {
            DataDirection::UNKNOWN.0
        } else {
            flags |= if direction == DataDirection::READ {
                srb_flags::DATA_IN
            } else {
                srb_flags::DATA_OUT
            };
            direction.0
        };
        srb.srb_flags.set(flags);
        srb.queue_tag = SP_UNTAGGED;
        srb.queue_action = SRB_SIMPLE_TAG_REQUEST;
        let mut packet = VstorPacket::new(Operation::EXECUTE_SRB, REQUEST_COMPLETION_FLAG);
        packet.set_srb(&srb);
        let trans_id = self.allocate_id();
        self.outstanding.insert(
            trans_id,
            Outstanding {
                lun,
                opcode: cdb[0],
            },
        );
        Ok(Request {
            trans_id,
            packet,
            data: range,
        })
    }

    fn block_bytes(sectors: u32) -> Result<u32, StorvscError> {
        sectors
            .checked_mul(BLOCK_SIZE)
            .ok_or(StorvscError::TooLarge {
                bytes: u64::from(sectors) * u64::from(BLOCK_SIZE),
                max: u32::MAX,
            })
    }

    /// READ(16) of `sectors` blocks at `lba` into the buffer `pfns` starting `offset` into the first page.
    pub fn read(
        &mut self,
        lun: u8,
        lba: u64,
        sectors: u32,
        pfns: &[u64],
        offset: u32,
    ) -> Result<Request, StorvscError> {
        let len = Self::block_bytes(sectors)?;
        self.scsi(
            lun,
            &rw16(opcode::READ_16, lba, sectors, false),
            DataDirection::READ,
            Some((len, pfns, offset)),
        )
    }

    /// WRITE(16) of `sectors` blocks at `lba` from the buffer; `fua` forces them to stable storage.
    pub fn write(
        &mut self,
        lun: u8,
        lba: u64,
        sectors: u32,
        pfns: &[u64],
        offset: u32,
        fua: bool,
    ) -> Result<Request, StorvscError> {
        let len = Self::block_bytes(sectors)?;
        self.scsi(
            lun,
            &rw16(opcode::WRITE_16, lba, sectors, fua),
            DataDirection::WRITE,
            Some((len, pfns, offset)),
        )
    }

    /// SYNCHRONIZE CACHE(16) of the whole disk.
    pub fn synchronize_cache(&mut self, lun: u8) -> Result<Request, StorvscError> {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode::SYNCHRONIZE_CACHE_16;
        self.scsi(lun, &cdb, DataDirection::UNKNOWN, None)
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&mut self, lun: u8) -> Result<Request, StorvscError> {
        self.scsi(
            lun,
            &[opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0],
            DataDirection::UNKNOWN,
            None,
        )
    }

    /// INQUIRY: standard data (`page = None`) or a VPD page, `alloc` bytes into the buffer.
    pub fn inquiry(
        &mut self,
        lun: u8,
        page: Option<u8>,
        alloc: u16,
        pfns: &[u64],
        offset: u32,
    ) -> Result<Request, StorvscError> {
        let a = alloc.to_be_bytes();
        let cdb = [
            opcode::INQUIRY,
            u8::from(page.is_some()),
            page.unwrap_or(0),
            a[0],
            a[1],
            0,
        ];
        self.scsi(
            lun,
            &cdb,
            DataDirection::READ,
            Some((u32::from(alloc), pfns, offset)),
        )
    }

    /// READ CAPACITY(16): 32 bytes into the buffer (see [`parse_capacity16`]).
    pub fn read_capacity(
        &mut self,
        lun: u8,
        pfns: &[u64],
        offset: u32,
    ) -> Result<Request, StorvscError> {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode::SERVICE_ACTION_IN_16;
        cdb[1] = SAI_READ_CAPACITY_16;
        cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
        self.scsi(lun, &cdb, DataDirection::READ, Some((32, pfns, offset)))
    }
}

/// A READ(16)/WRITE(16) CDB.
fn rw16(op: u8, lba: u64, sectors: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = op;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&sectors.to_be_bytes());
    cdb
}

/// `(blocks, block_size)` from READ CAPACITY(16) data.
pub fn parse_capacity16(data: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let size = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, size))
}

fn decode_result(vstor: &VstorPacket) -> Result<u32, IoError> {
    if vstor.status() != NtStatus::SUCCESS {
        return Err(IoError::Status(vstor.status()));
    }
    let srb = vstor.srb();
    let srb_status = srb.status();
    let scsi_status = ScsiStatus(srb.scsi_status);
    if srb_status.code() == SrbStatus::SUCCESS && scsi_status == ScsiStatus::GOOD {
        return Ok(srb.data_transfer_length.get());
    }
    let sense = srb_status
        .autosense_valid()
        .then(|| FixedSense::parse(srb.sense()))
        .flatten();
    Err(IoError::Scsi {
        srb_status,
        scsi_status,
        sense,
    })
}

#[cfg(test)]
mod tests;
