//! storvsc: the guest side of the Hyper-V synthetic SCSI controller, sans-I/O.
//!
//! [`Storvsc`] builds the packets and consumes the host's answers; the caller moves them over a VMBus
//! channel ([`Request::write_to`] writes one into a `vmbus::ring::RingProducer`, as an in-band packet or
//! as a GPA-direct packet naming the data buffer's physical pages — no copies of data). It runs the
//! init handshake (BEGIN_INIT, QUERY_PROTOCOL_VERSION falling back 0x0602 → 0x0600 → 0x0501,
//! QUERY_PROPERTIES, END_INIT), asks a multi-channel host for sub-channels (CREATE_SUB_CHANNELS, after
//! END_INIT; [`Storvsc::for_sub_channel`] is the driver of one, which carries SRBs only, with the
//! primary's version and properties) and builds SRBs (READ/WRITE(16), SYNCHRONIZE CACHE(16), INQUIRY,
//! READ CAPACITY(16), TEST UNIT READY, or any CDB).
//!
//! Outstanding SRBs live in a fixed table of slots sized at construction (`slots`): a transaction id
//! names a slot and its generation, so completions may come in any order and a stale or forged one
//! is refused. Building, sending and completing a request allocates nothing (the page list is held
//! inline in the [`Request`], `request`). A completion packet becomes a [`Completion`] with every
//! field the host returned and the outcome decoded as Linux's storvsc does (`completion`).

use alloc::boxed::Box;
use alloc::vec::Vec;

use storvsp_protocol::scsi::{opcode, SAI_READ_CAPACITY_16};
use storvsp_protocol::{
    sense_buffer_size, srb_flags, vmscsi_size_delta, ChannelProperties, DataDirection, NtStatus,
    Operation, ProtocolVersion, VmscsiRequest, VstorPacket, CDB_MAX_LEN, LINUX_PROTOCOL_VERSIONS,
    REQUEST_COMPLETION_FLAG, STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, TRANS_ID_INIT, TRANS_ID_RESET,
    VMSCSI_REQUEST_SIZE, VSTOR_PACKET_SIZE,
};
use vmbus::mem::PAGE_SIZE;
use vmbus::packet::{gpa_range_pfn_count, Packet, PacketError, PacketKind, PacketType};
use zerocopy::FromZeros;

mod completion;
mod request;
mod slots;

pub use completion::{Completion, IoError, SenseData};
pub use request::{DataRange, Request, MAX_DATA_PFNS, MAX_INLINE_TRANSFER};
pub use slots::MAX_SLOTS;

use slots::{InFlight, SlotTable};

/// Logical block size of the disks storvsp serves.
pub const BLOCK_SIZE: u32 = 512;
/// `queue_action` Linux uses: a simple tagged request.
const SRB_SIMPLE_TAG_REQUEST: u8 = 0x20;
/// `queue_tag` for untagged requests.
const SP_UNTAGGED: u8 = 0xFF;
/// Outstanding SRBs of [`Storvsc::new`].
pub const DEFAULT_MAX_OUTSTANDING: usize = 256;

/// Errors of the storvsc logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorvscError {
    /// The host's packet is malformed.
    #[error("malformed packet from the host: {0}")]
    Packet(PacketError),
    /// The host's packet is shorter than a vstor packet.
    #[error("vstor packet of {len} bytes from the host is too short")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// A completion for no outstanding request (unknown, stale or forged transaction id).
    #[error("completion for unknown transaction {0:#x}")]
    UnknownTransaction(u64),
    /// Every slot for outstanding requests is in use: complete some, then retry.
    #[error("all {0} request slots are in use")]
    Busy(usize),
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
    /// More sub-channels asked for than the host offers (none unless it is multi-channel).
    #[error("{asked} sub-channels asked for, the host creates at most {max}")]
    TooManySubChannels {
        /// Sub-channels asked for.
        asked: u16,
        /// The host's `max_channel_count` (0 without the multi-channel flag).
        max: u16,
    },
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<PacketError> for StorvscError {
    fn from(e: PacketError) -> Self {
        Self::Packet(e)
    }
}

/// Progress of the handshake after a host answer.
#[derive(Debug, Clone)]
pub enum HandshakeStep {
    /// Send this next (boxed: a [`Request`] holds a page list inline).
    Send(Box<Request>),
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
    /// CREATE_SUB_CHANNELS sent (I/O goes on meanwhile).
    CreateSubChannels,
    Failed,
}

