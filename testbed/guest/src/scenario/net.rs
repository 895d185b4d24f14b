//! `net:[dev=NAME,]<steps>` — TCP/IP over a NIC: `dev` picks the driver (`netvsc`, the default,
//! opens the first network offer with guest-drivers' netvsc), smoltcp runs on it with address
//! 198.18.0.2/24 through [`GuestNic`], and the comma-separated steps talk to servers the host runs
//! at 198.18.0.1 (inside the test's own network namespace):
//!
//! - `udp=N`: N request/response round trips to the UDP echo server on port 7001, each reply
//!   checked against its request, their latencies reported as p50/p99 (TSC, in ns);
//! - `udp-flood=N`: N 64-byte UDP datagrams to port 7004 (one way, as fast as the NIC takes them,
//!   each carrying its sequence number), then `end` datagrams until the host's `done` arrives on
//!   port 7104;
//! - `tcp-send=MIB`: connect to port 7002 and send MIB MiB of the pattern stream, then close;
//! - `tcp-recv[=MIB]`: connect to port 7003 and receive until the host closes, checking and
//!   hashing the bytes (the pattern stream; MIB tells the loopback floor's in-guest source how
//!   many MiB to send, a real host decides itself);
//! - `dev=loopback` runs the same steps against [`LoopPeer`] on the in-guest loopback floor;
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

use guest_abi::net::{
    fnv1a, BYE_PORT, DATAGRAM, ECHO_PORT, FLOOD_PORT, FLOOD_REPLY_PORT, FNV_START, GUEST_IP,
    HOST_IP, TCP_SINK_PORT, TCP_SOURCE_PORT,
};
use guest_drivers::net::GuestNic;
use guest_drivers::netvsc::{NetvscConfig, NetvscNic};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use vmbus::protocol::interface;

use super::net_loop::{LoopNic, LoopPeer};
use super::Outcome;
use crate::println;
use crate::scenario::bench::{tsc, tsc_hz};
use crate::vmbus_global::{with_connection, KERNEL};

/// How long the stack polls the NIC before it sleeps for its interrupt.
const BUSY_POLL_US: u64 = 50;
/// Longest any step may take.
const STEP_SECONDS: u64 = 60;
/// The host's address in the test network.
const HOST: IpAddress = IpAddress::v4(HOST_IP[0], HOST_IP[1], HOST_IP[2], HOST_IP[3]);
/// TCP buffers: smoltcp's window stays under the NIC's receive queue.
pub(super) const TCP_BUFFER: usize = 64 << 10;

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
struct Stack<N: GuestNic> {
    nic: N,
    iface: Interface,
    sockets: SocketSet<'static>,
    deadline: u64,
    /// The host's servers played in the guest (the loopback floor only).
    peer: Option<LoopPeer>,
}

impl<N: GuestNic> Stack<N> {
    /// One turn: host packets in, smoltcp, frames out (one signal at most). Returns whether
    /// smoltcp did anything.
    fn turn(&mut self) -> Result<bool, String> {
        self.nic.poll().map_err(err)?;
        let changed = self.iface.poll(now(), &mut self.nic, &mut self.sockets);
        if let Some(peer) = &mut self.peer {
            peer.serve(&mut self.sockets);
        }
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
                // Busy-poll a little before sleeping, as Linux's NAPI does with
                // napi_defer_hard_irqs: under a stream the next ACK or frame is usually a few
                // tens of µs away, and finding it by polling saves its interrupt.
                let until = tsc() + BUSY_POLL_US * tsc_hz() / 1_000_000;
                while tsc() < until {
                    if self.nic.poll().map_err(err)? > 0 {
                        return Ok(());
                    }
                }
                self.nic.wait();
                Ok(())
            }
        }
    }

    fn start_step(&mut self) {
        self.deadline = tsc() + STEP_SECONDS * tsc_hz();
    }
}

