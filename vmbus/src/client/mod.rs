//! The guest side of a VMBus connection as a sans-I/O state machine.
//!
//! [`Client`] owns version negotiation, the offer list, GPADL handles and the per-channel open state.
//! The caller feeds it the channel messages the host delivers ([`Client::handle_message`]) and the
//! failures of its own posts ([`Client::handle_post_failure`]), calls its request methods, and drains
//! [`ClientAction`]s with [`Client::poll_action`]: messages to post with `HvPostMessage`, and events.
//! No threads, no I/O, no hypercalls here. Unexpected or malformed host messages produce
//! [`ClientError`]s and leave the state unchanged.

use crate::gpadl::{valid_ring_split, GpaRange, GpadlError, GpadlMessages};
use crate::protocol::{
    parse_message, user_defined, ChannelMessage, CloseChannel, GpadlTeardown, InitiateContact,
    Message, MessageBuf, MessageType, ModifyChannel, OfferChannel, OpenChannel, ProtocolError,
    RelidReleased, RequestOffers, Unload, Version, HV_STATUS_INVALID_CONNECTION_ID,
    MESSAGE_CONNECTION_ID, MESSAGE_SINT, SUPPORTED_VERSIONS,
};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// How the guest connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Versions to offer; tried newest first whatever the order here.
    pub versions: Vec<Version>,
    /// VP the host should deliver channel messages to.
    pub target_vcpu: u32,
    /// SINT channel messages arrive on (sent from version 5.0 on).
    pub message_sint: u8,
    /// GPA of the interrupt page (sent before version 5.0).
    pub interrupt_page: u64,
    /// GPAs of the two monitor pages.
    pub monitor_pages: (u64, u64),
    /// First GPADL handle to hand out (Linux starts at 0xE1E10).
    pub first_gpadl_handle: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            target_vcpu: 0,
            message_sint: MESSAGE_SINT,
            interrupt_page: 0,
            monitor_pages: (0, 0),
            first_gpadl_handle: 0xE1E10,
        }
    }
}

/// What the client asks its driver to do, or tells it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Post `message` with `HvPostMessage` to `connection_id`; report a failure with
    /// [`Client::handle_post_failure`].
    PostMessage {
        connection_id: u32,
        message: MessageBuf,
    },
    /// The host accepted `version`; later posts go to `message_connection_id`.
    Connected {
        version: Version,
        message_connection_id: u32,
    },
    /// The host refused every configured version.
    ConnectFailed,
    /// The host offered a channel (during enumeration or later).
    Offer(OfferChannel),
    /// ALLOFFERS_DELIVERED: the initial offer list is complete.
    OffersComplete,
    /// GPADL_CREATED arrived; `status` 0 means the host mapped it, anything else that it is gone.
    GpadlCreated { relid: u32, gpadl: u32, status: u32 },
    /// OPENCHANNEL_RESULT arrived; `status` 0 means the channel is open.
    ChannelOpened { relid: u32, status: u32 },
    /// GPADL_TORNDOWN arrived (or the channel was revoked): the pages are the guest's again.
    GpadlTornDown { relid: u32, gpadl: u32 },
    /// The host rescinded an offer. Stop using the channel, then call [`Client::release_channel`].
    OfferRescinded { relid: u32 },
    /// MODIFYCHANNEL_RESPONSE arrived (version 5.3+).
    ChannelModified { relid: u32, status: u32 },
    /// UNLOAD_RESPONSE arrived: every channel and GPADL is gone; [`Client::connect`] may be called again.
    Unloaded,
}

