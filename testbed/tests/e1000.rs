//! The emulated e1000 end to end on real KVM — the register-driven baseline beside netvsc: the
//! guest kernel runs smoltcp over guest-drivers' e1000 driver, the host serves the NIC's MMIO
//! window with host-vsp's 82540EM model on a real TAP device inside a network namespace this test
//! makes (198.18.0.0/15 addresses only; removed afterwards, also on failure), and the Linux stack
//! in that namespace is the peer: it pings the guest, streams 64 MiB each way over TCP with both
//! ends checking the bytes, runs 10 000 UDP round trips and counts a one-way UDP flood. Unlike
//! netvsc, every packet costs the guest at least one user exit (the TDT doorbell or the ICR/IMC/
//! RDT/IMS of the interrupt that brings it in): each step asserts that over its mark window. Every
//! host-side loop is bounded in count and time.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_abi::{E1000_MMIO_GPA, E1000_VECTOR};
use host_kvm::e1000::{E1000Placement, KvmE1000};
use host_vsp::emulated::e1000::{E1000Device, E1000Stats, E1000StatsHandle};
use host_vsp::net::netns::Netns;
use host_vsp::net::TapNet;
use testbed::{GuestRun, GuestVm, GuestVmConfig};

const TAP: &str = "etap0";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x18, 0x00, 0x02];
/// Longest any host-side wait lasts.
const WAIT: Duration = Duration::from_secs(120);
const STREAM_BYTES: u64 = 64 << 20;

fn kvm() -> bool {
    hypervisor_lite::testing::kvm_or_skip()
}

/// Byte `i` of the pattern stream (the guest's `net` scenario uses the same).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9) >> 13) as u8
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A namespace with a tap whose Linux side is 198.18.0.1/24, the e1000 on it, and a guest
/// running `net:dev=e1000,<steps>`.
struct NetGuest {
    ns: Netns,
    vm: GuestVm,
    stats: E1000StatsHandle,
}

impl NetGuest {
    fn new(tag: &str, steps: &str) -> Option<Self> {
        let ns = Netns::for_test(tag)?;
        let tap = ns.run(|| TapNet::create(TAP).expect("create the tap"));
        ns.ip(&["addr", "add", "198.18.0.1/24", "dev", TAP]);
        ns.ip(&["link", "set", "dev", TAP, "up"]);
        let nic = Arc::new(E1000Device::new(GUEST_MAC, Box::new(tap)).expect("e1000 device"));
        let stats = nic.stats_handle();
        let kvm = KvmE1000::new(
            nic,
            E1000Placement {
                base: E1000_MMIO_GPA,
                vector: E1000_VECTOR,
                apic_id: 0,
            },
        );
        let tsc = testbed::bench::calibrate_tsc();
        let mut config = GuestVmConfig::new(format!("bench-tsc:{tsc} net:dev=e1000,{steps}"));
        let placed = kvm.clone();
        config.configure(move |pc| {
            placed.register(pc);
            Ok(())
        });
        config.attach(move |partition, _| Ok(kvm.attach(partition)?));
        let vm = GuestVm::new(config).expect("boot the guest");
        Some(Self { ns, vm, stats })
    }

    /// Starts the guest, runs the host's side of the test, then waits for the guest. If the host
    /// side fails, the guest is stopped and its console shown before the failure goes on.
    fn run(mut self, host_side: impl FnOnce(&Netns)) -> (GuestRun, E1000Stats) {
        self.vm.start().expect("start the guest");
        let ns = &self.ns;
        let host = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host_side(ns)));
        if let Err(panic) = host {
            let run = self
                .vm
                .wait(Duration::from_millis(1))
                .expect("stop the guest");
            eprintln!("--- guest console ---\n{}", run.console);
            eprintln!("--- e1000 ---\n{:?}", self.stats.get());
            std::panic::resume_unwind(panic);
        }
        let run = self.vm.wait(WAIT).expect("the guest run");
        if let Err(e) = run.expect_success() {
            panic!("{e}\n{:?}", self.stats.get());
        }
        assert_eq!(self.stats.failure(), None);
        (run, self.stats.get())
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

/// MMIO user exits between the guest's marks `start` and `end` (every one an e1000 register
/// access: the NIC is the guest's only MMIO device).
fn mmio_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0]
        .user_exits
        .mmio
}

/// CPU time of the vCPU thread over a mark window, in seconds.
fn seconds(run: &GuestRun, start: u32, end: u32) -> f64 {
    run.cpu_window(start, end)
        .map_or(0.0, |w| w.vcpu.as_secs_f64())
}

fn assert_clean(s: &E1000Stats) {
    assert_eq!(s.failures, 0, "{s:?}");
    assert_eq!(s.tx_backend_errors + s.rx_backend_errors, 0, "{s:?}");
    assert_eq!(s.tx_dropped_bad_frame + s.rx_too_large, 0, "{s:?}");
}

