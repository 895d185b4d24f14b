//! The smoltcp [`Device`] over an [`E1000Nic`], and its [`GuestNic`](crate::net::GuestNic) face:
//! a receive token hands smoltcp the oldest frame of the driver's receive queue (copied there out
//! of its DMA buffer by the drain), a transmit token lets smoltcp build its frame in the staging
//! buffer, from where it is copied once into the next descriptor's slot. Neither allocates.
//! [`Device::transmit`] gives no token while the ring is full, so smoltcp keeps the frame.
#![forbid(unsafe_code)]

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use super::{E1000Nic, ReceiveQueue, Registers, TxPath, MAX_FRAME_LEN};
use crate::net::NicCounters;
use crate::platform::Platform;

/// Receive token: the oldest received frame.
#[derive(Debug)]
pub struct E1000RxToken<'a> {
    queue: &'a mut ReceiveQueue,
}

impl RxToken for E1000RxToken<'_> {
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

/// Transmit token: a frame built in the staging buffer, queued when smoltcp is done.
#[derive(Debug)]
pub struct E1000TxToken<'a> {
    tx: &'a mut TxPath,
}

impl TxToken for E1000TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if len > self.tx.staging.len() {
            // Larger than the MTU announced: smoltcp never asks; build and drop it.
            let mut scratch = alloc::vec![0u8; len];
            self.tx.stats.tx_busy += 1;
            return f(&mut scratch);
        }
        let result = f(&mut self.tx.staging[..len]);
        // A frame that finds no descriptor now is dropped (counted), as a full NIC drops it.
        self.tx.send_staged(len);
        result
    }
}

impl<P: Platform, R: Registers> Device for E1000Nic<P, R> {
    type RxToken<'a>
        = E1000RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = E1000TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        Some((
            E1000RxToken {
                queue: &mut self.rx,
            },
            E1000TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx.can_send() {
            return None;
        }
        Some(E1000TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // For Ethernet, smoltcp's MTU counts the header.
        caps.max_transmission_unit = MAX_FRAME_LEN;
        caps
    }
}

/// The driver's calls never fail once it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Never {}

impl core::fmt::Display for Never {
    fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {}
    }
}

impl<P: Platform, R: Registers> crate::net::GuestNic for E1000Nic<P, R> {
    type Error = Never;

    fn mac(&self) -> [u8; 6] {
        E1000Nic::mac(self)
    }

    fn mtu(&self) -> usize {
        MAX_FRAME_LEN - 14
    }

    fn link_up(&self) -> bool {
        E1000Nic::link_up(self)
    }

    fn poll(&mut self) -> Result<usize, Never> {
        Ok(E1000Nic::poll(self))
    }

    fn flush(&mut self) -> Result<(), Never> {
        E1000Nic::flush(self);
        Ok(())
    }

    fn wait(&mut self) {
        E1000Nic::wait(self);
    }

    fn counters(&self) -> NicCounters {
        let s = self.stats();
        NicCounters {
            tx_frames: s.tx_frames,
            tx_busy: s.tx_busy,
            rx_frames: s.rx_frames,
            rx_dropped: 0,
            rx_errors: s.rx_errors,
            // The device learns of new frames and buffers from the tail registers.
            signals: s.tdt_writes + s.rdt_writes,
        }
    }
}
