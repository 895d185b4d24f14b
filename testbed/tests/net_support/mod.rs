//! What the NIC KVM tests (netvsc, virtio-net, e1000) share: a guest running `net:<steps>` with a
//! NIC on a TAP inside the test's own namespace ([`NetGuest`]), and the host's side of each step —
//! the TCP streams checked byte by byte ([`tcp_host_side`], [`check_tcp_console`]), the UDP echo
//! ([`udp_echo`], [`check_udp_console`]), `bye` — with the mark-window counters they assert.
//! Every host loop is bounded in count and time ([`WAIT`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use guest_abi::net::{fnv1a, pattern, FNV_START};
use host_vsp::net::netns::Netns;
use host_vsp::net::TapNet;
use testbed::{GuestRun, GuestVm, GuestVmConfig};

/// Longest any host-side wait lasts.
pub const WAIT: Duration = Duration::from_secs(120);

pub fn kvm() -> bool {
    hypervisor_lite::testing::kvm_or_skip()
}

/// A namespace with a TAP whose Linux side is 198.18.0.1/24, a NIC on it (`S`: what the test
/// keeps of it, e.g. its stats handle), and a guest running `net:<steps>`.
pub struct NetGuest<S> {
    pub ns: Netns,
    vm: GuestVm,
    pub device: S,
}

impl<S> NetGuest<S> {
    /// `None` (after one line) where no namespace can be made, outside CI.
    pub fn new(
        tag: &str,
        steps: &str,
        attach: impl FnOnce(&mut GuestVmConfig, TapNet) -> S,
    ) -> Option<Self> {
        const TAP: &str = "ntap0";
        let ns = Netns::for_test(tag)?;
        let tap = ns.run(|| TapNet::create(TAP).expect("create the tap"));
        ns.ip(&["addr", "add", "198.18.0.1/24", "dev", TAP]);
        ns.ip(&["link", "set", "dev", TAP, "up"]);
        let tsc = testbed::bench::calibrate_tsc();
        let mut config = GuestVmConfig::new(format!("bench-tsc:{tsc} net:{steps}"));
        let device = attach(&mut config, tap);
        let vm = GuestVm::new(config).expect("boot the guest");
        Some(Self { ns, vm, device })
    }

    /// Starts the guest, runs the host's side of the test, then waits for the guest, which must
    /// succeed. If the host side fails, the guest is stopped and its console shown first.
    pub fn run(mut self, host_side: impl FnOnce(&Netns)) -> (GuestRun, S) {
        self.vm.start().expect("start the guest");
        let ns = &self.ns;
        let host = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host_side(ns)));
        if let Err(panic) = host {
            let run = self
                .vm
                .wait(Duration::from_millis(1))
                .expect("stop the guest");
            eprintln!("--- guest console ---\n{}", run.console);
            std::panic::resume_unwind(panic);
        }
        let run = self.vm.wait(WAIT).expect("the guest run");
        run.expect_success().unwrap();
        (run, self.device)
    }
}

