//! The NIC on a real VMBus channel: [`VmbusNetTransport`] (the channel's rings, its event flag,
//! the hypercall page and the platform to sleep on), [`VmbusGpadls`] (buffer GPADLs through the
//! connection), and [`NetvscNic::open_vmbus`] / [`NetvscNic::close`].

use alloc::vec::Vec;

use netvsp_protocol::nvsp::{MessageType, NvspMessage, RevokeBuffer};
use vmbus::client::{ClientAction as VmbusAction, ClientError};
use vmbus::gpadl::GpaRange;
use vmbus::packet::{GpaRangeSpec, PacketFlags};
use vmbus::ring::{Drained, RingError};

use super::{GpadlCreator, NetTransport, NetvscConfig, NetvscNic, NicError};
use crate::hv::hypercall::{EventSignaller, HypercallError};
use crate::hv::synic::EventFlags;
use crate::platform::{DmaRegion, Platform};
use crate::vmbus_client::{Channel, VmbusConnection, VmbusError};

/// A NIC's channel on the real VMBus: the channel's rings, its event flag, the hypercall page to
/// signal with, and the platform to sleep on.
#[derive(Debug)]
pub struct VmbusNetTransport<'p, P: Platform> {
    channel: Channel,
    signaller: EventSignaller,
    flags: EventFlags,
    platform: &'p P,
}

impl<P: Platform> NetTransport for VmbusNetTransport<'_, P> {
    fn write_inband(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        self.channel.write_inband(trans_id, flags, payload)
    }

    fn write_gpa_direct(
        &mut self,
        trans_id: u64,
        flags: PacketFlags,
        range: GpaRangeSpec<'_>,
        payload: &[&[u8]],
    ) -> Result<(), RingError> {
        self.channel
            .write_gpa_direct(trans_id, flags, &[range], payload)
    }

    fn write_completion(&mut self, trans_id: u64, payload: &[&[u8]]) -> Result<(), RingError> {
        self.channel.write_completion(trans_id, payload)
    }

    fn writable_len(&mut self) -> Result<usize, RingError> {
        self.channel.writable_len()
    }

    fn drain(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<Drained, RingError> {
        // NAPI style: the host's interrupts stay masked while the guest drains and polls;
        // only `wait` lets them through again.
        self.channel.take_event_from(&self.flags);
        self.channel.drain_polling(buf, limit, |_, bytes| f(bytes))
    }

    fn flush(&mut self) -> Result<bool, HypercallError> {
        self.channel.flush(&self.signaller)
    }

    fn wait(&mut self) {
        // Count first: an interrupt after the check below still ends the sleep.
        let seen = self.platform.interrupt_total();
        // Unmask, then look again: a packet that raced in while masked was not signalled. A
        // broken ring is not slept on (the next drain reports it).
        if let Ok(false) = self.channel.rearm() {
            self.platform.wait_for_interrupt(seen);
        }
    }
}

/// [`GpadlCreator`] over a VMBus connection, for the channel `relid`.
#[derive(Debug)]
pub struct VmbusGpadls<'c, 'p, P: Platform> {
    /// The connection.
    pub conn: &'c mut VmbusConnection<'p, P>,
    /// The NIC's channel.
    pub relid: u32,
}

impl<P: Platform> GpadlCreator for VmbusGpadls<'_, '_, P> {
    fn create_gpadl(&mut self, region: &DmaRegion) -> Result<u32, NicError> {
        let pfns: Vec<u64> = region.pfns().collect();
        let range =
            GpaRange::whole_pages(&pfns).map_err(|e| VmbusError::Protocol(ClientError::from(e)))?;
        let gpadl = self
            .conn
            .client_mut()
            .create_gpadl(self.relid, range)
            .map_err(VmbusError::Protocol)?;
        match self
            .conn
            .wait_for(|a| matches!(a, VmbusAction::GpadlCreated { gpadl: g, .. } if *g == gpadl))?
        {
            VmbusAction::GpadlCreated { status: 0, .. } => Ok(gpadl),
            VmbusAction::GpadlCreated { status, .. } => Err(VmbusError::HostRefused {
                what: "GPADL_HEADER",
                status,
            }
            .into()),
            _ => Err(VmbusError::Protocol(ClientError::NotConnected).into()),
        }
    }
}

impl<'p, P: Platform> NetvscNic<VmbusNetTransport<'p, P>> {
    /// Opens the NIC channel `relid` (rings of `ring_pages` pages each way; Linux uses 128) and
    /// initialises the NIC on it.
    pub fn open_vmbus(
        conn: &mut VmbusConnection<'p, P>,
        platform: &'p P,
        relid: u32,
        ring_pages: usize,
        config: NetvscConfig,
    ) -> Result<Self, NicError> {
        let channel = conn.open_channel(relid, ring_pages, ring_pages)?;
        let transport = VmbusNetTransport {
            channel,
            signaller: conn.hypercalls().signaller(),
            flags: conn.synic().event_flags(),
            platform,
        };
        Self::open(
            transport,
            &mut VmbusGpadls { conn, relid },
            platform,
            config,
        )
    }

    /// Takes both buffers back from the host (REVOKE_RECV_BUF, REVOKE_SEND_BUF, the GPADLs torn
    /// down), closes the channel and frees every page. Frames in flight are abandoned.
    pub fn close(mut self, conn: &mut VmbusConnection<'p, P>) -> Result<(), NicError> {
        use netvsp_protocol::nvsp::{RECEIVE_BUFFER_ID, SEND_BUFFER_ID};
        for (message_type, id) in [
            (MessageType::REVOKE_RECEIVE_BUFFER, RECEIVE_BUFFER_ID),
            (MessageType::REVOKE_SEND_BUFFER, SEND_BUFFER_ID),
        ] {
            let message = NvspMessage::new(message_type, &RevokeBuffer { id: id.into() });
            self.tx
                .transport
                .write_inband(0, PacketFlags::empty(), &[message.as_wire()])?;
        }
        self.tx.transport.flush()?;
        for gpadl in self.gpadls {
            conn.client_mut()
                .teardown_gpadl(gpadl)
                .map_err(VmbusError::Protocol)?;
            conn.wait_for(
                |a| matches!(a, VmbusAction::GpadlTornDown { gpadl: g, .. } if *g == gpadl),
            )?;
        }
        let platform = self.tx.transport.platform;
        conn.close_channel(self.tx.transport.channel)?;
        platform.free_dma(self.receive_buf);
        platform.free_dma(self.tx.send_buf);
        platform.free_dma(self.control_page);
        Ok(())
    }
}
