//! The host side of VMBus channel management as a sans-I/O state machine.
//!
//! [`Server`] takes the messages a guest posts with `HvPostMessage` as `(connection_id, bytes)`
//! ([`Server::handle_post`]) plus the host's own requests ([`Server::add_offer`], [`Server::rescind`]),
//! and queues [`ServerAction`]s ([`Server::poll_action`]): messages to write into the guest's SynIC
//! message slot, and notifications for the device layer (channel opened/closed, GPADL ready/gone).
//!
//! The guest is hostile. Every relid, GPADL handle, length and count is validated; a bad message
//! returns a [`ServerError`] for that message only and leaves the server and every other channel as
//! they were. Memory is bounded by [`ServerLimits`]. Where a well-behaved guest would wait forever
//! for an answer to a request it got wrong (GPADL_CREATED, OPENCHANNEL_RESULT), a failure status is
//! sent as well as the error returned.

mod channels;
mod gpadls;

use crate::gpadl::{AssembledGpadl, GpadlAssembler, GpadlError, MAX_SINGLE_RANGE_PFNS};
use crate::protocol::{
    parse_message, ChannelMessage, ChannelOffer, Guid, InitiateContact, Message, MessageBuf,
    MessageType, ProtocolError, Version, VersionResponse, MAX_USER_DEFINED_BYTES, MESSAGE_SINT,
    SUPPORTED_VERSIONS,
};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// Resource bounds a guest cannot push the server past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Channels that may exist at once.
    pub max_channels: usize,
    /// GPADLs whose bodies are still arriving.
    pub max_pending_gpadls: usize,
    /// GPADLs in total (pending and ready).
    pub max_gpadls: usize,
    /// PFNs in one GPADL.
    pub max_gpadl_pfns: usize,
    /// PFNs of all GPADLs together (pending ones count what their header claims).
    pub max_total_pfns: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_channels: 256,
            max_pending_gpadls: 16,
            max_gpadls: 1024,
            max_gpadl_pfns: MAX_SINGLE_RANGE_PFNS,
            max_total_pfns: 1 << 18,
        }
    }
}

/// How the server behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Versions a guest may connect with.
    pub versions: Vec<Version>,
    /// Number of VPs: VP indexes the guest names must be below it.
    pub vp_count: u32,
    /// Channel connection ids default to this plus the relid.
    pub channel_connection_id_base: u32,
    pub limits: ServerLimits,
    /// Page frame numbers of guest RAM. A GPADL naming any page outside these ranges fails
    /// (GPADL_CREATED with an error status) instead of reaching the device layer. Empty: no check
    /// (the host then validates pages when it maps them).
    pub guest_pfns: Vec<core::ops::Range<u64>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            vp_count: 64,
            channel_connection_id_base: 0x1000,
            limits: ServerLimits::default(),
            guest_pfns: Vec::new(),
        }
    }
}

/// A channel for the server to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferConfig {
    /// The offer body (interface and instance GUIDs, flags, user data...).
    pub offer: ChannelOffer,
    /// Connection id the guest signals the channel with; `None` for base + relid.
    pub connection_id: Option<u32>,
}

impl OfferConfig {
    /// A primary channel of interface `if_type`, instance `if_instance`, default connection id.
    pub const fn new(if_type: Guid, if_instance: Guid) -> Self {
        Self {
            offer: ChannelOffer::new(if_type, if_instance),
            connection_id: None,
        }
    }
}

/// Result of a post at the hypercall level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// The hypercall succeeds (status 0), whether or not the message was valid.
    Accepted,
    /// Fail the hypercall with `HV_STATUS_INVALID_CONNECTION_ID` (0x12): the message arrived on a
    /// connection id that is wrong for it (Linux then tries an older version).
    InvalidConnectionId,
}

impl PostOutcome {
    /// The hypercall status to return to the guest.
    pub const fn hv_status(self) -> u16 {
        match self {
            Self::Accepted => crate::protocol::HV_STATUS_SUCCESS,
            Self::InvalidConnectionId => crate::protocol::HV_STATUS_INVALID_CONNECTION_ID,
        }
    }
}

