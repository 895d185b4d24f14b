//! The smoltcp [`Device`] over a [`NetvscNic`]: smoltcp's interface polls it for frames and
//! transmit buffers; the guest kernel moves the NIC itself.
//!
//! A guest kernel's loop:
//! ```text
//! nic.poll()?;                              // host packets in: completions, frames, link
//! iface.poll(now, &mut nic, &mut sockets);  // smoltcp consumes frames, queues replies
//! nic.flush()?;                             // one signal for every frame queued
//! nic.wait();                               // sleep until the host writes (or poll again)
//! ```
//!
//! Tokens borrow the NIC's buffers: a receive token hands smoltcp the frame where
//! [`NetvscNic::poll`] copied it out of the receive buffer, a transmit token lets smoltcp build
//! its frame in the NIC's staging buffer, from where it is copied once into its send section.
//! Neither token allocates. (The one copy each way is the one Linux makes too; smoltcp never gets
//! a reference into pages the host shares.) [`Device::transmit`] gives no token while no send
//! section is free or the ring is full, so smoltcp keeps the frame for a later poll.
#![forbid(unsafe_code)]

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use super::nic::{NetTransport, NetvscNic, NicStats, ReceiveQueue, TxPath};

/// Receive token: the oldest received frame.
#[derive(Debug)]
pub struct NetvscRxToken<'a> {
    queue: &'a mut ReceiveQueue,
}

impl RxToken for NetvscRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        // Tokens are only made while a frame waits.
        let result = f(self.queue.front().unwrap_or(&[]));
        self.queue.pop();
        result
    }
}

/// Transmit token: a frame built in the NIC's staging buffer, queued when smoltcp is done.
#[derive(Debug)]
pub struct NetvscTxToken<'a, T> {
    tx: &'a mut TxPath<T>,
    stats: &'a mut NicStats,
}

impl<T: NetTransport> TxToken for NetvscTxToken<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if len > self.tx.staging.len() {
            // Larger than the MTU we announced: smoltcp never asks; build and drop it.
            let mut scratch = alloc::vec![0u8; len];
            self.stats.tx_busy += 1;
            return f(&mut scratch);
        }
        let result = f(&mut self.tx.staging[..len]);
        // A frame that finds no room now is dropped (counted), as a full NIC queue drops it.
        let _ = self.tx.send_staged(len, self.stats);
        result
    }
}

impl<T: NetTransport> Device for NetvscNic<T> {
    type RxToken<'a>
        = NetvscRxToken<'a>
    where
        T: 'a;
    type TxToken<'a>
        = NetvscTxToken<'a, T>
    where
        T: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        Some((
            NetvscRxToken {
                queue: &mut self.rx,
            },
            NetvscTxToken {
                tx: &mut self.tx,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx.can_send() {
            return None;
        }
        Some(NetvscTxToken {
            tx: &mut self.tx,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // For Ethernet, smoltcp's MTU counts the header.
        caps.max_transmission_unit = self.max_frame_len();
        caps
    }
}

impl<T: NetTransport> crate::net::GuestNic for NetvscNic<T> {
    type Error = super::NicError;

    fn mac(&self) -> [u8; 6] {
        self.info().mac
    }

    fn mtu(&self) -> usize {
        self.info().mtu as usize
    }

    fn link_up(&self) -> bool {
        NetvscNic::link_up(self)
    }

    fn poll(&mut self) -> Result<usize, Self::Error> {
        NetvscNic::poll(self)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        NetvscNic::flush(self).map(drop)
    }

    fn wait(&mut self) {
        NetvscNic::wait(self);
    }

    fn counters(&self) -> crate::net::NicCounters {
        let s = self.stats();
        crate::net::NicCounters {
            tx_frames: s.tx_frames,
            tx_busy: s.tx_busy,
            rx_frames: s.rx_frames,
            rx_dropped: s.rx_dropped,
            rx_errors: s.rx_errors,
            signals: s.signals,
        }
    }
}
