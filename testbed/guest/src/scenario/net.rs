//! `net:<steps>` — TCP/IP over the synthetic NIC: the first network offer is opened with
//! guest-drivers' netvsc, smoltcp runs on it with address 198.18.0.2/24, and the comma-separated
//! steps talk to servers the host runs at 198.18.0.1 (inside the test's own network namespace):
//!
//! - `udp=N`: N request/response round trips to the UDP echo server on port 7001, each reply
//!   checked against its request;
//! - `tcp-send=MIB`: connect to port 7002 and send MIB MiB of the pattern stream, then close;
//! - `tcp-recv=MIB`: connect to port 7003 and receive until the host closes, hashing the bytes
//!   (the host sends MIB MiB of the same pattern);
//! - `until-bye`: keep the interface running (ARP, ICMP echo) until a UDP datagram `bye` arrives
//!   on port 7009.
//!
//! Every step is bracketed by marks (1000 + 2k before step k, 1001 + 2k after) so the host can
//! count exits, signals and interrupts per step; results are `key=value` lines. Needs
//! `bench-tsc:<hz>` first (smoltcp's clock). Every wait is bounded by [`STEP_SECONDS`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::netvsc::nic::VmbusNetTransport;
use guest_drivers::netvsc::{NetvscConfig, NetvscNic};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use vmbus::protocol::interface;

use super::Outcome;
use crate::platform::Kernel;
use crate::println;
use crate::scenario::bench::{tsc, tsc_hz};
use crate::vmbus_global::{with_connection, KERNEL};

/// Longest any step may take.
const STEP_SECONDS: u64 = 60;
/// The host's address in the test network.
const HOST: IpAddress = IpAddress::v4(198, 18, 0, 1);
/// TCP buffers: smoltcp's window stays under the NIC's receive queue.
const TCP_BUFFER: usize = 64 << 10;

type Nic = NetvscNic<VmbusNetTransport<'static, Kernel>>;

/// Run `name` if it is the network scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "net" => Some(net(args)),
        _ => None,
    }
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// smoltcp's clock: the TSC at the rate `bench-tsc` gave.
pub(super) fn now() -> Instant {
    let hz = tsc_hz().max(1);
    Instant::from_micros((u128::from(tsc()) * 1_000_000 / u128::from(hz)) as i64)
}

/// The NIC, smoltcp's interface and sockets, and the loop that moves them.
struct Stack {
    nic: Nic,
    iface: Interface,
    sockets: SocketSet<'static>,
    deadline: u64,
}

impl Stack {
    /// One turn: host packets in, smoltcp, frames out (one signal at most). Returns whether
    /// smoltcp did anything.
    fn turn(&mut self) -> Result<bool, String> {
        self.nic.poll().map_err(err)?;
        let changed = self.iface.poll(now(), &mut self.nic, &mut self.sockets);
        self.nic.flush().map_err(err)?;
        Ok(changed != smoltcp::iface::PollResult::None)
    }

    /// Fails once the step ran out of time.
    fn check_deadline(&self) -> Result<(), String> {
        if tsc() > self.deadline {
            return Err("step timed out".into());
        }
        Ok(())
    }

    /// Waits for the host when smoltcp has no timer due soon; spins (no exit) while one is.
    fn idle(&mut self) -> Result<(), String> {
        self.check_deadline()?;
        match self.iface.poll_delay(now(), &self.sockets) {
            // A timer (retransmit, delayed ACK) is due: poll again rather than sleep, since
            // nothing but the host would wake us.
            Some(d) if d.total_millis() < 1000 => Ok(()),
            _ => {
                self.nic.wait();
                Ok(())
            }
        }
    }

    fn start_step(&mut self) {
        self.deadline = tsc() + STEP_SECONDS * tsc_hz();
    }
}

