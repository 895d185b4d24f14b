//! The guest's VMBus client: drives `vmbus`'s sans-I/O [`Client`] over the enlightenments —
//! HvPostMessage for channel messages, the SynIC message slot for the host's answers (EOM only when
//! the hypervisor flagged more pending) — and opens channels whose two rings live in pages of ours
//! described to the host by a GPADL.
//!
//! Signalling follows the ring rules and is batched: a [`Channel`] remembers whether any write of the
//! current batch needed a signal and [`Channel::flush`] issues at most one HvSignalEvent for it, so a
//! burst of K packets costs one guest→host signal. Reading drains in batches with interrupts masked.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use vmbus::client::{Client, ClientAction, ClientConfig, ClientError};
use vmbus::gpadl::GpaRange;
use vmbus::mem::ContiguousMemory;
use vmbus::packet::PacketFlags;
use vmbus::protocol::{
    Guid, MessageType, OfferChannel, Version, CHANNEL_MESSAGE_TYPE, MESSAGE_SINT,
};
use vmbus::ring::{
    initialize_control_page, Drained, PacketInfo, RingConsumer, RingError, RingProducer, Written,
};

use crate::hv::detect::{self, DetectError};
use crate::hv::hypercall::{EventSignal, HypercallError, Hypercalls};
use crate::hv::synic::{EventFlags, Synic, SynicError};
use crate::platform::{DmaRegion, Platform, PAGE_SIZE};