/// The storvsc driver logic for one controller (path 0, target 0).
#[derive(Debug, Clone)]
pub struct Storvsc {
    state: InitState,
    versions: Vec<ProtocolVersion>,
    version: Option<ProtocolVersion>,
    properties: Option<ChannelProperties>,
    outstanding: SlotTable,
}

impl Default for Storvsc {
    fn default() -> Self {
        Self::new()
    }
}

impl Storvsc {
    /// A driver proposing Linux's versions (0x0602, 0x0600, 0x0501), with
    /// [`DEFAULT_MAX_OUTSTANDING`] request slots.
    pub fn new() -> Self {
        Self::with_config(&LINUX_PROTOCOL_VERSIONS, DEFAULT_MAX_OUTSTANDING)
    }

    /// A driver proposing `versions` in order.
    pub fn with_versions(versions: &[ProtocolVersion]) -> Self {
        Self::with_config(versions, DEFAULT_MAX_OUTSTANDING)
    }

    /// A driver proposing Linux's versions with `max_outstanding` request slots.
    pub fn with_capacity(max_outstanding: usize) -> Self {
        Self::with_config(&LINUX_PROTOCOL_VERSIONS, max_outstanding)
    }

    /// A driver proposing `versions` in order, with `max_outstanding` request slots (clamped to
    /// `1..=MAX_SLOTS`), all allocated now: building and completing requests never allocates.
    pub fn with_config(versions: &[ProtocolVersion], max_outstanding: usize) -> Self {
        Self {
            state: InitState::Idle,
            versions: versions.to_vec(),
            version: None,
            properties: None,
            outstanding: SlotTable::new(max_outstanding),
        }
    }

    /// The agreed version once the handshake is done.
    pub fn version(&self) -> Option<ProtocolVersion> {
        matches!(self.state, InitState::Ready | InitState::CreateSubChannels)
            .then_some(self.version)
            .flatten()
    }

    /// Sub-channels the host can create (after QUERY_PROPERTIES): its `max_channel_count` when it
    /// reports the multi-channel flag, else 0.
    pub fn max_sub_channels(&self) -> u16 {
        self.properties
            .filter(|p| p.flags.get() & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL != 0)
            .map_or(0, |p| p.max_channel_count.get())
    }

    /// CREATE_SUB_CHANNELS for `count` sub-channels (after the handshake, on the primary channel); the
    /// host's answer is [`HandshakeStep::Ready`] again, after which it offers them on VMBus.
    pub fn create_sub_channels(&mut self, count: u16) -> Result<Request, StorvscError> {
        if self.state != InitState::Ready {
            return Err(StorvscError::NotReady);
        }
        let max = self.max_sub_channels();
        if count == 0 || count > max {
            return Err(StorvscError::TooManySubChannels { asked: count, max });
        }
        self.state = InitState::CreateSubChannels;
        let mut r = Self::control(Operation::CREATE_SUB_CHANNELS);
        r.packet.set_sub_channel_count(count);
        Ok(r)
    }

    /// The driver of one of this controller's sub-channels: ready from the start with this (ready)
    /// driver's version and properties — a sub-channel has no handshake — and `max_outstanding` slots
    /// of its own. [`StorvscError::NotReady`] before the handshake finished.
    pub fn for_sub_channel(&self, max_outstanding: usize) -> Result<Self, StorvscError> {
        if !matches!(self.state, InitState::Ready | InitState::CreateSubChannels) {
            return Err(StorvscError::NotReady);
        }
        Ok(Self {
            state: InitState::Ready,
            versions: self.versions.clone(),
            version: self.version,
            properties: self.properties,
            outstanding: SlotTable::new(max_outstanding),
        })
    }

    /// Largest transfer of one SRB (after QUERY_PROPERTIES): the host's limit, capped at
    /// [`MAX_INLINE_TRANSFER`] so the page list fits in the [`Request`].
    pub fn max_transfer_bytes(&self) -> Option<u32> {
        self.host_max_transfer_bytes()
            .map(|max| max.min(MAX_INLINE_TRANSFER))
    }

    /// The host's `max_transfer_bytes` (after QUERY_PROPERTIES).
    pub fn host_max_transfer_bytes(&self) -> Option<u32> {
        self.properties.map(|p| p.max_transfer_bytes.get())
    }

    /// SRBs awaiting completion.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Request slots (fixed at construction).
    pub fn capacity(&self) -> usize {
        self.outstanding.capacity()
    }