fn net(steps: &str) -> Outcome {
    if tsc_hz() == 0 {
        return Err("net needs bench-tsc".into());
    }
    with_connection(|conn| {
        let offer = conn
            .find_offer(interface::NETWORK)
            .ok_or("no network adapter offered")?;
        let nic = NetvscNic::open_vmbus(conn, &KERNEL, offer.child_relid, 128, NetvscConfig::default())
            .map_err(err)?;
        let info = nic.info();
        println!(
            "net-mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} net-mtu={} net-link={}",
            info.mac[0], info.mac[1], info.mac[2], info.mac[3], info.mac[4], info.mac[5],
            info.mtu,
            u8::from(nic.link_up())
        );
        let mut nic = nic;
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
        let mut iface = Interface::new(config, &mut nic, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(198, 18, 0, 2), 24));
        });
        let mut stack = Stack {
            nic,
            iface,
            sockets: SocketSet::new(Vec::new()),
            deadline: 0,
        };
        for (k, step) in steps.split(',').filter(|s| !s.is_empty()).enumerate() {
            let (name, value) = step.split_once('=').unwrap_or((step, ""));
            stack.start_step();
            crate::arch::mark(1000 + 2 * k as u32);
            match name {
                "udp" => udp_round_trips(&mut stack, count(value)?)?,
                "tcp-send" => tcp_send(&mut stack, count(value)? << 20)?,
                "tcp-recv" => tcp_recv(&mut stack)?,
                "until-bye" => until_bye(&mut stack)?,
                other => return Err(format!("unknown net step `{other}`")),
            }
            crate::arch::mark(1001 + 2 * k as u32);
        }
        let s = stack.nic.stats();
        println!(
            "net-tx-frames={} net-rx-frames={} net-rx-dropped={} net-tx-busy={} net-rx-errors={}",
            s.tx_frames, s.rx_frames, s.rx_dropped, s.tx_busy, s.rx_errors
        );
        Ok(())
    })?
}

fn count(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("`{value}` is not a count"))
}

/// The pattern stream both ends use: byte i of the stream.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9) >> 13) as u8
}

/// FNV-1a over a stream, one chunk at a time.
struct Hash(u64);

impl Hash {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn udp_socket(stack: &mut Stack, port: u16) -> Result<SocketHandle, String> {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let mut socket = udp::Socket::new(rx, tx);
    socket.bind(port).map_err(err)?;
    Ok(stack.sockets.add(socket))
}

fn udp_round_trips(stack: &mut Stack, n: u64) -> Outcome {
    let handle = udp_socket(stack, 7101)?;
    let peer = IpEndpoint::new(HOST, 7001);
    let mut request = [0u8; 64];
    let mut reply = [0u8; 64];
    let mut resent = 0u64;
    for seq in 0..n {
        request[..8].copy_from_slice(&seq.to_le_bytes());
        for (i, b) in request[8..].iter_mut().enumerate() {
            *b = pattern(seq + i as u64);
        }
        let mut sent_at: Option<u64> = None;
        loop {
            let socket = stack.sockets.get_mut::<udp::Socket>(handle);
            // A request unanswered for 200 ms is sent again (UDP may drop it).
            let due = sent_at.is_none_or(|t| tsc() - t > tsc_hz() / 5);
            if due && socket.can_send() {
                socket.send_slice(&request, peer).map_err(err)?;
                resent += u64::from(sent_at.is_some());
                sent_at = Some(tsc());
            }
            if let Ok((len, _)) = socket.recv_slice(&mut reply) {
                if reply[..8] != request[..8] {
                    // A late answer to an earlier, resent request.
                    continue;
                }
                if len != request.len() || reply != request {
                    return Err(format!("udp reply {seq} differs from its request"));
                }
                break;
            }
            // Poll while a request is out (a lost one is resent; no interrupt would come).
            if !stack.turn()? {
                stack.check_deadline()?;
            }
        }
    }
    stack.sockets.remove(handle);
    println!("net-udp-roundtrips={n} net-udp-resent={resent}");
    Ok(())
}

fn tcp_socket(stack: &mut Stack, port: u16, local: u16) -> Result<SocketHandle, String> {
    let rx = tcp::SocketBuffer::new(vec![0; TCP_BUFFER]);
    let tx = tcp::SocketBuffer::new(vec![0; TCP_BUFFER]);
    let mut socket = tcp::Socket::new(rx, tx);
    socket.set_ack_delay(None);
    socket.set_nagle_enabled(false);
    let handle = stack.sockets.add(socket);
    let cx = stack.iface.context();
    stack
        .sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(cx, IpEndpoint::new(HOST, port), local)
        .map_err(err)?;
    Ok(handle)
}

fn tcp_send(stack: &mut Stack, bytes: u64) -> Outcome {
    let handle = tcp_socket(stack, 7002, 7102)?;
    let mut hash = Hash::new();
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 16 << 10];
    let mut closed = false;
    loop {
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        if socket.state() == tcp::State::Closed && sent > 0 {
            break;
        }
        if socket.can_send() && sent < bytes {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            let taken = socket.send_slice(&chunk[..n]).map_err(err)?;
            hash.update(&chunk[..taken]);
            sent += taken as u64;
        }
        if sent == bytes && !closed && socket.send_queue() == 0 {
            socket.close();
            closed = true;
        }
        // Done once our FIN is acknowledged (every byte before it was, in order).
        if closed
            && matches!(
                socket.state(),
                tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed
            )
        {
            break;
        }
        if !stack.turn()? {
            stack.idle()?;
        }
    }
    stack.sockets.remove(handle);
    println!("net-tcp-sent={sent} net-tcp-sent-hash={:016x}", hash.0);
    Ok(())
}