/// Ring feature bit: the pending-send-size protocol is supported.
const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// Why the VMBus client failed.
#[derive(Debug, thiserror::Error)]
pub enum VmbusError {
    #[error("enlightenments unavailable: {0}")]
    Detect(DetectError),
    #[error("hypercall: {0}")]
    Hypercall(HypercallError),
    #[error("SynIC: {0}")]
    Synic(SynicError),
    #[error("VMBus protocol: {0}")]
    Protocol(ClientError),
    #[error("ring: {0}")]
    Ring(RingError),
    #[error("the host refused every VMBus version")]
    ConnectFailed,
    #[error("the host answered {what} with status {status:#x}")]
    HostRefused { what: &'static str, status: u32 },
    #[error("no offer with relid {0}")]
    NoSuchOffer(u32),
    #[error("out of memory for channel rings")]
    NoMemory,
    #[error("channel {0} was rescinded")]
    Rescinded(u32),
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<DetectError> for VmbusError {
    fn from(e: DetectError) -> Self {
        Self::Detect(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<HypercallError> for VmbusError {
    fn from(e: HypercallError) -> Self {
        Self::Hypercall(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<SynicError> for VmbusError {
    fn from(e: SynicError) -> Self {
        Self::Synic(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<ClientError> for VmbusError {
    fn from(e: ClientError) -> Self {
        Self::Protocol(e)
    }
}

// The detail is part of the message, so it is not also a `source` (no error repeats its cause).
impl From<RingError> for VmbusError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// Counters of the connection (every one a mode transition or a message).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// HvPostMessage hypercalls issued.
    pub posts: u64,
    /// Posts the hypervisor failed (e.g. 0x12 during version fallback).
    pub post_failures: u64,
    /// Channel messages received through the SynIC.
    pub messages: u64,
    /// Host messages the client refused (malformed or unexpected).
    pub bad_messages: u64,
    /// Times the guest slept waiting for an interrupt.
    pub waits: u64,
}

/// A connection to the host's VMBus.
pub struct VmbusConnection<'p, P: Platform> {
    platform: &'p P,
    hypercalls: Hypercalls,
    synic: Synic,
    client: Client,
    events: VecDeque<ClientAction>,
    offers: Vec<OfferChannel>,
    version: Option<Version>,
    /// Counters.
    pub stats: ConnectionStats,
}

impl<P: Platform> core::fmt::Debug for VmbusConnection<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmbusConnection")
            .field("version", &self.version)
            .field("offers", &self.offers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'p, P: Platform> VmbusConnection<'p, P> {
    /// Detect Hyper-V, enable the hypercall page and the SynIC (VMBus SINT on `vector`).
    /// `versions` empty means every version this client knows.
    pub fn new(platform: &'p P, versions: &[Version], vector: u8) -> Result<Self, VmbusError> {
        detect::detect(platform)?;
        let hypercalls = Hypercalls::enable(platform)?;
        let synic = Synic::enable(platform, MESSAGE_SINT, vector)?;
        let mut config = ClientConfig::default();
        if !versions.is_empty() {
            config.versions = versions.to_vec();
        }
        Ok(Self {
            platform,
            hypercalls,
            synic,
            client: Client::new(config),
            events: VecDeque::new(),
            offers: Vec::new(),
            version: None,
            stats: ConnectionStats::default(),
        })
    }

    /// The hypercall page (channels signal through it).
    pub fn hypercalls(&self) -> &Hypercalls {
        &self.hypercalls
    }

    /// The SynIC (channels take their event flags from it).
    pub fn synic(&self) -> &Synic {
        &self.synic
    }

    /// The negotiated version.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Connection id channel messages are posted to.
    pub fn message_connection_id(&self) -> Option<u32> {
        self.client.message_connection_id()
    }

    /// The protocol state machine (for requests this wrapper does not cover).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The offers received so far.
    pub fn offers(&self) -> &[OfferChannel] {
        &self.offers
    }

    /// SynIC EOM writes so far.
    pub fn eoms(&self) -> u64 {
        self.synic.eoms
    }

    /// Negotiate a version (newest first, falling back as the host refuses).
    pub fn connect(&mut self) -> Result<Version, VmbusError> {
        self.client.connect()?;
        match self.wait_for(|a| {
            matches!(
                a,
                ClientAction::Connected { .. } | ClientAction::ConnectFailed
            )
        })? {
            ClientAction::Connected { version, .. } => {
                self.version = Some(version);
                Ok(version)
            }
            _ => Err(VmbusError::ConnectFailed),
        }
    }

    /// Ask for the offers and collect them until ALLOFFERS_DELIVERED.
    pub fn request_offers(&mut self) -> Result<&[OfferChannel], VmbusError> {
        self.client.request_offers()?;
        self.wait_for(|a| matches!(a, ClientAction::OffersComplete))?;
        Ok(&self.offers)
    }

    /// The first live (not rescinded) primary offer of interface `if_type`.
    pub fn find_offer(&self, if_type: Guid) -> Option<OfferChannel> {
        self.primary_offers(if_type).into_iter().next()
    }

    /// Every live primary offer of interface `if_type` (sub-channels excluded), by relid.
    pub fn primary_offers(&self, if_type: Guid) -> Vec<OfferChannel> {
        let mut offers: Vec<OfferChannel> = self
            .offers
            .iter()
            .copied()
            .filter(|o| {
                let offer = o.offer;
                offer.if_type == if_type
                    && offer.sub_channel_index == 0
                    && !self.client.is_revoked(o.child_relid)
            })
            .collect();
        offers.sort_by_key(|o| o.child_relid);
        offers
    }

    /// Every live sub-channel offer of the device instance `instance`, by sub-channel index.
    pub fn subchannel_offers(&self, instance: Guid) -> Vec<OfferChannel> {
        let mut offers: Vec<OfferChannel> = self
            .offers
            .iter()
            .copied()
            .filter(|o| {
                let offer = o.offer;
                offer.if_instance == instance
                    && offer.sub_channel_index != 0
                    && !self.client.is_revoked(o.child_relid)
            })
            .collect();
        offers.sort_by_key(|o| {
            let offer = o.offer;
            offer.sub_channel_index
        });
        offers
    }

    /// Wait (sleeping between interrupts) until `done` holds for the offers received so far —
    /// offers the host makes at run time (hot-add) arrive meanwhile.
    pub fn wait_for_offers(
        &mut self,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), VmbusError> {
        loop {
            self.pump()?;
            if done(self) {
                return Ok(());
            }
            let seen = self.platform.interrupt_total();
            if !self.receive() {
                self.stats.waits += 1;
                self.platform.wait_for_interrupt(seen);
            }
        }
    }

    /// Wait until the host rescinds a channel; returns its relid. Stop using the channel, close it
    /// ([`VmbusConnection::close_channel`] sends no message for a rescinded channel), then
    /// [`VmbusConnection::release_channel`].
    pub fn wait_for_rescind(&mut self) -> Result<u32, VmbusError> {
        match self.wait_for(|a| matches!(a, ClientAction::OfferRescinded { .. }))? {
            ClientAction::OfferRescinded { relid } => Ok(relid),
            _ => Err(unreachable_action()),
        }
    }

    /// Tell the host we let go of the rescinded channel `relid` (RELID_RELEASED): the host may
    /// reuse the relid for a later offer.
    pub fn release_channel(&mut self, relid: u32) -> Result<(), VmbusError> {
        self.client.release_channel(relid)?;
        self.offers.retain(|o| o.child_relid != relid);
        self.pump()
    }

    /// Open `relid` with a guest→host ring of `send_pages` and a host→guest ring of `recv_pages`
    /// (each including its control page), interrupting VP 0.
    pub fn open_channel(
        &mut self,
        relid: u32,
        send_pages: usize,
        recv_pages: usize,
    ) -> Result<Channel, VmbusError> {
        self.open_channel_on(relid, send_pages, recv_pages, 0)
    }

    /// [`VmbusConnection::open_channel`] with the host's interrupts for the channel sent to
    /// `target_vp` (OPENCHANNEL's target VP): its event flag is then set in that VP's SynIC.
    pub fn open_channel_on(
        &mut self,
        relid: u32,
        send_pages: usize,
        recv_pages: usize,
        target_vp: u32,
    ) -> Result<Channel, VmbusError> {
        let offer = *self
            .offers
            .iter()
            .find(|o| o.child_relid == relid)
            .ok_or(VmbusError::NoSuchOffer(relid))?;
        let region = self
            .platform
            .alloc_dma(send_pages + recv_pages)
            .ok_or(VmbusError::NoMemory)?;
        let result = self.open_on(region, offer, send_pages, target_vp);
        match result {
            Ok(channel) => Ok(channel),
            Err((region, e)) => {
                self.platform.free_dma(region);
                Err(e)
            }
        }
    }

    fn open_on(
        &mut self,
        region: DmaRegion,
        offer: OfferChannel,
        send_pages: usize,
        target_vp: u32,
    ) -> Result<Channel, (DmaRegion, VmbusError)> {
        let relid = offer.child_relid;
        let send_len = send_pages * PAGE_SIZE;
        // SAFETY: the region is ours (zeroed, page-aligned, identity-mapped) for as long as the
        // channel holds it; the host shares it only through atomic ring accesses. The two halves do
        // not overlap.
        let (send, recv) = unsafe {
            (
                ContiguousMemory::new(region.va, send_len),
                ContiguousMemory::new(region.va.add(send_len), region.len - send_len),
            )
        };
        let setup = (|| {
            initialize_control_page(&send, FEATURE_PENDING_SEND_SIZE)?;
            initialize_control_page(&recv, FEATURE_PENDING_SEND_SIZE)?;
            Ok::<_, VmbusError>((RingProducer::new(send)?, RingConsumer::new(recv)?))
        })();
        let (outbound, inbound) = match setup {
            Ok(rings) => rings,
            Err(e) => return Err((region, e)),
        };
        let pfns: Vec<u64> = region.pfns().collect();
        let opened = (|| {
            let range = GpaRange::whole_pages(&pfns).map_err(ClientError::from)?;
            let gpadl = self.client.create_gpadl(relid, range)?;
            match self.wait_for(
                |a| matches!(a, ClientAction::GpadlCreated { gpadl: g, .. } if *g == gpadl),
            )? {
                ClientAction::GpadlCreated { status: 0, .. } => {}
                ClientAction::GpadlCreated { status, .. } => {
                    return Err(VmbusError::HostRefused {
                        what: "GPADL_HEADER",
                        status,
                    })
                }
                _ => return Err(unreachable_action()),
            }
            self.client
                .open_channel(relid, gpadl, send_pages as u32, target_vp, &[])?;
            match self.wait_for(
                |a| matches!(a, ClientAction::ChannelOpened { relid: r, .. } if *r == relid),
            )? {
                ClientAction::ChannelOpened { status: 0, .. } => Ok(gpadl),
                ClientAction::ChannelOpened { status, .. } => Err(VmbusError::HostRefused {
                    what: "OPENCHANNEL",
                    status,
                }),
                _ => Err(unreachable_action()),
            }
        })();
        match opened {
            Ok(gpadl) => Ok(Channel {
                relid,
                connection_id: offer.connection_id,
                gpadl,
                outbound,
                inbound,
                region,
                signal_pending: false,
                stats: ChannelStats::default(),
            }),
            Err(e) => Err((region, e)),
        }
    }

    /// Post every message the client queued; hand other actions to `events`.
    fn pump(&mut self) -> Result<(), VmbusError> {
        while let Some(action) = self.client.poll_action() {
            match action {
                ClientAction::PostMessage {
                    connection_id,
                    message,
                } => {
                    self.stats.posts += 1;
                    let result = self.hypercalls.post_message(
                        connection_id,
                        CHANNEL_MESSAGE_TYPE,
                        message.as_bytes(),
                    );
                    if let Err(HypercallError::Status(status)) = result {
                        self.stats.post_failures += 1;
                        let msgtype: MessageType = message.message_type();
                        // Version fallback is handled inside; other failures surface as errors.
                        if let Err(e) = self.client.handle_post_failure(msgtype, status) {
                            if msgtype != MessageType::INITIATE_CONTACT {
                                return Err(e.into());
                            }
                        }
                    } else {
                        result?;
                    }
                }
                ClientAction::Offer(offer) => {
                    self.offers.retain(|o| o.child_relid != offer.child_relid);
                    self.offers.push(offer);
                }
                other => self.events.push_back(other),
            }
        }
        Ok(())
    }

    /// Take one pending host message into the client. Returns whether there was one.
    fn receive(&mut self) -> bool {
        let Some(message) = self.synic.take_message(self.platform, MESSAGE_SINT) else {
            return false;
        };
        self.stats.messages += 1;
        if message.message_type == CHANNEL_MESSAGE_TYPE
            && self.client.handle_message(message.payload()).is_ok()
        {
            return true;
        }
        self.stats.bad_messages += 1;
        true
    }

    /// Process messages until an action matching `want` arrives; sleeps between interrupts.
    pub fn wait_for(
        &mut self,
        mut want: impl FnMut(&ClientAction) -> bool,
    ) -> Result<ClientAction, VmbusError> {
        loop {
            self.pump()?;
            if let Some(i) = self.events.iter().position(&mut want) {
                return self.events.remove(i).ok_or_else(unreachable_action);
            }
            let seen = self.platform.interrupt_total();
            if !self.receive() {
                self.stats.waits += 1;
                self.platform.wait_for_interrupt(seen);
            }
        }
    }

    /// Move an open channel's interrupts to `target_vp` (MODIFYCHANNEL, VMBus 4.1+). From 5.3 on the
    /// host answers (MODIFYCHANNEL_RESPONSE) and this waits for it; before, the move takes effect once
    /// the host has read the message.
    pub fn modify_channel(&mut self, relid: u32, target_vp: u32) -> Result<(), VmbusError> {
        self.client.modify_channel(relid, target_vp)?;
        let answered = self
            .version
            .is_some_and(|v| v.has_modify_channel_response());
        if !answered {
            return self.pump();
        }
        match self.wait_for(
            |a| matches!(a, ClientAction::ChannelModified { relid: r, .. } if *r == relid),
        )? {
            ClientAction::ChannelModified { status: 0, .. } => Ok(()),
            ClientAction::ChannelModified { status, .. } => Err(VmbusError::HostRefused {
                what: "MODIFYCHANNEL",
                status,
            }),
            _ => Err(unreachable_action()),
        }
    }

    /// Close an open channel (CLOSECHANNEL), tear down its ring GPADL and take the pages back once
    /// the host confirms it let go of them.
    pub fn close_channel(&mut self, channel: Channel) -> Result<(), VmbusError> {
        let Channel {
            relid,
            gpadl,
            region,
            ..
        } = channel;
        self.client.close_channel(relid)?;
        self.client.teardown_gpadl(gpadl)?;
        self.wait_for(
            |a| matches!(a, ClientAction::GpadlTornDown { gpadl: g, .. } if *g == gpadl),
        )?;
        // The host no longer maps the pages (our ring views went with `channel`): free them.
        self.platform.free_dma(region);
        Ok(())
    }

    /// Handle any channel messages that arrived (offers, rescinds...) without waiting.
    pub fn poll_messages(&mut self) -> Result<(), VmbusError> {
        while self.receive() {}
        self.pump()
    }

    /// Whether the host rescinded `relid`.
    pub fn is_rescinded(&self, relid: u32) -> bool {
        self.client.is_revoked(relid)
    }
}

fn unreachable_action() -> VmbusError {
    VmbusError::Protocol(ClientError::NotConnected)
}

/// Counters of one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    /// Packets written to the host.
    pub sent: u64,
    /// Packets read from the host.
    pub received: u64,
    /// HvSignalEvent calls made (each a guest→host notification).
    pub signals: u64,
    /// Writes refused because the outbound ring was full.
    pub full: u64,
}

/// An open channel: our outbound (guest→host) ring and inbound (host→guest) ring.
#[derive(Debug)]
pub struct Channel {
    /// The channel's relid (also its event flag number).
    pub relid: u32,
    /// Connection id we signal the host with.
    pub connection_id: u32,
    /// The ring GPADL.
    pub gpadl: u32,
    outbound: RingProducer<ContiguousMemory<'static>>,
    inbound: RingConsumer<ContiguousMemory<'static>>,
    region: DmaRegion,
    signal_pending: bool,
    /// Counters.
    pub stats: ChannelStats,
}

impl Channel {
    /// Guest physical address of the ring pages (the guest→host ring, then the host→guest ring: one
    /// contiguous region, the pages of the ring GPADL).
    pub fn ring_gpa(&self) -> u64 {
        self.region.pa
    }

    /// Queue an in-band packet; the signal it may need is deferred to [`Channel::flush`].
    pub fn write_inband(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        let written = self.outbound.write_inband(trans_id, flags, payload);
        self.account(written)
    }

    /// Queue the completion of the host's packet `trans_id`; signal deferred to [`Channel::flush`].
    pub fn write_completion(&mut self, trans_id: u64, payload: &[&[u8]]) -> Result<(), RingError> {
        let written = self.outbound.write_completion(trans_id, payload);
        self.account(written)
    }

    /// Queue a GPA-direct packet (data buffers by page number); signal deferred to [`Channel::flush`].
    pub fn write_gpa_direct(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        ranges: &[vmbus::packet::GpaRangeSpec<'_>],
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        let written = self
            .outbound
            .write_gpa_direct(trans_id, flags, ranges, payload);
        self.account(written)
    }

    /// Count a write and remember whether the host must be signalled at the next flush.
    fn account(&mut self, written: Result<Written, RingError>) -> Result<(), RingError> {
        match written {
            Ok(written) => {
                self.signal_pending |= written.signal;
                self.stats.sent += 1;
                Ok(())
            }
            Err(e) => {
                if matches!(e, RingError::Full { .. }) {
                    self.stats.full += 1;
                }
                Err(e)
            }
        }
    }

    /// Signal the host once if any packet since the last flush needed it. Returns whether it did.
    pub fn flush(&mut self, hypercalls: &impl EventSignal) -> Result<bool, HypercallError> {
        if !core::mem::take(&mut self.signal_pending) {
            return Ok(false);
        }
        self.stats.signals += 1;
        hypercalls.signal_event(self.connection_id, 0)?;
        Ok(true)
    }

    /// Bytes of packet (descriptor, headers and payload; before padding and trailer) that could be
    /// written right now, so a caller can check before committing to a request.
    pub fn writable_len(&mut self) -> Result<usize, RingError> {
        self.outbound.writable_len()
    }

    /// Whether the host has written packets we have not read.
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        Ok(self.inbound.available()? > 0)
    }

    /// Consume this channel's event flag through a detached [`EventFlags`] handle.
    pub fn take_event_from(&self, flags: &EventFlags) -> bool {
        flags.take(MESSAGE_SINT, self.relid)
    }

    /// Drain up to `limit` packets from the host (interrupts masked meanwhile); a reader-side signal
    /// (the host was waiting for ring space) is queued for the next [`Channel::flush`].
    pub fn drain(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        f: impl FnMut(&PacketInfo, &[u8]),
    ) -> Result<Drained, RingError> {
        let drained = self.inbound.drain(buf, limit, f)?;
        self.stats.received += drained.packets as u64;
        self.signal_pending |= drained.signal;
        Ok(drained)
    }

    /// Like [`Channel::drain`] but leaves the host's interrupts suppressed (interrupt_mask set), for
    /// a driver that polls while requests are outstanding; [`Channel::rearm`] lets them through
    /// again. `more` says the limit was reached.
    pub fn drain_polling(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        mut f: impl FnMut(&PacketInfo, &[u8]),
    ) -> Result<Drained, RingError> {
        self.inbound.mask_interrupts();
        let mut packets = 0;
        while packets < limit {
            let Some(info) = self.inbound.read_packet_deferred(buf)? else {
                break;
            };
            f(&info, &buf[..info.len]);
            packets += 1;
        }
        let signal = self.inbound.commit()?;
        self.stats.received += packets as u64;
        self.signal_pending |= signal;
        Ok(Drained {
            packets,
            signal,
            more: packets == limit,
        })
    }

    /// Ask the host not to interrupt us for packets it writes from now on (interrupt_mask), until
    /// [`Channel::rearm`] or a plain [`Channel::drain`].
    pub fn suppress_interrupts(&mut self) {
        self.inbound.mask_interrupts();
    }

    /// Let the host interrupt us again after polling; returns whether packets arrived meanwhile.
    pub fn rearm(&mut self) -> Result<bool, RingError> {
        self.inbound.unmask_interrupts()
    }

    /// Consume this channel's event flag (set by the host when it signals us).
    pub fn take_event(&self, synic: &Synic) -> bool {
        synic.take_event(MESSAGE_SINT, self.relid)
    }
}
