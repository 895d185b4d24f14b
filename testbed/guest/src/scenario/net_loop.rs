//! The in-guest loopback floor of `net:dev=loopback`: [`LoopNic`] hands every frame smoltcp sends
//! straight back to it (no device, no exit, no interrupt), and [`LoopPeer`] plays, with sockets in
//! the same interface, each server the host runs at 198.18.0.1 for a real NIC — the UDP echo
//! (7001), the UDP sink (7004, answering `done` to `end`), the TCP sink (7002, every byte checked
//! against the pattern) and the TCP source (7003, sends `tcp-recv=MIB` MiB then closes). What a
//! step costs here is smoltcp and the workload alone: the floor a NIC's rows are read against.
#![forbid(unsafe_code)]

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::convert::Infallible;

use guest_abi::net::{ECHO_PORT, FLOOD_PORT, TCP_SINK_PORT, TCP_SOURCE_PORT};
use guest_drivers::net::{GuestNic, NicCounters};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;

use super::net::{pattern, Hash, TCP_BUFFER};

/// The loopback's MAC address (locally administered).
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x18, 0x00, 0x02];
/// Frames in flight at most (as a NIC's receive queue).
const QUEUE: usize = 256;

/// A NIC whose wire is a queue back to itself.
#[derive(Debug, Default)]
pub struct LoopNic {
    queue: VecDeque<Vec<u8>>,
    counters: NicCounters,
}

/// Receive token: the oldest frame.
#[derive(Debug)]
pub struct LoopRx(Vec<u8>);

/// Transmit token: appends the frame to the queue.
#[derive(Debug)]
pub struct LoopTx<'a>(&'a mut LoopNic);

impl phy::RxToken for LoopRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for LoopTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        let nic = self.0;
        if nic.queue.len() < QUEUE {
            nic.queue.push_back(frame);
            nic.counters.tx_frames += 1;
        } else {
            nic.counters.rx_dropped += 1;
        }
        result
    }
}

impl Device for LoopNic {
    type RxToken<'a> = LoopRx;
    type TxToken<'a> = LoopTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(LoopRx, LoopTx<'_>)> {
        // Counted once, as sent: a looped frame is one packet, as it is on a real wire.
        let frame = self.queue.pop_front()?;
        Some((LoopRx(frame), LoopTx(self)))
    }

    fn transmit(&mut self, _: Instant) -> Option<LoopTx<'_>> {
        Some(LoopTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl GuestNic for LoopNic {
    type Error = Infallible;

    fn mac(&self) -> [u8; 6] {
        MAC
    }

    fn mtu(&self) -> usize {
        1500
    }

    fn link_up(&self) -> bool {
        true
    }

    fn poll(&mut self) -> Result<usize, Infallible> {
        Ok(0)
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }

    fn wait(&mut self) {}

    fn counters(&self) -> NicCounters {
        self.counters
    }
}

/// The host's servers, inside the guest.
#[derive(Debug)]
pub struct LoopPeer {
    echo: SocketHandle,
    sink: SocketHandle,
    tcp_sink: SocketHandle,
    tcp_source: SocketHandle,
    /// Datagrams the UDP sink counted.
    pub sink_datagrams: u64,
    /// Bytes the TCP sink received (each checked), and their hash.
    pub tcp_sink_bytes: u64,
    pub tcp_sink_hash: Hash,
    /// The first byte the TCP sink found wrong.
    pub tcp_sink_error: Option<u64>,
    source_bytes: u64,
    source_sent: u64,
}

impl LoopPeer {
    /// Opens the peer's sockets in `sockets`.
    pub fn new(sockets: &mut SocketSet<'static>) -> Self {
        let udp = |port| {
            let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 << 7]);
            let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
            let mut socket = udp::Socket::new(rx, tx);
            socket.bind(port).expect("a free port");
            socket
        };
        let tcp = || {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            );
            socket.set_ack_delay(None);
            socket.set_nagle_enabled(false);
            socket
        };
        Self {
            echo: sockets.add(udp(ECHO_PORT)),
            sink: sockets.add(udp(FLOOD_PORT)),
            tcp_sink: sockets.add(tcp()),
            tcp_source: sockets.add(tcp()),
            sink_datagrams: 0,
            tcp_sink_bytes: 0,
            tcp_sink_hash: Hash::new(),
            tcp_sink_error: None,
            source_bytes: 0,
            source_sent: 0,
        }
    }

    /// The TCP source's next connection sends `bytes`.
    pub fn set_source_bytes(&mut self, bytes: u64) {
        self.source_bytes = bytes;
        self.source_sent = 0;
    }

    /// Serves every peer socket once (after each interface poll).
    pub fn serve(&mut self, sockets: &mut SocketSet<'static>) {
        let mut buf = [0u8; 2048];
        let echo = sockets.get_mut::<udp::Socket>(self.echo);
        while echo.can_send() {
            let Ok((n, meta)) = echo.recv_slice(&mut buf) else {
                break;
            };
            let _ = echo.send_slice(&buf[..n], meta.endpoint);
        }
        let sink = sockets.get_mut::<udp::Socket>(self.sink);
        while let Ok((n, meta)) = sink.recv_slice(&mut buf) {
            if &buf[..n] == b"end" {
                let _ = sink.send_slice(b"done", meta.endpoint);
            } else {
                self.sink_datagrams += 1;
            }
        }
        let socket = sockets.get_mut::<tcp::Socket>(self.tcp_sink);
        if !socket.is_open() {
            let _ = socket.listen(TCP_SINK_PORT);
        }
        while socket.can_recv() {
            let Ok(n) = socket.recv_slice(&mut buf) else {
                break;
            };
            for (i, b) in buf[..n].iter().enumerate() {
                let at = self.tcp_sink_bytes + i as u64;
                if *b != pattern(at) && self.tcp_sink_error.is_none() {
                    self.tcp_sink_error = Some(at);
                }
            }
            self.tcp_sink_hash.update(&buf[..n]);
            self.tcp_sink_bytes += n as u64;
        }
        if socket.state() == tcp::State::CloseWait {
            socket.close();
        }
        let socket = sockets.get_mut::<tcp::Socket>(self.tcp_source);
        if !socket.is_open() {
            let _ = socket.listen(TCP_SOURCE_PORT);
        }
        if socket.state() == tcp::State::Established {
            while socket.can_send() && self.source_sent < self.source_bytes {
                let n = (self.source_bytes - self.source_sent).min(buf.len() as u64) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(self.source_sent + i as u64);
                }
                match socket.send_slice(&buf[..n]) {
                    Ok(taken) => self.source_sent += taken as u64,
                    Err(_) => break,
                }
            }
            if self.source_sent == self.source_bytes {
                socket.close();
            }
        }
    }
}