fn net(args: &str) -> Outcome {
    if tsc_hz() == 0 {
        return Err("net needs bench-tsc".into());
    }
    let (device, steps) = match args.split_once(',') {
        Some((first, rest)) if first.starts_with("dev=") => (&first[4..], rest),
        _ if args.starts_with("dev=") => (&args[4..], ""),
        _ => ("netvsc", args),
    };
    match device {
        "netvsc" => with_connection(|conn| {
            let offer = conn
                .find_offer(interface::NETWORK)
                .ok_or("no network adapter offered")?;
            let nic = NetvscNic::open_vmbus(
                conn,
                &KERNEL,
                offer.child_relid,
                128,
                NetvscConfig::default(),
            )
            .map_err(err)?;
            run_steps(nic, steps)
        })?,
        "loopback" => run_steps(LoopNic::default(), steps),
        // SAFETY: the testbed places a virtio-mmio network device at this GPA; the kernel
        // identity-maps the MMIO hole, and only this driver uses the window.
        "virtio-net" => run_steps(
            unsafe {
                guest_drivers::virtio_net::VirtioNet::<crate::platform::Kernel>::probe(
                    guest_abi::VIRTIO_NET_MMIO_GPA,
                    guest_abi::VIRTIO_NET_MMIO_SIZE as usize,
                )
            }
            .map_err(err)?,
            steps,
        ),
        "e1000" => {
            // SAFETY: the testbed places the e1000's register window at E1000_MMIO_GPA; the kernel
            // identity-maps the first 4 GiB, and only this driver uses the window.
            let regs = unsafe {
                guest_drivers::e1000::MmioRegisters::new(
                    core::ptr::NonNull::new(guest_abi::E1000_MMIO_GPA as *mut u8)
                        .ok_or("no window")?,
                )
            };
            let nic = guest_drivers::e1000::E1000Nic::open(
                crate::platform::Kernel,
                regs,
                guest_abi::E1000_VECTOR,
                guest_drivers::e1000::E1000Config::default(),
            )
            .map_err(err)?;
            run_steps(nic, steps)
        }
        other => Err(format!("unknown network device `{other}`")),
    }
}

/// Brings smoltcp up on `nic` (198.18.0.2/24) and runs the comma-separated `steps`, each
/// reported as `net-step=K name=NAME cycles=C tx=T rx=R signals=S` (TSC cycles, frames the NIC
/// sent and received and the notifications it sent the device during it). The loopback floor (a [`LoopNic`]) also owns the host's address and plays
/// its servers ([`LoopPeer`]).
fn run_steps<N: GuestNic + 'static>(mut nic: N, steps: &str) -> Outcome {
    let looped = (&nic as &dyn core::any::Any).is::<LoopNic>();
    let mac = nic.mac();
    println!(
        "net-mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} net-mtu={} net-link={}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        nic.mtu(),
        u8::from(nic.link_up())
    );
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    let mut iface = Interface::new(config, &mut nic, now());
    iface.update_ip_addrs(|addrs| {
        let [a, b, c, d] = GUEST_IP;
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), 24));
        if looped {
            let _ = addrs.push(IpCidr::new(HOST, 24));
        }
    });
    let mut sockets = SocketSet::new(Vec::new());
    let peer = looped.then(|| LoopPeer::new(&mut sockets));
    let mut stack = Stack {
        nic,
        iface,
        sockets,
        deadline: 0,
        peer,
    };
    for (k, step) in steps.split(',').filter(|s| !s.is_empty()).enumerate() {
        let (name, value) = step.split_once('=').unwrap_or((step, ""));
        stack.start_step();
        if let (Some(peer), "tcp-recv") = (&mut stack.peer, name) {
            peer.set_source_bytes(count(value)? << 20);
        }
        let before = stack.nic.counters();
        let started = tsc();
        crate::arch::mark(1000 + 2 * k as u32);
        match name {
            "udp" => udp_round_trips(&mut stack, count(value)?)?,
            "udp-flood" => udp_flood(&mut stack, count(value)?)?,
            "tcp-send" => tcp_send(&mut stack, count(value)? << 20)?,
            "tcp-recv" => tcp_recv(&mut stack)?,
            "until-bye" => until_bye(&mut stack)?,
            other => return Err(format!("unknown net step `{other}`")),
        }
        crate::arch::mark(1001 + 2 * k as u32);
        let cycles = tsc() - started;
        let after = stack.nic.counters();
        println!(
            "net-step={k} name={name} cycles={cycles} tx={} rx={} signals={}",
            after.tx_frames - before.tx_frames,
            after.rx_frames - before.rx_frames,
            after.signals - before.signals
        );
    }
    if let Some(peer) = &stack.peer {
        if let Some(at) = peer.tcp_sink_error {
            return Err(format!("loopback tcp sink: byte {at} differs"));
        }
        println!(
            "net-peer-udp-sink={} net-peer-tcp-sink={} net-peer-tcp-sink-hash={:016x}",
            peer.sink_datagrams, peer.tcp_sink_bytes, peer.tcp_sink_hash.0
        );
    }
    let s = stack.nic.counters();
    println!(
        "net-tx-frames={} net-rx-frames={} net-rx-dropped={} net-tx-busy={} net-rx-errors={}",
        s.tx_frames, s.rx_frames, s.rx_dropped, s.tx_busy, s.rx_errors
    );
    Ok(())
}

