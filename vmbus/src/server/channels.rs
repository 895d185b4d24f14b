//! Channel lifecycle on the host: offers, enumeration, open/close, interrupt retargeting, rescind
//! and relid release, and UNLOAD.

use super::{
    ChannelInfo, Connection, GpadlSlot, OfferConfig, OpenState, Server, ServerAction, ServerError,
};
use crate::gpadl::valid_ring_split;
use crate::protocol::{
    AllOffersDelivered, MessageType, ModifyChannelResponse, OfferChannel, OpenChannel,
    OpenChannelResult, RescindChannelOffer, UnloadResponse, Version, STATUS_INVALID_PARAMETER,
};

/// Highest relid: a relid is a bit number in the 2048-bit SynIC event flags of the SINT.
const MAX_RELID: u32 = 2047;
/// Connection ids are 24 bits in HvSignalEvent.
const MAX_CONNECTION_ID: u32 = 0xFF_FFFF;

impl Server {
    fn offer_message(relid: u32, channel: &ChannelInfo) -> OfferChannel {
        OfferChannel::new(channel.offer, relid, channel.connection_id)
    }

    /// Adds a channel to offer; returns its relid. If the guest has already enumerated offers, the
    /// offer is sent right away.
    pub fn add_offer(&mut self, config: OfferConfig) -> Result<u32, ServerError> {
        if self.channels.len() >= self.config.limits.max_channels {
            return Err(ServerError::Limit("channels"));
        }
        let relid = (1..=MAX_RELID)
            .find(|r| !self.channels.contains_key(r))
            .ok_or(ServerError::Limit("relids"))?;
        let connection_id = match config.connection_id {
            Some(id) => id,
            None => self
                .config
                .channel_connection_id_base
                .checked_add(relid)
                .ok_or(ServerError::BadConnectionId(u32::MAX))?,
        };
        if connection_id == 0 || connection_id > MAX_CONNECTION_ID {
            return Err(ServerError::BadConnectionId(connection_id));
        }
        let live = self.version().is_some() && self.offers_requested;
        let info = ChannelInfo {
            offer: config.offer,
            connection_id,
            offered: live,
            revoked: false,
            open: None,
        };
        if live {
            self.send(&Self::offer_message(relid, &info));
        }
        self.channels.insert(relid, info);
        Ok(relid)
    }

    /// Rescinds an offer. An open channel is closed first. If the guest saw the offer, it gets
    /// RESCIND_CHANNELOFFER and the relid stays reserved until RELID_RELEASED; otherwise the channel
    /// is gone at once.
    pub fn rescind(&mut self, relid: u32) -> Result<(), ServerError> {
        let connected = self.version().is_some();
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        if channel.revoked {
            return Err(ServerError::ChannelRevoked(relid));
        }
        let was_open = channel.open.take().is_some();
        let offered = channel.offered && connected;
        channel.revoked = offered;
        if was_open {
            self.actions
                .push_back(ServerAction::ChannelClosed { relid });
        }
        if offered {
            self.send(&RescindChannelOffer::new(relid));
        } else {
            self.remove_channel(relid);
        }
        Ok(())
    }

    /// Removes a channel and its GPADLs, telling the device layer.
    fn remove_channel(&mut self, relid: u32) {
        self.channels.remove(&relid);
        let gone: alloc::vec::Vec<u32> = self
            .gpadls
            .iter()
            .filter(|(_, g)| g.relid == relid)
            .map(|(&h, _)| h)
            .collect();
        for gpadl in gone {
            self.drop_gpadl(gpadl);
        }
        self.actions
            .push_back(ServerAction::ChannelReleased { relid });
    }

    pub(super) fn request_offers(&mut self) -> Result<(), ServerError> {
        if self.offers_requested {
            return Err(ServerError::OffersAlreadyRequested);
        }
        self.offers_requested = true;
        let mut offers = alloc::vec::Vec::new();
        for (&relid, channel) in self.channels.iter_mut() {
            if !channel.revoked {
                channel.offered = true;
                offers.push(Self::offer_message(relid, channel));
            }
        }
        for offer in &offers {
            self.send(offer);
        }
        self.send(&AllOffersDelivered::new());
        Ok(())
    }

