//! GPADL lifecycle on the host: assembling header and bodies within the limits, answering
//! GPADL_CREATED, and teardown.

use super::{GpadlEntry, GpadlSlot, Server, ServerAction, ServerError};
use crate::gpadl::{GpadlAssembler, GpadlError};
use crate::protocol::{
    GpadlBodyMessage, GpadlCreated, GpadlHeaderMessage, GpadlTorndown,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
};

impl Server {
    fn gpadl_failed(&mut self, relid: u32, gpadl: u32, status: u32) {
        self.send(&GpadlCreated::new(relid, gpadl, status));
    }

    pub(super) fn gpadl_header(&mut self, h: &GpadlHeaderMessage<'_>) -> Result<(), ServerError> {
        let (relid, gpadl) = (h.header.child_relid, h.header.gpadl);
        self.guest_channel_for_gpadl(relid)?;
        if self.gpadls.contains_key(&gpadl) {
            // Answering would be taken as news about the existing GPADL: just refuse.
            return Err(ServerError::DuplicateGpadl(gpadl));
        }
        let limits = self.config.limits;
        let limit = if self.pending_gpadls() >= limits.max_pending_gpadls {
            Some("pending GPADLs")
        } else if self.gpadls.len() >= limits.max_gpadls {
            Some("GPADLs")
        } else {
            None
        };
        if let Some(what) = limit {
            self.gpadl_failed(relid, gpadl, STATUS_INSUFFICIENT_RESOURCES);
            return Err(ServerError::Limit(what));
        }
        let asm = match GpadlAssembler::new(h, limits.max_gpadl_pfns) {
            Ok(asm) => asm,
            Err(error) => {
                self.gpadl_failed(relid, gpadl, STATUS_INVALID_PARAMETER);
                return Err(ServerError::Gpadl { gpadl, error });
            }
        };
        let reserved = asm.claimed_pfns();
        let total = self.reserved_pfns.saturating_add(reserved);
        if total > limits.max_total_pfns {
            self.gpadl_failed(relid, gpadl, STATUS_INSUFFICIENT_RESOURCES);
            return Err(ServerError::Limit("total GPADL pages"));
        }
        self.reserved_pfns = total;
        self.gpadls.insert(
            gpadl,
            GpadlEntry {
                relid,
                reserved,
                slot: GpadlSlot::Pending(asm),
            },
        );
        self.complete_if_done(gpadl)
    }

    /// The channel a GPADL_HEADER names must be one the guest may use.
    fn guest_channel_for_gpadl(&self, relid: u32) -> Result<(), ServerError> {
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
        Ok(())
    }

    pub(super) fn gpadl_body(&mut self, b: &GpadlBodyMessage<'_>) -> Result<(), ServerError> {
        let gpadl = b.body.gpadl;
        let entry = self
            .gpadls
            .get_mut(&gpadl)
            .ok_or(ServerError::UnknownGpadl(gpadl))?;
        let relid = entry.relid;
        let GpadlSlot::Pending(asm) = &mut entry.slot else {
            return Err(ServerError::GpadlNotPending(gpadl));
        };
        if let Err(error) = asm.add_body(b) {
            self.abandon(gpadl, relid, error)?;
        }
        self.complete_if_done(gpadl)
    }

    /// Drops a pending GPADL after a bad message and tells the guest it failed.
    fn abandon(&mut self, gpadl: u32, relid: u32, error: GpadlError) -> Result<(), ServerError> {
        self.drop_gpadl(gpadl);
        self.gpadl_failed(relid, gpadl, STATUS_INVALID_PARAMETER);
        Err(ServerError::Gpadl { gpadl, error })
    }

    /// Finishes a pending GPADL whose data is all there: answers GPADL_CREATED either way.
    fn complete_if_done(&mut self, gpadl: u32) -> Result<(), ServerError> {
        let complete = self
            .gpadls
            .get(&gpadl)
            .is_some_and(|e| matches!(&e.slot, GpadlSlot::Pending(asm) if asm.is_complete()));
        if !complete {
            return Ok(());
        }
        let Some(mut entry) = self.gpadls.remove(&gpadl) else {
            return Ok(());
        };
        let relid = entry.relid;
        let finished = match entry.slot {
            GpadlSlot::Pending(asm) => asm.finish(),
            GpadlSlot::Ready(ready) => Ok(ready),
        };
        let outside = finished.as_ref().ok().and_then(|ready| {
            let ram = &self.config.guest_pfns;
            ready
                .ranges
                .iter()
                .flat_map(|r| r.pfns.iter().copied())
                .find(|pfn| !ram.is_empty() && !ram.iter().any(|r| r.contains(pfn)))
        });
        if let Some(pfn) = outside {
            self.reserved_pfns = self.reserved_pfns.saturating_sub(entry.reserved);
            self.gpadl_failed(relid, gpadl, STATUS_INVALID_PARAMETER);
            return Err(ServerError::GpadlOutsideRam { gpadl, pfn });
        }
        match finished {
            Ok(ready) => {
                entry.slot = GpadlSlot::Ready(ready);
                self.gpadls.insert(gpadl, entry);
                self.actions
                    .push_back(ServerAction::GpadlReady { relid, gpadl });
                self.send(&GpadlCreated::new(relid, gpadl, 0));
                Ok(())
            }
            Err(error) => {
                self.reserved_pfns = self.reserved_pfns.saturating_sub(entry.reserved);
                self.gpadl_failed(relid, gpadl, STATUS_INVALID_PARAMETER);
                Err(ServerError::Gpadl { gpadl, error })
            }
        }
    }

    pub(super) fn gpadl_teardown(&mut self, relid: u32, gpadl: u32) -> Result<(), ServerError> {
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
        let in_use = self
            .channels
            .get(&relid)
            .and_then(|c| c.open)
            .is_some_and(|open| open.gpadl == gpadl);
        if in_use {
            return Err(ServerError::GpadlInUse { gpadl, relid });
        }
        self.drop_gpadl(gpadl);
        self.send(&GpadlTorndown::new(gpadl));
        Ok(())
    }

    /// Forgets a GPADL, releasing its PFN budget; tells the device layer if it was ready.
    pub(super) fn drop_gpadl(&mut self, gpadl: u32) {
        if let Some(entry) = self.gpadls.remove(&gpadl) {
            self.reserved_pfns = self.reserved_pfns.saturating_sub(entry.reserved);
            if matches!(entry.slot, GpadlSlot::Ready(_)) {
                self.actions.push_back(ServerAction::GpadlTornDown {
                    relid: entry.relid,
                    gpadl,
                });
            }
        }
    }
}