/// What the server asks its host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Deliver `message` to the guest's SynIC message slot `sint` on VP `vp`.
    SendToGuest {
        vp: u32,
        sint: u8,
        message: MessageBuf,
    },
    /// A guest connected.
    Connected {
        version: Version,
        /// VP and SINT messages go to.
        vp: u32,
        sint: u8,
        /// Interrupt page GPA (versions before 5.0 only).
        interrupt_page: Option<u64>,
        monitor_pages: (u64, u64),
    },
    /// A GPADL is complete and mapped for the guest; see [`Server::gpadl`] for its pages.
    GpadlReady { relid: u32, gpadl: u32 },
    /// A GPADL is gone (torn down, or dropped with its channel): stop using its pages.
    GpadlTornDown { relid: u32, gpadl: u32 },
    /// Open the device side of a channel: rings in the GPADL's pages, guest→host ring first and
    /// host→guest ring at `downstream_page_offset`. The guest waits for OPENCHANNEL_RESULT until the
    /// host answers with [`Server::complete_open`].
    OpenChannel {
        relid: u32,
        connection_id: u32,
        gpadl: u32,
        pfns: Vec<u64>,
        downstream_page_offset: u32,
        target_vp: u32,
        user_data: [u8; MAX_USER_DEFINED_BYTES],
    },
    /// Stop the device side of a channel (guest closed it, the host rescinded it, or UNLOAD).
    ChannelClosed { relid: u32 },
    /// Interrupt the guest for `relid` on `target_vp` from now on.
    ModifyChannel { relid: u32, target_vp: u32 },
    /// A rescinded channel is gone; its relid may be reused.
    ChannelReleased { relid: u32 },
    /// The guest disconnected (UNLOAD); every channel is closed and every GPADL gone.
    Unloaded,
}

/// Why a posted message (or a host request) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("malformed message: {0}")]
    Protocol(ProtocolError),
    #[error("GPADL {gpadl:#x}: {error}")]
    Gpadl { gpadl: u32, error: GpadlError },
    #[error("{0} is not a message a guest sends")]
    NotGuestMessage(MessageType),
    #[error("{0} before the guest connected")]
    NotConnected(MessageType),
    #[error("INITIATE_CONTACT while connected")]
    AlreadyConnected,
    #[error("VP index {0} does not exist")]
    BadVp(u32),
    #[error("SINT {0} does not exist")]
    BadSint(u8),
    #[error("VTL {0} is not supported")]
    BadVtl(u8),
    #[error("REQUESTOFFERS sent twice")]
    OffersAlreadyRequested,
    #[error("unknown channel relid {0}")]
    UnknownChannel(u32),
    #[error("channel {0} has not been offered to the guest")]
    NotOffered(u32),
    #[error("channel {0} has been rescinded")]
    ChannelRevoked(u32),
    #[error("channel {0} has not been rescinded")]
    ChannelNotRevoked(u32),
    #[error("channel {0} is already open")]
    AlreadyOpen(u32),
    #[error("channel {0} is not open")]
    NotOpen(u32),
    #[error("unknown GPADL {0:#x}")]
    UnknownGpadl(u32),
    #[error("GPADL handle {0:#x} is already in use")]
    DuplicateGpadl(u32),
    #[error("GPADL {0:#x} is not waiting for bodies")]
    GpadlNotPending(u32),
    #[error("GPADL {0:#x} is not complete")]
    GpadlNotReady(u32),
    #[error("GPADL {gpadl:#x} belongs to channel {owner}, not {relid}")]
    GpadlWrongChannel { gpadl: u32, relid: u32, owner: u32 },
    #[error("GPADL {gpadl:#x} is the ring of open channel {relid}")]
    GpadlInUse { gpadl: u32, relid: u32 },
    #[error("GPADL {0:#x} is not one whole-page range, so it cannot hold rings")]
    NotARingGpadl(u32),
    #[error("downstream page offset {offset} does not split a {pages}-page ring GPADL")]
    BadRingSplit { offset: u32, pages: u64 },
    #[error("{0} needs a newer protocol version")]
    Unsupported(MessageType),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// A GPADL names a page that is not guest RAM.
    #[error("GPADL {gpadl:#x} names page {pfn:#x}, which is not guest RAM")]
    GpadlOutsideRam { gpadl: u32, pfn: u64 },
    #[error("connection id {0:#x} is out of range")]
    BadConnectionId(u32),
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<ProtocolError> for ServerError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Disconnected,
    Connected {
        version: Version,
        msg_conn_id: u32,
        vp: u32,
        sint: u8,
    },
}