    /// A channel the guest may act on: exists, offered to it, not rescinded.
    fn guest_channel(&self, relid: u32) -> Result<&ChannelInfo, ServerError> {
        let channel = self
            .channels
            .get(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        if !channel.offered {
            return Err(ServerError::NotOffered(relid));
        }
        if channel.revoked {
            return Err(ServerError::ChannelRevoked(relid));
        }
        Ok(channel)
    }

    pub(super) fn open_channel(&mut self, m: &OpenChannel) -> Result<(), ServerError> {
        let relid = m.child_relid;
        let channel = self.guest_channel(relid)?;
        if channel.open.is_some() {
            return Err(ServerError::AlreadyOpen(relid));
        }
        let connection_id = channel.connection_id;
        // From here on the guest is waiting for OPENCHANNEL_RESULT: answer failures too.
        let pfns = match self.validate_open(m) {
            Ok(pfns) => pfns,
            Err(error) => {
                self.send(&OpenChannelResult::new(
                    relid,
                    m.openid,
                    STATUS_INVALID_PARAMETER,
                ));
                return Err(error);
            }
        };
        let open = OpenState {
            gpadl: m.ringbuffer_gpadlhandle,
            openid: m.openid,
            downstream_page_offset: m.downstream_ringbuffer_pageoffset,
            target_vp: m.target_vp,
            answered: false,
        };
        if let Some(channel) = self.channels.get_mut(&relid) {
            channel.open = Some(open);
        }
        self.actions.push_back(ServerAction::OpenChannel {
            relid,
            connection_id,
            gpadl: open.gpadl,
            pfns,
            downstream_page_offset: open.downstream_page_offset,
            target_vp: open.target_vp,
            user_data: m.userdata,
        });
        Ok(())
    }

    /// The host's answer to a [`ServerAction::OpenChannel`]: `status` 0 when the device side runs
    /// (the guest is told the channel is open), anything else when it could not start (the channel
    /// is closed again and the guest gets OPENCHANNEL_RESULT with that status, so it may retry).
    pub fn complete_open(&mut self, relid: u32, status: u32) -> Result<(), ServerError> {
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        let open = channel.open.ok_or(ServerError::NotOpen(relid))?;
        if open.answered {
            return Err(ServerError::AlreadyOpen(relid));
        }
        if status == 0 {
            if let Some(o) = channel.open.as_mut() {
                o.answered = true;
            }
        } else {
            channel.open = None;
        }
        self.send(&OpenChannelResult::new(relid, open.openid, status));
        Ok(())
    }

    /// Checks an OPENCHANNEL's ring GPADL, split and VP; returns the ring pages.
    fn validate_open(&self, m: &OpenChannel) -> Result<alloc::vec::Vec<u64>, ServerError> {
        let (relid, gpadl) = (m.child_relid, m.ringbuffer_gpadlhandle);
        if m.target_vp >= self.config.vp_count {
            return Err(ServerError::BadVp(m.target_vp));
        }
        let entry = self
            .gpadls
            .get(&gpadl)
            .ok_or(ServerError::UnknownGpadl(gpadl))?;
        if entry.relid != relid {
            return Err(ServerError::GpadlWrongChannel {
                gpadl,
                relid,
                owner: entry.relid,
            });
        }
        let GpadlSlot::Ready(ready) = &entry.slot else {
            return Err(ServerError::GpadlNotReady(gpadl));
        };
        let range = ready
            .single_range()
            .filter(|r| r.is_whole_pages())
            .ok_or(ServerError::NotARingGpadl(gpadl))?;
        let pages = range.pfns.len() as u64;
        let offset = m.downstream_ringbuffer_pageoffset;
        if !valid_ring_split(pages, offset) {
            return Err(ServerError::BadRingSplit { offset, pages });
        }
        Ok(range.pfns.clone())
    }

    pub(super) fn close_channel(&mut self, relid: u32) -> Result<(), ServerError> {
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        if channel.open.take().is_none() {
            return Err(ServerError::NotOpen(relid));
        }
        self.actions
            .push_back(ServerAction::ChannelClosed { relid });
        Ok(())
    }

    pub(super) fn relid_released(&mut self, relid: u32) -> Result<(), ServerError> {
        let channel = self
            .channels
            .get(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        if !channel.revoked {
            return Err(ServerError::ChannelNotRevoked(relid));
        }
        self.remove_channel(relid);
        Ok(())
    }

    pub(super) fn modify_channel(
        &mut self,
        version: Version,
        relid: u32,
        target_vp: u32,
    ) -> Result<(), ServerError> {
        if !version.supports_modify_channel() {
            return Err(ServerError::Unsupported(MessageType::MODIFYCHANNEL));
        }
        let vp_count = self.config.vp_count;
        self.guest_channel(relid)?;
        let channel = self
            .channels
            .get_mut(&relid)
            .ok_or(ServerError::UnknownChannel(relid))?;
        let open = channel.open.as_mut().ok_or(ServerError::NotOpen(relid))?;
        let result = if target_vp < vp_count {
            open.target_vp = target_vp;
            self.actions
                .push_back(ServerAction::ModifyChannel { relid, target_vp });
            Ok(())
        } else {
            Err(ServerError::BadVp(target_vp))
        };
        if version.has_modify_channel_response() {
            let status = if result.is_ok() {
                0
            } else {
                STATUS_INVALID_PARAMETER
            };
            self.send(&ModifyChannelResponse::new(relid, status));
        }
        result
    }

    /// UNLOAD: closes every channel, drops every GPADL and rescinded channel, answers, disconnects.
    pub(super) fn unload(&mut self) {
        let relids: alloc::vec::Vec<u32> = self.channels.keys().copied().collect();
        for relid in relids {
            let Some(channel) = self.channels.get_mut(&relid) else {
                continue;
            };
            if channel.open.take().is_some() {
                self.actions
                    .push_back(ServerAction::ChannelClosed { relid });
            }
            channel.offered = false;
            if channel.revoked {
                self.remove_channel(relid);
            }
        }
        let handles: alloc::vec::Vec<u32> = self.gpadls.keys().copied().collect();
        for gpadl in handles {
            self.drop_gpadl(gpadl);
        }
        self.offers_requested = false;
        self.send(&UnloadResponse::new());
        self.connection = Connection::Disconnected;
        self.actions.push_back(ServerAction::Unloaded);
    }
}