/// Accepts one connection within [`WAIT`].
pub fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                return conn;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection from the guest in {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Says `bye` to the guest's `until-bye` step.
pub fn bye(ns: &Netns) {
    ns.run(|| {
        let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
        socket.send_to(b"bye", "198.18.0.2:7009").unwrap();
    });
}

/// The TCP sink (7002) and source (7003), listening before the guest starts so its first
/// connect finds them.
pub fn tcp_listeners(ns: &Netns) -> (TcpListener, TcpListener) {
    ns.run(|| {
        (
            TcpListener::bind("198.18.0.1:7002").unwrap(),
            TcpListener::bind("198.18.0.1:7003").unwrap(),
        )
    })
}

/// The host's side of `tcp-send=MIB,tcp-recv`: reads `bytes` from the guest on `sink` until it
/// closes, checking every byte against the pattern, then sends `bytes` of the pattern on
/// `source` and closes. Returns the hash of what it received.
pub fn tcp_host_side(sink: &TcpListener, source: &TcpListener, bytes: u64) -> u64 {
    let mut conn = accept_within(sink);
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let (mut got, mut hash) = (0u64, FNV_START);
    let deadline = Instant::now() + WAIT;
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + i as u64), "guest byte {}", got + i as u64);
        }
        hash = fnv1a(hash, &buf[..n]);
        got += n as u64;
        assert!(got <= bytes && Instant::now() < deadline);
    }
    assert_eq!(got, bytes);
    drop(conn);
    let mut conn = accept_within(source);
    conn.set_write_timeout(Some(WAIT)).unwrap();
    let mut sent = 0u64;
    while sent < bytes {
        let n = buf.len().min((bytes - sent) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        conn.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    hash
}

/// The guest's side of the same streams, from its console: it sent `bytes` hashing as what the
/// host received, and received `bytes` of the pattern, each checked.
pub fn check_tcp_console(run: &GuestRun, received_hash: u64, bytes: u64) {
    assert_eq!(run.console_number("net-tcp-sent"), bytes);
    assert_eq!(
        run.console_value("net-tcp-sent-hash"),
        Some(format!("{received_hash:016x}").as_str()),
        "what the host received hashes as what the guest sent"
    );
    assert_eq!(run.console_number("net-tcp-received"), bytes);
    let expected = (0..bytes).fold(FNV_START, |h, i| fnv1a(h, &[pattern(i)]));
    assert_eq!(
        run.console_value("net-tcp-received-hash"),
        Some(format!("{expected:016x}").as_str())
    );
}

/// The UDP echo server (7001), bound before the guest starts.
pub fn udp_echo_socket(ns: &Netns) -> UdpSocket {
    ns.run(|| UdpSocket::bind("198.18.0.1:7001").unwrap())
}

/// Echoes the guest's requests until all `n` sequence numbers were answered (the guest resends
/// a request it got no answer to); returns the datagrams echoed.
pub fn udp_echo(socket: &UdpSocket, n: usize) -> u64 {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    let mut answered = std::collections::BTreeSet::new();
    let mut echoed = 0;
    while answered.len() < n {
        let (len, from) = socket.recv_from(&mut buf).expect("a request within 10 s");
        answered.insert(u64::from_le_bytes(buf[..8].try_into().unwrap()));
        socket.send_to(&buf[..len], from).unwrap();
        echoed += 1;
        assert!(Instant::now() < deadline, "{n} round trips within {WAIT:?}");
    }
    echoed
}

/// The guest counted `n` round trips, and every request it sent (resends included) was echoed once.
pub fn check_udp_console(run: &GuestRun, n: u64, echoed: u64) {
    assert_eq!(run.console_number("net-udp-roundtrips"), n);
    let resent = run.console_number("net-udp-resent");
    assert_eq!(
        echoed,
        n + resent,
        "every request the guest sent was echoed once"
    );
}

/// User exits of every reason between the guest's marks `start` and `end`.
pub fn user_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0]
        .user_exits
        .total()
}

/// MMIO user exits between the marks.
pub fn mmio_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0]
        .user_exits
        .mmio
}

/// Interrupts KVM injected between the marks (re-injections included: an upper bound).
pub fn interrupts(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0].irq_injections
}

/// VM exits (KVM's `exits`, host noise included) between the marks.
pub fn vm_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0].kvm_exits
}

/// What the flood's sink saw.
#[derive(Debug, Default)]
pub struct Flood {
    /// Distinct datagrams received.
    pub got: u64,
    /// Every datagram came right after the one before.
    pub in_order: bool,
}

/// The UDP flood's sink (7004), bound before the guest starts.
pub fn flood_socket(ns: &Netns) -> UdpSocket {
    ns.run(|| UdpSocket::bind("198.18.0.1:7004").unwrap())
}

/// The host's side of `udp-flood=N`: counts 64-byte datagrams (each new, sequence below `n`, zero
/// payload) until the guest's `end` once all arrived, answering each `end` with `done` (at most 20).
pub fn flood_sink(socket: &UdpSocket, n: u64) -> Flood {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    let mut seen = vec![false; n as usize];
    let mut flood = Flood {
        got: 0,
        in_order: true,
    };
    let mut last = None::<u64>;
    let mut answered = 0;
    while answered < 20 {
        let (len, from) = socket.recv_from(&mut buf).expect("a datagram within 10 s");
        assert!(Instant::now() < deadline, "the flood within {WAIT:?}");
        if &buf[..len] == b"end" {
            socket.send_to(b"done", (from.ip(), 7104)).unwrap();
            answered += 1;
            if flood.got == n {
                break;
            }
            continue;
        }
        assert_eq!(len, 64, "a flood datagram is 64 bytes");
        let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert!(seq < n, "sequence {seq}");
        assert!(!seen[seq as usize], "datagram {seq} twice");
        assert_eq!(&buf[8..64], &[0u8; 56][..], "datagram {seq} payload");
        seen[seq as usize] = true;
        flood.in_order &= last.is_none_or(|l| seq == l + 1);
        last = Some(seq);
        flood.got += 1;
    }
    flood
}