/// The open state of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenState {
    pub gpadl: u32,
    pub openid: u32,
    pub downstream_page_offset: u32,
    pub target_vp: u32,
    /// The host answered the open ([`Server::complete_open`]).
    pub answered: bool,
}

/// What the server knows about one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    pub offer: ChannelOffer,
    pub connection_id: u32,
    /// The guest has seen the offer.
    pub offered: bool,
    /// The host rescinded it; waiting for RELID_RELEASED.
    pub revoked: bool,
    pub open: Option<OpenState>,
}

#[derive(Debug)]
enum GpadlSlot {
    Pending(GpadlAssembler),
    Ready(AssembledGpadl),
}

#[derive(Debug)]
struct GpadlEntry {
    relid: u32,
    /// PFNs charged against `max_total_pfns`.
    reserved: usize,
    slot: GpadlSlot,
}

/// The host's VMBus channel server for one guest.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    connection: Connection,
    offers_requested: bool,
    channels: BTreeMap<u32, ChannelInfo>,
    gpadls: BTreeMap<u32, GpadlEntry>,
    reserved_pfns: usize,
    actions: VecDeque<ServerAction>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            connection: Connection::Disconnected,
            offers_requested: false,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            reserved_pfns: 0,
            actions: VecDeque::new(),
        }
    }

    /// Next action for the host, oldest first.
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    /// The negotiated version while a guest is connected.
    pub fn version(&self) -> Option<Version> {
        match self.connection {
            Connection::Connected { version, .. } => Some(version),
            Connection::Disconnected => None,
        }
    }

    /// A channel's state.
    pub fn channel(&self, relid: u32) -> Option<&ChannelInfo> {
        self.channels.get(&relid)
    }

    /// All channels by relid.
    pub fn channels(&self) -> impl Iterator<Item = (u32, &ChannelInfo)> {
        self.channels.iter().map(|(&relid, c)| (relid, c))
    }

    /// A complete GPADL's ranges.
    pub fn gpadl(&self, gpadl: u32) -> Option<&AssembledGpadl> {
        match &self.gpadls.get(&gpadl)?.slot {
            GpadlSlot::Ready(g) => Some(g),
            GpadlSlot::Pending(_) => None,
        }
    }

    /// GPADLs whose bodies are still arriving.
    pub fn pending_gpadls(&self) -> usize {
        self.gpadls
            .values()
            .filter(|g| matches!(g.slot, GpadlSlot::Pending(_)))
            .count()
    }

    /// PFNs currently charged against [`ServerLimits::max_total_pfns`].
    pub fn reserved_pfns(&self) -> usize {
        self.reserved_pfns
    }

    /// Checks the server's internal bookkeeping: every open channel's ring GPADL exists, is ready
    /// and belongs to it; PFN accounting adds up; limits hold. For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let limits = &self.config.limits;
        if self.channels.len() > limits.max_channels {
            return Err("too many channels");
        }
        if self.gpadls.len() > limits.max_gpadls {
            return Err("too many GPADLs");
        }
        if self.pending_gpadls() > limits.max_pending_gpadls {
            return Err("too many pending GPADLs");
        }
        let sum: usize = self.gpadls.values().map(|g| g.reserved).sum();
        if sum != self.reserved_pfns || sum > limits.max_total_pfns {
            return Err("PFN accounting is off");
        }
        for entry in self.gpadls.values() {
            if !self.channels.contains_key(&entry.relid) {
                return Err("GPADL of a channel that does not exist");
            }
        }
        for (&relid, channel) in &self.channels {
            if let Some(open) = channel.open {
                if channel.revoked {
                    return Err("revoked channel still open");
                }
                match self.gpadls.get(&open.gpadl) {
                    Some(GpadlEntry {
                        relid: owner,
                        slot: GpadlSlot::Ready(_),
                        ..
                    }) if *owner == relid => {}
                    _ => return Err("open channel without its ring GPADL"),
                }
            }
        }
        Ok(())
    }

    fn send<T: ChannelMessage>(&mut self, msg: &T) {
        if let Connection::Connected { vp, sint, .. } = self.connection {
            self.actions.push_back(ServerAction::SendToGuest {
                vp,
                sint,
                message: msg.to_message(),
            });
        }
    }

    /// Handles one message the guest posted to `connection_id`.
    ///
    /// `Ok` carries the hypercall status to return. `Err` means the message was refused at the
    /// VMBus level; the hypercall itself still succeeds, and nothing else changed except any
    /// failure answer queued for the guest.
    pub fn handle_post(
        &mut self,
        connection_id: u32,
        bytes: &[u8],
    ) -> Result<PostOutcome, ServerError> {
        let msg = parse_message(bytes)?;
        let msgtype = msg.message_type();
        if !msgtype.is_guest_to_host() {
            return Err(ServerError::NotGuestMessage(msgtype));
        }
        if let Message::InitiateContact(contact) = msg {
            return self.initiate_contact(connection_id, contact);
        }
        let Connection::Connected {
            version,
            msg_conn_id,
            ..
        } = self.connection
        else {
            return Err(ServerError::NotConnected(msgtype));
        };
        if connection_id != msg_conn_id {
            return Ok(PostOutcome::InvalidConnectionId);
        }
        match msg {
            Message::RequestOffers => self.request_offers()?,
            Message::GpadlHeader(h) => self.gpadl_header(&h)?,
            Message::GpadlBody(b) => self.gpadl_body(&b)?,
            Message::GpadlTeardown(m) => self.gpadl_teardown(m.child_relid, m.gpadl)?,
            Message::OpenChannel(m) => self.open_channel(m)?,
            Message::CloseChannel(m) => self.close_channel(m.child_relid)?,
            Message::RelidReleased(m) => self.relid_released(m.child_relid)?,
            Message::ModifyChannel(m) => {
                self.modify_channel(version, m.child_relid, m.target_vp)?
            }
            Message::Unload => self.unload(),
            _ => return Err(ServerError::NotGuestMessage(msgtype)),
        }
        Ok(PostOutcome::Accepted)
    }

    fn initiate_contact(
        &mut self,
        connection_id: u32,
        contact: &InitiateContact,
    ) -> Result<PostOutcome, ServerError> {
        let version = contact.version();
        if connection_id != version.initiate_contact_connection_id() {
            return Ok(PostOutcome::InvalidConnectionId);
        }
        if self.connection != Connection::Disconnected {
            return Err(ServerError::AlreadyConnected);
        }
        let vp = contact.target_vcpu;
        if vp >= self.config.vp_count {
            return Err(ServerError::BadVp(vp));
        }
        let (sint, interrupt_page) = if version.uses_message_sint() {
            if contact.msg_vtl() != 0 {
                return Err(ServerError::BadVtl(contact.msg_vtl()));
            }
            (contact.msg_sint(), None)
        } else {
            (MESSAGE_SINT, Some(contact.interrupt_page_or_sint))
        };
        if sint >= 16 {
            return Err(ServerError::BadSint(sint));
        }
        let supported = self.config.versions.contains(&version);
        let response = if supported {
            VersionResponse::new(true, VersionResponse::CONNECTION_SUCCESSFUL, connection_id)
        } else {
            VersionResponse::new(false, VersionResponse::CONNECTION_SUCCESSFUL, 0)
        };
        if supported {
            self.connection = Connection::Connected {
                version,
                msg_conn_id: connection_id,
                vp,
                sint,
            };
            self.actions.push_back(ServerAction::Connected {
                version,
                vp,
                sint,
                interrupt_page,
                monitor_pages: (contact.monitor_page1, contact.monitor_page2),
            });
            self.send(&response);
        } else {
            // Not connected: answer on the VP and SINT the request named.
            self.actions.push_back(ServerAction::SendToGuest {
                vp,
                sint,
                message: response.to_message(),
            });
        }
        Ok(PostOutcome::Accepted)
    }
}

#[cfg(test)]
mod tests;