#[test]
fn e1000_answers_arp_and_icmp_echo_from_the_linux_stack() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("e1k-icmp", "until-bye") else {
        return;
    };
    let (run, s) = guest.run(|ns| {
        let rtts = ns.run(|| host_vsp::net::netns::ping([198, 18, 0, 2], 5));
        assert_eq!(rtts.len(), 5, "every echo request was answered");
        println!("icmp: round trips {rtts:?}");
        ns.run(|| {
            let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
            socket.send_to(b"bye", "198.18.0.2:7009").unwrap();
        });
    });
    assert_eq!(run.console_value("net-bye"), Some("1"));
    assert_eq!(run.console_value("net-mac"), Some("52:54:00:18:00:02"));
    assert_clean(&s);
    // ARP request + 5 echo requests + bye at least came in; the replies went out.
    assert!(s.rx_frames >= 7 && s.tx_frames >= 6, "{s:?}");
    let exits = mmio_exits(&run, 1000, 1001);
    println!("icmp: {exits} MMIO exits, {s:?}");
    assert!(
        exits >= s.rx_frames + s.tx_frames,
        "{exits} exits for {} frames",
        s.rx_frames + s.tx_frames
    );
}

#[test]
fn e1000_tcp_streams_64_mib_each_way_with_checked_bytes() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("e1k-tcp", "tcp-send=64,tcp-recv") else {
        return;
    };
    let mut received_hash = 0;
    let (sink, source) = guest.ns.run(|| {
        (
            TcpListener::bind("198.18.0.1:7002").unwrap(),
            TcpListener::bind("198.18.0.1:7003").unwrap(),
        )
    });
    let (run, s) = guest.run(|_| {
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
    assert_clean(&s);
    let packets = s.tx_frames + s.rx_frames;
    assert!(packets > 2 * (STREAM_BYTES / 1514), "{packets} frames");
    let (send_exits, recv_exits) = (mmio_exits(&run, 1000, 1001), mmio_exits(&run, 1002, 1003));
    let exits = send_exits + recv_exits;
    println!(
        "tcp: {packets} frames ({} tx, {} rx) in {:.1} s + {:.1} s of vCPU time, {send_exits} + {recv_exits} \
         MMIO exits ({:.2}/frame), {} interrupts ({} throttled), registers {:?}, drops {:?}",
        s.tx_frames,
        s.rx_frames,
        seconds(&run, 1000, 1001),
        seconds(&run, 1002, 1003),
        exits as f64 / packets as f64,
        s.interrupts,
        s.interrupts_throttled,
        s.registers,
        (s.tx_dropped_backend_full, s.rx_stalls),
    );
    assert!(exits >= packets, "{exits} exits for {packets} frames");
}

#[test]
fn e1000_udp_runs_10000_request_response_round_trips() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("e1k-udp", "udp=10000") else {
        return;
    };
    let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let socket = guest.ns.run(|| UdpSocket::bind("198.18.0.1:7001").unwrap());
    let (run, s) = guest.run(|_| {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + WAIT;
        let mut answered = std::collections::BTreeSet::new();
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
    assert_clean(&s);
    assert!(s.tx_frames >= 10_000 && s.rx_frames >= 10_000, "{s:?}");
    let exits = mmio_exits(&run, 1000, 1001);
    println!(
        "udp: {} tx / {} rx frames, {exits} MMIO exits ({:.2}/round trip), {} interrupts, p50 {} \
         ns p99 {} ns, registers {:?}",
        s.tx_frames,
        s.rx_frames,
        exits as f64 / 10_000.0,
        s.interrupts,
        run.console_number("net-udp-p50-ns"),
        run.console_number("net-udp-p99-ns"),
        s.registers
    );
    // A round trip is two packets: at least a doorbell out and an interrupt's accesses in.
    assert!(exits >= 2 * 10_000, "{exits} exits for 10 000 round trips");
}

#[test]
fn e1000_udp_flood_of_20000_datagrams_arrives_whole() {
    const N: u64 = 20_000;
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("e1k-flood", &format!("udp-flood={N}")) else {
        return;
    };
    let socket = guest.ns.run(|| UdpSocket::bind("198.18.0.1:7004").unwrap());
    let mut seen = vec![false; N as usize];
    let mut received = 0u64;
    let (run, s) = guest.run(|_| {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + WAIT;
        loop {
            let (n, from) = socket.recv_from(&mut buf).expect("a datagram within 10 s");
            assert!(Instant::now() < deadline, "the flood within {WAIT:?}");
            if &buf[..n] == b"end" {
                // Everything the guest sent came before its first `end` (one path, in order).
                socket.send_to(b"done", (from.ip(), 7104)).unwrap();
                break;
            }
            assert_eq!(n, 64, "datagram size");
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
            assert!(seq < N && !seen[seq as usize], "datagram {seq} is new");
            assert!(buf[8..64].iter().all(|b| *b == 0));
            seen[seq as usize] = true;
            received += 1;
        }
    });
    assert_eq!(run.console_number("net-udp-flood-sent"), N);
    assert_eq!(received, N, "every datagram arrived once");
    assert_clean(&s);
    let exits = mmio_exits(&run, 1000, 1001);
    println!(
        "udp-flood: {N} datagrams in {:.2} s of vCPU time, {exits} MMIO exits ({:.2}/datagram), {} TDT \
         writes, {} interrupts, {s:?}",
        seconds(&run, 1000, 1001),
        exits as f64 / N as f64,
        s.registers.tdt_writes,
        s.interrupts
    );
    assert!(exits >= N, "{exits} exits for {N} datagrams");
}
