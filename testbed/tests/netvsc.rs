//! The synthetic NIC end to end on real KVM: the guest kernel runs smoltcp over guest-drivers'
//! netvsc, the host serves the channel with netvsp on a real TAP device inside a network namespace
//! this test makes (198.18.0.0/15 addresses only; removed afterwards, also on failure), and the
//! Linux stack in that namespace is the peer: it pings the guest, streams 64 MiB each way over
//! TCP with both ends checking the bytes, and runs 10 000 UDP round trips. Every host-side loop is
//! bounded in count and time.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_vsp::net::netns::Netns;
use host_vsp::net::TapNet;
use host_vsp::synthetic::netvsp::{NetvspConfig, NetvspDevice, NetvspStatsHandle};
use testbed::{GuestRun, GuestVm, GuestVmConfig};
use vmbus::protocol::Guid;

const TAP: &str = "vtap0";
const GUEST_MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x18, 0x00, 0x02];
const NIC_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"NETVSC0\0");
/// Longest any host-side wait lasts.
const WAIT: Duration = Duration::from_secs(120);
const STREAM_BYTES: u64 = 64 << 20;

fn kvm() -> bool {
    hypervisor_lite::testing::kvm_or_skip()
}

use guest_abi::net::{fnv1a, pattern, FNV_START};

/// A namespace with a tap whose Linux side is 198.18.0.1/24, the netvsp device on it, and a guest
/// running `net:<steps>`.
struct NetGuest {
    ns: Netns,
    vm: GuestVm,
    stats: NetvspStatsHandle,
}

impl NetGuest {
    fn new(tag: &str, steps: &str) -> Option<Self> {
        let ns = Netns::for_test(tag)?;
        let tap = ns.run(|| TapNet::create(TAP).expect("create the tap"));
        ns.ip(&["addr", "add", "198.18.0.1/24", "dev", TAP]);
        ns.ip(&["link", "set", "dev", TAP, "up"]);
        let nic = NetvspDevice::new(NIC_INSTANCE, Box::new(tap), NetvspConfig::new(GUEST_MAC))
            .expect("netvsp device");
        let stats = nic.stats();
        let tsc = testbed::bench::calibrate_tsc();
        let mut config = GuestVmConfig::new(format!("bench-tsc:{tsc} net:{steps}"));
        config.vmbus_device(Arc::new(nic));
        let vm = GuestVm::new(config).expect("boot the guest");
        Some(Self { ns, vm, stats })
    }

    /// Starts the guest, runs the host's side of the test, then waits for the guest. If the host
    /// side fails, the guest is stopped and its console shown before the failure goes on.
    fn run(mut self, host_side: impl FnOnce(&Netns)) -> (GuestRun, NetvspStatsHandle) {
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
        (run, self.stats)
    }
}

/// Accepts one connection within [`WAIT`].
fn accept_within(listener: &TcpListener) -> std::net::TcpStream {
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
fn bye(ns: &Netns) {
    ns.run(|| {
        let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
        socket.send_to(b"bye", "198.18.0.2:7009").unwrap();
    });
}

/// User exits of every reason between the guest's marks `start` and `end`.
fn user_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    let window = run.window(start, end).expect("marks");
    let u = &window.vcpus[0].user_exits;
    u.io + u.mmio + u.msr_read + u.msr_write + u.hlt + u.shutdown + u.other
}

#[test]
fn netvsc_answers_arp_and_icmp_echo_from_the_linux_stack() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("icmp", "until-bye") else {
        return;
    };
    let (run, stats) = guest.run(|ns| {
        // The kernel resolves the guest's address by ARP first; smoltcp must answer it.
        let rtts = ns.run(|| host_vsp::net::netns::ping([198, 18, 0, 2], 5));
        assert_eq!(rtts.len(), 5, "every echo request was answered");
        println!("icmp: round trips {rtts:?}");
        bye(ns);
    });
    assert_eq!(run.console_value("net-bye"), Some("1"));
    let s = stats.get();
    // ARP request + 5 echo requests + bye at least came in; the replies went out.
    assert!(s.netvsp.rx_frames >= 7, "{s:?}");
    assert!(s.netvsp.tx_frames >= 6, "{s:?}");
    assert_eq!(s.netvsp.rx_errors + s.netvsp.tx_errors, 0, "{s:?}");
    assert_eq!(
        user_exits(&run, 1000, 1001),
        0,
        "no user exit while serving the network"
    );
}

