//! virtio-net end to end on real KVM — the best-practice baseline netvsc is measured against: the guest
//! kernel runs smoltcp over guest-drivers' virtio-net (Linux's discipline: doorbells and refills decided
//! by `vring_need_event`, interrupts on only while the driver sleeps), the host serves it with
//! host-vsp's virtio-net on the same kind of TAP device netvsp uses, kicks caught by KVM ioeventfds and
//! interrupts injected through an irqfd, inside a network namespace this test makes (198.18.0.0/15
//! addresses only; removed afterwards, also on failure). The Linux stack in that namespace is the peer:
//! it pings the guest, streams 64 MiB each way over TCP with both ends checking the bytes, runs 10 000
//! UDP round trips and takes a one-way UDP flood. Every host-side loop is bounded in count and time.
//!
//! Per step (the guest's marks 1000 + 2k / 1001 + 2k): no user exit at all, and on the TCP streams at
//! most 0.05 interrupts per packet — counted by KVM (`irq_injections`, which also counts re-injections,
//! so it bounds the device's interrupts from above) over at least the data frames the stream needs.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_kvm::virtio_net::{KvmVirtioNet, VirtioNetPlacement};
use host_vsp::net::netns::Netns;
use host_vsp::net::TapNet;
use host_vsp::virtio::net::{VirtioNetConfig, VirtioNetDevice, VirtioNetStatsHandle};
use testbed::{GuestRun, GuestVm, GuestVmConfig};

const TAP: &str = "vntap0";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x18, 0x00, 0x02];
/// Longest any host-side wait lasts.
const WAIT: Duration = Duration::from_secs(120);
const STREAM_BYTES: u64 = 64 << 20;
/// Most TCP payload bytes one frame carries (1500 - 20 - 20).
const MSS: u64 = 1460;

fn kvm() -> bool {
    hypervisor_lite::testing::kvm_or_skip()
}

use guest_abi::net::{fnv1a, pattern, FNV_START};

/// A namespace with a tap whose Linux side is 198.18.0.1/24, the virtio-net device on it at the
/// window guest-abi names, and a guest running `net:dev=virtio-net,<steps>`.
struct NetGuest {
    ns: Netns,
    vm: GuestVm,
    stats: VirtioNetStatsHandle,
}

impl NetGuest {
    fn new(tag: &str, steps: &str) -> Option<Self> {
        let ns = Netns::for_test(tag)?;
        let tap = ns.run(|| TapNet::create(TAP).expect("create the tap"));
        ns.ip(&["addr", "add", "198.18.0.1/24", "dev", TAP]);
        ns.ip(&["link", "set", "dev", TAP, "up"]);
        let device = VirtioNetDevice::new(Box::new(tap), VirtioNetConfig::new(GUEST_MAC))
            .expect("virtio-net device");
        let stats = device.stats();
        let placement = VirtioNetPlacement {
            base: guest_abi::VIRTIO_NET_MMIO_GPA,
            vector: guest_abi::VIRTIO_NET_VECTOR,
            ..VirtioNetPlacement::default()
        };
        let kvm = KvmVirtioNet::new(Arc::new(device), placement);
        let for_attach = kvm.clone();
        let tsc = testbed::bench::calibrate_tsc();
        let mut config = GuestVmConfig::new(format!("bench-tsc:{tsc} net:dev=virtio-net,{steps}"));
        config.configure(move |pc| {
            kvm.register(pc);
            Ok(())
        });
        config.attach(move |partition, _| {
            for_attach.attach(partition)?;
            Ok(())
        });
        let vm = GuestVm::new(config).expect("boot the guest");
        Some(Self { ns, vm, stats })
    }