fn tcp_recv(stack: &mut Stack) -> Outcome {
    let handle = tcp_socket(stack, 7003, 7103)?;
    let mut hash = Hash::new();
    let mut received = 0u64;
    let mut chunk = vec![0u8; 16 << 10];
    let mut connected = false;
    loop {
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        connected |= socket.is_active() && socket.state() == tcp::State::Established;
        while socket.can_recv() {
            let n = socket.recv_slice(&mut chunk).map_err(err)?;
            for (i, b) in chunk[..n].iter().enumerate() {
                if *b != pattern(received + i as u64) {
                    return Err(format!("tcp byte {} differs", received + i as u64));
                }
            }
            hash.update(&chunk[..n]);
            received += n as u64;
        }
        if connected && !socket.may_recv() {
            socket.close();
            break;
        }
        if !stack.turn()? {
            if tsc() > stack.deadline {
                let socket = stack.sockets.get::<tcp::Socket>(handle);
                return Err(format!(
                    "tcp-recv timed out: state {:?}, {received} bytes, nic {:?}",
                    socket.state(),
                    stack.nic.stats()
                ));
            }
            stack.idle()?;
        }
    }
    // Let the FIN exchange finish.
    for _ in 0..1000 {
        if stack.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Closed
            || stack.sockets.get::<tcp::Socket>(handle).state() == tcp::State::TimeWait
        {
            break;
        }
        if !stack.turn()? {
            stack.idle()?;
        }
    }
    stack.sockets.remove(handle);
    println!("net-tcp-received={received} net-tcp-received-hash={:016x}", hash.0);
    Ok(())
}

fn until_bye(stack: &mut Stack) -> Outcome {
    let handle = udp_socket(stack, 7009)?;
    let mut buf = [0u8; 16];
    loop {
        let socket = stack.sockets.get_mut::<udp::Socket>(handle);
        if let Ok((len, _)) = socket.recv_slice(&mut buf) {
            if &buf[..len] == b"bye" {
                break;
            }
        }
        if !stack.turn()? {
            stack.idle()?;
        }
    }
    stack.sockets.remove(handle);
    println!("net-bye=1");
    Ok(())
}