    /// Forgets a request built but never sent (the ring refused it); returns its tag. `None` if
    /// `trans_id` is not outstanding.
    pub fn cancel(&mut self, trans_id: u64) -> Option<u32> {
        self.outstanding.remove(trans_id).map(|e| e.tag)
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
                false => Ok(HandshakeStep::Send(Box::new(self.query_version(0)))),
            },
            InitState::BeginInit => refuse(&mut self.state, Operation::BEGIN_INIT),
            InitState::QueryVersion(i) if ok => {
                self.version = Some(self.versions[i]);
                self.state = InitState::QueryProperties;
                Ok(HandshakeStep::Send(Box::new(Self::control(
                    Operation::QUERY_PROPERTIES,
                ))))
            }
            // A refused version (any non-zero status): try the next one, as Linux does.
            InitState::QueryVersion(i) if i + 1 < self.versions.len() => {
                Ok(HandshakeStep::Send(Box::new(self.query_version(i + 1))))
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
                Ok(HandshakeStep::Send(Box::new(Self::control(
                    Operation::END_INIT,
                ))))
            }
            InitState::QueryProperties => refuse(&mut self.state, Operation::QUERY_PROPERTIES),
            InitState::EndInit if ok => {
                self.state = InitState::Ready;
                Ok(HandshakeStep::Ready(
                    self.version.unwrap_or(ProtocolVersion::WIN8),
                ))
            }
            InitState::EndInit => refuse(&mut self.state, Operation::END_INIT),
            // A refusal leaves the primary channel working: only the sub-channels are missing.
            InitState::CreateSubChannels => {
                self.state = InitState::Ready;
                if ok {
                    Ok(HandshakeStep::Ready(
                        self.version.unwrap_or(ProtocolVersion::WIN8),
                    ))
                } else {
                    Err(StorvscError::Handshake {
                        operation: Operation::CREATE_SUB_CHANNELS,
                        status,
                    })
                }
            }
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
            id => match self.outstanding.remove(id) {
                Some(entry) => Ok(Event::Completed(completion::decode(id, entry, &vstor))),
                None => Err(StorvscError::UnknownTransaction(id)),
            },
        }
    }

    /// Handles a packet that must be an SRB completion.
    pub fn complete(&mut self, bytes: &[u8]) -> Result<Completion, StorvscError> {
        match self.handle_packet(bytes)? {
            Event::Completed(c) => Ok(c),
            _ => Err(StorvscError::UnexpectedPacket(PacketType::COMPLETION)),
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
        self.scsi_tagged(0, lun, cdb, direction, data)
    }

    /// [`Storvsc::scsi`] with the caller's `tag`, returned in the [`Completion`].
    /// [`StorvscError::Busy`] when every slot is in use.
    pub fn scsi_tagged(
        &mut self,
        tag: u32,
        lun: u8,
        cdb: &[u8],
        direction: DataDirection,
        data: Option<(u32, &[u64], u32)>,
    ) -> Result<Request, StorvscError> {
        if !matches!(self.state, InitState::Ready | InitState::CreateSubChannels) {
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
                // `len <= MAX_INLINE_TRANSFER` and `offset < 4096`, so the pages fit.
                let range = DataRange::new(len, offset, pfns).ok_or(StorvscError::TooLarge {
                    bytes: u64::from(len),
                    max,
                })?;
                Some(range)
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
        let trans_id = self
            .outstanding
            .insert(InFlight {
                tag,
                lun,
                opcode: cdb[0],
                requested: len,
            })
            .ok_or(StorvscError::Busy(self.outstanding.capacity()))?;
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
        self.read_tagged(0, lun, lba, sectors, pfns, offset)
    }

    /// [`Storvsc::read`] with the caller's `tag`.
    pub fn read_tagged(
        &mut self,
        tag: u32,
        lun: u8,
        lba: u64,
        sectors: u32,
        pfns: &[u64],
        offset: u32,
    ) -> Result<Request, StorvscError> {
        let len = Self::block_bytes(sectors)?;
        self.scsi_tagged(
            tag,
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
        self.write_tagged(0, lun, lba, sectors, pfns, offset, fua)
    }

    /// [`Storvsc::write`] with the caller's `tag`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_tagged(
        &mut self,
        tag: u32,
        lun: u8,
        lba: u64,
        sectors: u32,
        pfns: &[u64],
        offset: u32,
        fua: bool,
    ) -> Result<Request, StorvscError> {
        let len = Self::block_bytes(sectors)?;
        self.scsi_tagged(
            tag,
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

#[cfg(test)]
mod completion_tests;
#[cfg(test)]
mod slot_tests;
#[cfg(test)]
mod tests;