    /// Starts the guest, runs the host's side of the test, then waits for the guest. If the host
    /// side fails, the guest is stopped and its console shown before the failure goes on.
    fn run(mut self, host_side: impl FnOnce(&Netns)) -> (GuestRun, VirtioNetStatsHandle) {
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
        let s = self.stats.get();
        assert_eq!(s.failed, 0, "no chain broke the rules: {s:?}");
        assert_eq!(s.register_notifies, 0, "every kick hit an ioeventfd: {s:?}");
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

/// Interrupts KVM injected between the marks (re-injections included: an upper bound).
fn interrupts(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0].irq_injections
}

/// VM exits (KVM's `exits`, host noise included) between the marks.
fn vm_exits(run: &GuestRun, start: u32, end: u32) -> u64 {
    run.window(start, end).expect("marks").vcpus[0].kvm_exits
}

#[test]
fn virtio_net_answers_arp_and_icmp_echo_from_the_linux_stack() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("vn-icmp", "until-bye") else {
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
    assert_eq!(run.console_value("net-mac"), Some("52:54:00:18:00:02"));
    assert_eq!(run.console_value("net-link"), Some("1"));
    let s = stats.get();
    // ARP request + 5 echo requests + bye at least came in; the replies went out.
    assert!(s.rx_frames >= 7, "{s:?}");
    assert!(s.tx_frames >= 6, "{s:?}");
    assert_eq!(s.rx_errors + s.tx_errors, 0, "{s:?}");
    assert_eq!(
        user_exits(&run, 1000, 1001),
        0,
        "no user exit while serving the network"
    );
}

#[test]
fn virtio_net_tcp_streams_64_mib_each_way_with_checked_bytes_and_few_interrupts() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("vn-tcp", "tcp-send=64,tcp-recv") else {
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
    let s = stats.get();
    println!("tcp: device {s:?}");
    // Each stream needs at least this many data frames (its ACKs come on top).
    let data_frames = STREAM_BYTES.div_ceil(MSS);
    for (step, start) in [("tcp-send", 1000), ("tcp-recv", 1002)] {
        let irqs = interrupts(&run, start, start + 1);
        let exits = vm_exits(&run, start, start + 1);
        let per_packet = irqs as f64 / data_frames as f64;
        println!(
            "{step}: {irqs} interrupts ({per_packet:.4}/data frame), {exits} VM exits ({:.3}/data \
             frame), {} user exits",
            exits as f64 / data_frames as f64,
            user_exits(&run, start, start + 1)
        );
        assert_eq!(user_exits(&run, start, start + 1), 0, "{step}: user exits");
        assert!(
            per_packet <= 0.05,
            "{step}: {per_packet} interrupts per packet"
        );
    }
    assert!(
        s.tx_frames >= data_frames && s.rx_frames >= data_frames,
        "{s:?}"
    );
    assert_eq!(
        s.rx_errors + s.tx_errors + s.tx_dropped_bad_length,
        0,
        "{s:?}"
    );
}

#[test]
fn virtio_net_udp_runs_10000_request_response_round_trips() {
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("vn-udp", "udp=10000") else {
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
        "udp: p50 {} ns, p99 {} ns, {} interrupts in the step, device {s:?}",
        run.console_number("net-udp-p50-ns"),
        run.console_number("net-udp-p99-ns"),
        interrupts(&run, 1000, 1001)
    );
    assert!(s.tx_frames >= 10_000 && s.rx_frames >= 10_000, "{s:?}");
}

/// Makes `socket`'s receive buffer `bytes` large, past `rmem_max` (the test runs as root).
fn big_receive_buffer(socket: &UdpSocket, bytes: i32) {
    // SAFETY: a valid socket fd and a pointer to an i32 of the size passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

#[test]
fn virtio_net_carries_a_udp_flood_of_10000_datagrams_in_order_without_exits() {
    const N: u64 = 10_000;
    if !kvm() {
        return;
    }
    let Some(guest) = NetGuest::new("vn-flood", &format!("udp-flood={N}")) else {
        return;
    };
    let socket = guest.ns.run(|| UdpSocket::bind("198.18.0.1:7004").unwrap());
    big_receive_buffer(&socket, 16 << 20);
    let mut seen = vec![false; N as usize];
    let mut got = 0u64;
    let mut in_order = true;
    let mut last = None::<u64>;
    let (run, stats) = guest.run(|_| {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 2048];
        let mut answered = 0;
        // Count datagrams until the guest's `end`; answer `done` (again for each `end`, at most 20).
        while answered < 20 {
            let (n, from) = socket.recv_from(&mut buf).expect("a datagram within 10 s");
            assert!(Instant::now() < deadline, "the flood within {WAIT:?}");
            if &buf[..n] == b"end" {
                socket.send_to(b"done", (from.ip(), 7104)).unwrap();
                answered += 1;
                if got == N {
                    break;
                }
                continue;
            }
            assert_eq!(n, 64, "a flood datagram is 64 bytes");
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
            assert!(seq < N, "sequence {seq}");
            assert!(!seen[seq as usize], "datagram {seq} twice");
            assert_eq!(&buf[8..64], &[0u8; 56][..], "datagram {seq} payload");
            seen[seq as usize] = true;
            in_order &= last.is_none_or(|l| seq == l + 1);
            last = Some(seq);
            got += 1;
        }
    });
    let s = stats.get();
    println!(
        "udp-flood: {got} of {N} received (in order: {in_order}), {} interrupts and {} VM exits in \
         the step, device {s:?}",
        interrupts(&run, 1000, 1001),
        vm_exits(&run, 1000, 1001)
    );
    assert_eq!(run.console_number("net-udp-flood-sent"), N);
    assert_eq!(
        s.tx_dropped_backend_full, 0,
        "the tap took every frame: {s:?}"
    );
    assert_eq!(got, N, "every datagram arrived once");
    assert!(in_order, "one queue, one tap: datagrams arrive in order");
    assert_eq!(user_exits(&run, 1000, 1001), 0, "no user exit per datagram");
}