/// Why a host message or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("malformed host message: {0}")]
    Protocol(ProtocolError),
    #[error("GPADL: {0}")]
    Gpadl(GpadlError),
    #[error("{msgtype} is not expected {context}")]
    Unexpected {
        msgtype: MessageType,
        context: &'static str,
    },
    #[error("no versions configured")]
    NoVersions,
    #[error("not connected")]
    NotConnected,
    #[error("already connected or connecting")]
    AlreadyConnected,
    #[error("offers were already requested")]
    OffersAlreadyRequested,
    #[error("unknown channel relid {0}")]
    UnknownChannel(u32),
    #[error("host offered relid {0} twice")]
    DuplicateOffer(u32),
    #[error("channel {0} has been rescinded")]
    ChannelRevoked(u32),
    #[error("channel {0} has not been rescinded")]
    ChannelNotRevoked(u32),
    #[error("channel {relid} is {state}")]
    ChannelState { relid: u32, state: &'static str },
    #[error("unknown GPADL {0:#x}")]
    UnknownGpadl(u32),
    #[error("GPADL {gpadl:#x} is {state}")]
    GpadlState { gpadl: u32, state: &'static str },
    #[error("GPADL {gpadl:#x} belongs to channel {owner}, not {relid}")]
    GpadlWrongChannel { gpadl: u32, relid: u32, owner: u32 },
    #[error("GPADL {gpadl:#x} is the ring of open channel {relid}")]
    GpadlInUse { gpadl: u32, relid: u32 },
    #[error("downstream page offset {offset} does not split a {pages}-page ring GPADL")]
    BadRingSplit { offset: u32, pages: u64 },
    #[error("no free GPADL handle")]
    NoGpadlHandles,
    #[error("{what} needs a newer protocol than {version}")]
    Unsupported {
        what: &'static str,
        version: Version,
    },
    #[error("posting {msgtype} failed with hypercall status {status:#x}")]
    PostFailed { msgtype: MessageType, status: u16 },
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<GpadlError> for ClientError {
    fn from(e: GpadlError) -> Self {
        Self::Gpadl(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Disconnected,
    /// INITIATE_CONTACT for `versions[index]` is outstanding.
    Contacting {
        index: usize,
    },
    Connected {
        version: Version,
        msg_conn_id: u32,
    },
    Unloading,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offers {
    NotRequested,
    Requested,
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Closed,
    Opening { gpadl: u32 },
    Open { gpadl: u32 },
}

#[derive(Debug, Clone)]
struct ChannelRecord {
    offer: OfferChannel,
    state: ChannelState,
    revoked: bool,
    modify_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpadlState {
    Creating,
    Created,
    TearingDown,
}

#[derive(Debug, Clone, Copy)]
struct GpadlRecord {
    relid: u32,
    pages: u64,
    state: GpadlState,
}

/// The guest's VMBus connection state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    connection: Connection,
    offers: Offers,
    channels: BTreeMap<u32, ChannelRecord>,
    gpadls: BTreeMap<u32, GpadlRecord>,
    next_gpadl: u32,
    actions: VecDeque<ClientAction>,
}

impl Client {
    /// A disconnected client; versions are sorted newest first and deduplicated.
    pub fn new(mut config: ClientConfig) -> Self {
        config.versions.sort_unstable_by(|a, b| b.cmp(a));
        config.versions.dedup();
        let next_gpadl = config.first_gpadl_handle.max(1);
        Self {
            config,
            connection: Connection::Disconnected,
            offers: Offers::NotRequested,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            next_gpadl,
            actions: VecDeque::new(),
        }
    }

    /// Next action for the driver, oldest first.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<Version> {
        match self.connection {
            Connection::Connected { version, .. } => Some(version),
            _ => None,
        }
    }

    /// Connection id channel messages are posted to, once connected.
    pub fn message_connection_id(&self) -> Option<u32> {
        match self.connection {
            Connection::Connected { msg_conn_id, .. } => Some(msg_conn_id),
            _ => None,
        }
    }

    /// The offer of a known channel (including rescinded ones not yet released).
    pub fn offer(&self, relid: u32) -> Option<&OfferChannel> {
        self.channels.get(&relid).map(|c| &c.offer)
    }

    /// Offers of all live (not rescinded) channels, by relid.
    pub fn offers(&self) -> impl Iterator<Item = &OfferChannel> {
        self.channels
            .values()
            .filter(|c| !c.revoked)
            .map(|c| &c.offer)
    }

    /// Whether the channel is open (OPENCHANNEL_RESULT reported success).
    pub fn is_open(&self, relid: u32) -> bool {
        matches!(
            self.channels.get(&relid).map(|c| c.state),
            Some(ChannelState::Open { .. })
        )
    }

    /// Whether the host rescinded the channel (and it was not yet released).
    pub fn is_revoked(&self, relid: u32) -> bool {
        self.channels.get(&relid).is_some_and(|c| c.revoked)
    }

    fn post<T: ChannelMessage>(&mut self, connection_id: u32, msg: &T) {
        self.post_buf(connection_id, msg.to_message());
    }

    fn post_buf(&mut self, connection_id: u32, message: MessageBuf) {
        self.actions.push_back(ClientAction::PostMessage {
            connection_id,
            message,
        });
    }

    fn connected(&self) -> Result<(Version, u32), ClientError> {
        match self.connection {
            Connection::Connected {
                version,
                msg_conn_id,
            } => Ok((version, msg_conn_id)),
            _ => Err(ClientError::NotConnected),
        }
    }

    /// Starts version negotiation with the newest configured version.
    pub fn connect(&mut self) -> Result<(), ClientError> {
        if self.connection != Connection::Disconnected {
            return Err(ClientError::AlreadyConnected);
        }
        if self.config.versions.is_empty() {
            return Err(ClientError::NoVersions);
        }
        self.contact(0);
        Ok(())
    }

    /// Sends INITIATE_CONTACT for `versions[index]`, or gives up if there is none.
    fn contact(&mut self, index: usize) {
        let Some(&version) = self.config.versions.get(index) else {
            self.connection = Connection::Disconnected;
            self.actions.push_back(ClientAction::ConnectFailed);
            return;
        };
        self.connection = Connection::Contacting { index };
        let msg = InitiateContact::new(
            version,
            self.config.target_vcpu,
            self.config.message_sint,
            self.config.interrupt_page,
            self.config.monitor_pages,
        );
        self.post(version.initiate_contact_connection_id(), &msg);
    }

    /// Reports that posting a message failed with hypercall `status`. For INITIATE_CONTACT,
    /// `HV_STATUS_INVALID_CONNECTION_ID` means the host does not know this version's connection
    /// id: the next older version is tried. Anything else is returned as an error.
    pub fn handle_post_failure(
        &mut self,
        msgtype: MessageType,
        status: u16,
    ) -> Result<(), ClientError> {
        if let Connection::Contacting { index } = self.connection {
            if msgtype == MessageType::INITIATE_CONTACT {
                if status == HV_STATUS_INVALID_CONNECTION_ID {
                    self.contact(index.saturating_add(1));
                    return Ok(());
                }
                self.connection = Connection::Disconnected;
                self.actions.push_back(ClientAction::ConnectFailed);
            }
        }
        Err(ClientError::PostFailed { msgtype, status })
    }

    /// Asks the host for its offers (REQUESTOFFERS).
    pub fn request_offers(&mut self) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        if self.offers != Offers::NotRequested {
            return Err(ClientError::OffersAlreadyRequested);
        }
        self.offers = Offers::Requested;
        self.post(conn, &RequestOffers::new());
        Ok(())
    }

    fn live_channel(&mut self, relid: u32) -> Result<&mut ChannelRecord, ClientError> {
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if channel.revoked {
            return Err(ClientError::ChannelRevoked(relid));
        }
        Ok(channel)
    }

    fn allocate_gpadl_handle(&mut self) -> Result<u32, ClientError> {
        // Bounded: at most one pass over the handles in use plus one.
        for _ in 0..=self.gpadls.len() {
            let handle = self.next_gpadl;
            self.next_gpadl = self.next_gpadl.checked_add(1).unwrap_or(1);
            if handle != 0 && !self.gpadls.contains_key(&handle) {
                return Ok(handle);
            }
        }
        Err(ClientError::NoGpadlHandles)
    }

    /// Creates a GPADL for `relid` describing `range`: sends GPADL_HEADER and GPADL_BODY messages
    /// and returns the handle. Completion is reported by [`ClientAction::GpadlCreated`].
    pub fn create_gpadl(&mut self, relid: u32, range: GpaRange<'_>) -> Result<u32, ClientError> {
        let (_, conn) = self.connected()?;
        self.live_channel(relid)?;
        let handle = self.allocate_gpadl_handle()?;
        let messages = GpadlMessages::new(relid, handle, range)?;
        for message in messages {
            self.post_buf(conn, message);
        }
        self.gpadls.insert(
            handle,
            GpadlRecord {
                relid,
                pages: range.pfns.len() as u64,
                state: GpadlState::Creating,
            },
        );
        Ok(handle)
    }

    /// Opens `relid` on the ring GPADL `gpadl` whose host→guest ring starts at page
    /// `downstream_page_offset`. Completion is reported by [`ClientAction::ChannelOpened`].
    pub fn open_channel(
        &mut self,
        relid: u32,
        gpadl: u32,
        downstream_page_offset: u32,
        target_vp: u32,
        user_data: &[u8],
    ) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        let userdata = user_defined(user_data)?;
        let record = *self
            .gpadls
            .get(&gpadl)
            .ok_or(ClientError::UnknownGpadl(gpadl))?;
        if record.state != GpadlState::Created {
            return Err(ClientError::GpadlState {
                gpadl,
                state: "not created",
            });
        }
        if record.relid != relid {
            return Err(ClientError::GpadlWrongChannel {
                gpadl,
                relid,
                owner: record.relid,
            });
        }
        if !valid_ring_split(record.pages, downstream_page_offset) {
            return Err(ClientError::BadRingSplit {
                offset: downstream_page_offset,
                pages: record.pages,
            });
        }
        let channel = self.live_channel(relid)?;
        if channel.state != ChannelState::Closed {
            return Err(ClientError::ChannelState {
                relid,
                state: "already open or opening",
            });
        }
        channel.state = ChannelState::Opening { gpadl };
        let msg = OpenChannel::new(
            relid,
            relid,
            gpadl,
            target_vp,
            downstream_page_offset,
            userdata,
        );
        self.post(conn, &msg);
        Ok(())
    }

    /// Closes an open channel (CLOSECHANNEL; the host sends no answer). A rescinded channel is
    /// closed locally without a message, as the host has already let go of it.
    pub fn close_channel(&mut self, relid: u32) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if !matches!(channel.state, ChannelState::Open { .. }) {
            return Err(ClientError::ChannelState {
                relid,
                state: "not open",
            });
        }
        channel.state = ChannelState::Closed;
        if !channel.revoked {
            self.post(conn, &CloseChannel::new(relid));
        }
        Ok(())
    }

    /// Tears down a GPADL no open channel uses. Completion is reported by
    /// [`ClientAction::GpadlTornDown`].
    pub fn teardown_gpadl(&mut self, gpadl: u32) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        let record = *self
            .gpadls
            .get(&gpadl)
            .ok_or(ClientError::UnknownGpadl(gpadl))?;
        if record.state != GpadlState::Created {
            return Err(ClientError::GpadlState {
                gpadl,
                state: "not created",
            });
        }
        let relid = record.relid;
        let channel = self.channels.get(&relid);
        if let Some(ChannelState::Opening { gpadl: g } | ChannelState::Open { gpadl: g }) =
            channel.map(|c| c.state)
        {
            if g == gpadl {
                return Err(ClientError::GpadlInUse { gpadl, relid });
            }
        }
        if channel.is_some_and(|c| c.revoked) {
            self.gpadls.remove(&gpadl);
            self.actions
                .push_back(ClientAction::GpadlTornDown { relid, gpadl });
            return Ok(());
        }
        if let Some(r) = self.gpadls.get_mut(&gpadl) {
            r.state = GpadlState::TearingDown;
        }
        self.post(conn, &GpadlTeardown::new(relid, gpadl));
        Ok(())
    }

    /// After [`ClientAction::OfferRescinded`] and once the driver no longer touches the channel:
    /// forgets it and its GPADLs and tells the host with RELID_RELEASED.
    pub fn release_channel(&mut self, relid: u32) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        let channel = self
            .channels
            .get(&relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if !channel.revoked {
            return Err(ClientError::ChannelNotRevoked(relid));
        }
        self.channels.remove(&relid);
        self.gpadls.retain(|_, g| g.relid != relid);
        self.post(conn, &RelidReleased::new(relid));
        Ok(())
    }

    /// Moves an open channel's interrupts to `target_vp` (MODIFYCHANNEL, version 4.1+).
    pub fn modify_channel(&mut self, relid: u32, target_vp: u32) -> Result<(), ClientError> {
        let (version, conn) = self.connected()?;
        if !version.supports_modify_channel() {
            return Err(ClientError::Unsupported {
                what: "MODIFYCHANNEL",
                version,
            });
        }
        let channel = self.live_channel(relid)?;
        if !matches!(channel.state, ChannelState::Open { .. }) {
            return Err(ClientError::ChannelState {
                relid,
                state: "not open",
            });
        }
        channel.modify_pending = version.has_modify_channel_response();
        self.post(conn, &ModifyChannel::new(relid, target_vp));
        Ok(())
    }

    /// Disconnects (UNLOAD); completion is reported by [`ClientAction::Unloaded`].
    pub fn unload(&mut self) -> Result<(), ClientError> {
        let (_, conn) = self.connected()?;
        self.connection = Connection::Unloading;
        self.post(conn, &Unload::new());
        Ok(())
    }

    /// Handles one channel message delivered by the host.
    pub fn handle_message(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let msg = parse_message(bytes)?;
        let msgtype = msg.message_type();
        let unexpected = |context| ClientError::Unexpected { msgtype, context };
        match msg {
            Message::VersionResponse(resp) => {
                let Connection::Contacting { index } = self.connection else {
                    return Err(unexpected("without INITIATE_CONTACT outstanding"));
                };
                let version = *self
                    .config
                    .versions
                    .get(index)
                    .ok_or(ClientError::NoVersions)?;
                if resp.version_supported == 0 {
                    self.contact(index.saturating_add(1));
                    return Ok(());
                }
                let msg_conn_id = if version.uses_message_sint() {
                    resp.msg_conn_id
                } else {
                    MESSAGE_CONNECTION_ID
                };
                self.connection = Connection::Connected {
                    version,
                    msg_conn_id,
                };
                self.actions.push_back(ClientAction::Connected {
                    version,
                    message_connection_id: msg_conn_id,
                });
            }
            Message::OfferChannel(offer) => {
                self.connected()?;
                if self.offers == Offers::NotRequested {
                    return Err(unexpected("before REQUESTOFFERS"));
                }
                let relid = offer.child_relid;
                if self.channels.contains_key(&relid) {
                    return Err(ClientError::DuplicateOffer(relid));
                }
                self.channels.insert(
                    relid,
                    ChannelRecord {
                        offer: *offer,
                        state: ChannelState::Closed,
                        revoked: false,
                        modify_pending: false,
                    },
                );
                self.actions.push_back(ClientAction::Offer(*offer));
            }
            Message::AllOffersDelivered => {
                self.connected()?;
                if self.offers != Offers::Requested {
                    return Err(unexpected("outside offer enumeration"));
                }
                self.offers = Offers::Complete;
                self.actions.push_back(ClientAction::OffersComplete);
            }
            Message::RescindChannelOffer(m) => {
                self.connected()?;
                let relid = m.child_relid;
                let channel = self.live_channel(relid)?;
                channel.revoked = true;
                channel.modify_pending = false;
                self.actions
                    .push_back(ClientAction::OfferRescinded { relid });
            }
            Message::OpenChannelResult(m) => {
                self.connected()?;
                let (relid, status) = (m.child_relid, m.status);
                let channel = self.live_channel(relid)?;
                let ChannelState::Opening { gpadl } = channel.state else {
                    return Err(unexpected("for a channel that is not opening"));
                };
                if m.openid != relid {
                    return Err(unexpected("with an openid this client did not use"));
                }
                channel.state = if status == 0 {
                    ChannelState::Open { gpadl }
                } else {
                    ChannelState::Closed
                };
                self.actions
                    .push_back(ClientAction::ChannelOpened { relid, status });
            }
            Message::GpadlCreated(m) => {
                self.connected()?;
                let (relid, gpadl, status) = (m.child_relid, m.gpadl, m.creation_status);
                let record = self
                    .gpadls
                    .get_mut(&gpadl)
                    .ok_or(ClientError::UnknownGpadl(gpadl))?;
                if record.state != GpadlState::Creating || record.relid != relid {
                    return Err(unexpected("for a GPADL this channel is not creating"));
                }
                if status == 0 {
                    record.state = GpadlState::Created;
                } else {
                    self.gpadls.remove(&gpadl);
                }
                self.actions.push_back(ClientAction::GpadlCreated {
                    relid,
                    gpadl,
                    status,
                });
            }
            Message::GpadlTorndown(m) => {
                self.connected()?;
                let gpadl = m.gpadl;
                let record = self
                    .gpadls
                    .get(&gpadl)
                    .ok_or(ClientError::UnknownGpadl(gpadl))?;
                if record.state != GpadlState::TearingDown {
                    return Err(unexpected("for a GPADL not being torn down"));
                }
                let relid = record.relid;
                self.gpadls.remove(&gpadl);
                self.actions
                    .push_back(ClientAction::GpadlTornDown { relid, gpadl });
            }
            Message::ModifyChannelResponse(m) => {
                self.connected()?;
                let (relid, status) = (m.child_relid, m.status);
                let channel = self.live_channel(relid)?;
                if !channel.modify_pending {
                    return Err(unexpected("without MODIFYCHANNEL outstanding"));
                }
                channel.modify_pending = false;
                self.actions
                    .push_back(ClientAction::ChannelModified { relid, status });
            }
            Message::UnloadResponse => {
                if !matches!(self.connection, Connection::Unloading) {
                    return Err(unexpected("without UNLOAD outstanding"));
                }
                self.connection = Connection::Disconnected;
                self.offers = Offers::NotRequested;
                self.channels.clear();
                self.gpadls.clear();
                self.actions.push_back(ClientAction::Unloaded);
            }
            Message::RequestOffers
            | Message::OpenChannel(_)
            | Message::CloseChannel(_)
            | Message::GpadlHeader(_)
            | Message::GpadlBody(_)
            | Message::GpadlTeardown(_)
            | Message::RelidReleased(_)
            | Message::InitiateContact(_)
            | Message::Unload
            | Message::ModifyChannel(_) => return Err(unexpected("from the host")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