#[test]
fn netvsc_tcp_streams_64_mib_each_way_with_checked_bytes_and_few_signals() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("tcp", "tcp-send=64,tcp-recv") else {
        return;
    };
    let mut received_hash = 0;
    // Listening before the guest starts, so its first connect finds us.
    let (sink, source) = guest.ns.run(|| {
        (
            TcpListener::bind("198.18.0.1:7002").unwrap(),
            TcpListener::bind("198.18.0.1:7003").unwrap(),
        )
    });
    let (run, stats) = guest.run(|_| {
        // Guest → host: read until the guest closes, checking every byte.
        let mut conn = accept_within(&sink);
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
            assert!(got <= STREAM_BYTES && Instant::now() < deadline);
        }
        assert_eq!(got, STREAM_BYTES);
        received_hash = hash;
        drop(conn);
        // Host → guest: 64 MiB of the pattern, then close.
        let mut conn = accept_within(&source);
        conn.set_write_timeout(Some(WAIT)).unwrap();
        let mut sent = 0u64;
        while sent < STREAM_BYTES {
            let n = buf.len().min((STREAM_BYTES - sent) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            conn.write_all(&buf[..n]).unwrap();
            sent += n as u64;
        }
        drop(conn);
    });
    assert_eq!(run.console_number("net-tcp-sent"), STREAM_BYTES);
    assert_eq!(
        run.console_value("net-tcp-sent-hash"),
        Some(format!("{received_hash:016x}").as_str()),
        "what the host received hashes as what the guest sent"
    );
    assert_eq!(run.console_number("net-tcp-received"), STREAM_BYTES);
    let expected = (0..STREAM_BYTES).fold(FNV_START, |h, i| fnv1a(h, &[pattern(i)]));
    assert_eq!(
        run.console_value("net-tcp-received-hash"),
        Some(format!("{expected:016x}").as_str())
    );
    // No user exit on the data path (the marks' own exits are not counted).
    assert_eq!(user_exits(&run, 1000, 1001), 0, "tcp-send");
    assert_eq!(user_exits(&run, 1002, 1003), 0, "tcp-recv");
    let s = stats.get();
    let packets = s.netvsp.tx_frames + s.netvsp.rx_frames;
    let signals = s.channel.guest_signals as f64 / packets as f64;
    let interrupts = s.channel.interrupts as f64 / packets as f64;
    println!(
        "tcp: {packets} frames ({} tx, {} rx), {} guest signals ({signals:.4}/frame), {} \
         interrupts ({interrupts:.4}/frame), drops {:?}",
        s.netvsp.tx_frames,
        s.netvsp.rx_frames,
        s.channel.guest_signals,
        s.channel.interrupts,
        (
            s.netvsp.rx_dropped_no_buffer,
            s.netvsp.tx_dropped_backend_full
        ),
    );
    assert!(packets > 2 * (STREAM_BYTES / 1514), "{packets} frames");
    assert!(signals < 0.5, "{signals} guest signals per frame");
    assert!(interrupts < 0.5, "{interrupts} interrupts per frame");
}

#[test]
fn netvsc_udp_runs_10000_request_response_round_trips() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("udp", "udp=10000") else {
        return;
    };
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let socket = guest.ns.run(|| UdpSocket::bind("198.18.0.1:7001").unwrap());
    let (run, stats) = guest.run(|_| {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + WAIT;
        let mut answered = std::collections::BTreeSet::new();
        // The guest resends a request it got no answer to: stop once all 10 000 were answered.
        while answered.len() < 10_000 {
            let (n, from) = socket.recv_from(&mut buf).expect("a request within 10 s");
            answered.insert(u64::from_le_bytes(buf[..8].try_into().unwrap()));
            socket.send_to(&buf[..n], from).unwrap();
            echoed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(
                Instant::now() < deadline,
                "10 000 round trips within {WAIT:?}"
            );
        }
    });
    assert_eq!(run.console_number("net-udp-roundtrips"), 10_000);
    let resent = run.console_number("net-udp-resent");
    assert_eq!(
        echoed.load(std::sync::atomic::Ordering::Relaxed),
        10_000 + resent,
        "every request the guest sent was echoed once"
    );
    assert_eq!(
        user_exits(&run, 1000, 1001),
        0,
        "no user exit per round trip"
    );
    let s = stats.get();
    println!(
        "udp: {} tx / {} rx frames, {} guest signals, {} interrupts",
        s.netvsp.tx_frames, s.netvsp.rx_frames, s.channel.guest_signals, s.channel.interrupts
    );
    assert!(
        s.netvsp.tx_frames >= 10_000 && s.netvsp.rx_frames >= 10_000,
        "{s:?}"
    );
}