fn count(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("`{value}` is not a count"))
}

pub(super) use guest_abi::net::pattern;

/// FNV-1a over a stream, one chunk at a time.
#[derive(Debug)]
pub(super) struct Hash(pub u64);

impl Hash {
    pub(super) fn new() -> Self {
        Self(FNV_START)
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }
}

fn udp_socket<N: GuestNic>(stack: &mut Stack<N>, port: u16) -> Result<SocketHandle, String> {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let mut socket = udp::Socket::new(rx, tx);
    socket.bind(port).map_err(err)?;
    Ok(stack.sockets.add(socket))
}

fn udp_round_trips<N: GuestNic>(stack: &mut Stack<N>, n: u64) -> Outcome {
    let handle = udp_socket(stack, 7101)?;
    let peer = IpEndpoint::new(HOST, ECHO_PORT);
    let mut request = [0u8; DATAGRAM];
    let mut reply = [0u8; DATAGRAM];
    let mut resent = 0u64;
    let mut latencies = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let started = tsc();
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
                latencies.push(tsc() - started);
                break;
            }
            // Poll while a request is out (a lost one is resent; no interrupt would come).
            if !stack.turn()? {
                stack.check_deadline()?;
            }
        }
    }
    stack.sockets.remove(handle);
    latencies.sort_unstable();
    let ns = |q: usize| {
        let t = latencies.get((latencies.len() * q / 100).min(latencies.len().saturating_sub(1)));
        t.map_or(0, |t| u128::from(*t) * 1_000_000_000 / u128::from(tsc_hz()))
    };
    println!(
        "net-udp-roundtrips={n} net-udp-resent={resent} net-udp-p50-ns={} net-udp-p99-ns={}",
        ns(50),
        ns(99)
    );
    Ok(())
}

/// `udp-flood=N`: N 64-byte datagrams one way, then `end` until the host answers `done`.
fn udp_flood<N: GuestNic>(stack: &mut Stack<N>, n: u64) -> Outcome {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 64]);
    let mut socket = udp::Socket::new(rx, tx);
    socket.bind(FLOOD_REPLY_PORT).map_err(err)?;
    let handle = stack.sockets.add(socket);
    let peer = IpEndpoint::new(HOST, FLOOD_PORT);
    let mut datagram = [0u8; DATAGRAM];
    let mut sent = 0u64;
    let mut ends = 0u64;
    let mut last_end = 0u64;
    loop {
        let socket = stack.sockets.get_mut::<udp::Socket>(handle);
        while sent < n && socket.can_send() {
            datagram[..8].copy_from_slice(&sent.to_le_bytes());
            socket.send_slice(&datagram, peer).map_err(err)?;
            sent += 1;
        }
        let mut buf = [0u8; 8];
        if let Ok((len, _)) = socket.recv_slice(&mut buf) {
            if &buf[..len] == b"done" {
                break;
            }
        }
        // Once all are out, `end` every 50 ms until the host says it has counted.
        if sent == n && socket.can_send() && tsc() - last_end > tsc_hz() / 20 {
            socket.send_slice(b"end", peer).map_err(err)?;
            ends += 1;
            last_end = tsc();
        }
        // Polls, never sleeps: a lost `end` is sent again, and no interrupt would come.
        if !stack.turn()? {
            stack.check_deadline()?;
        }
    }
    stack.sockets.remove(handle);
    println!("net-udp-flood-sent={sent} net-udp-flood-ends={ends}");
    Ok(())
}

fn tcp_socket<N: GuestNic>(
    stack: &mut Stack<N>,
    port: u16,
    local: u16,
) -> Result<SocketHandle, String> {
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

fn tcp_send<N: GuestNic>(stack: &mut Stack<N>, bytes: u64) -> Outcome {
    let handle = tcp_socket(stack, TCP_SINK_PORT, 7102)?;
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

fn tcp_recv<N: GuestNic>(stack: &mut Stack<N>) -> Outcome {
    let handle = tcp_socket(stack, TCP_SOURCE_PORT, 7103)?;
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
                    stack.nic.counters()
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
    println!(
        "net-tcp-received={received} net-tcp-received-hash={:016x}",
        hash.0
    );
    Ok(())
}

fn until_bye<N: GuestNic>(stack: &mut Stack<N>) -> Outcome {
    let handle = udp_socket(stack, BYE_PORT)?;
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
