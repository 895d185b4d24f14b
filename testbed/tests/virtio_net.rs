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

mod net_support;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use host_kvm::virtio_net::{KvmVirtioNet, VirtioNetPlacement};
use host_vsp::virtio::net::{VirtioNetConfig, VirtioNetDevice, VirtioNetStatsHandle};
use net_support::{
    bye, check_tcp_console, check_udp_console, flood_sink, flood_socket, interrupts, kvm,
    tcp_host_side, tcp_listeners, udp_echo, udp_echo_socket, user_exits, vm_exits,
};
use testbed::GuestRun;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x18, 0x00, 0x02];
const STREAM_BYTES: u64 = 64 << 20;
/// TCP payload per full-size frame.
const MSS: u64 = 1460;

/// A guest running `net:dev=virtio-net,<steps>` with the device on the test's TAP at the window
/// guest-abi names.
struct NetGuest(net_support::NetGuest<VirtioNetStatsHandle>);

impl NetGuest {
    fn new(tag: &str, steps: &str) -> Option<Self> {
        let steps = format!("dev=virtio-net,{steps}");
        net_support::NetGuest::new(tag, &steps, |config, tap| {
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
            config.configure(move |pc| {
                kvm.register(pc);
                Ok(())
            });
            config.attach(move |partition, _| {
                for_attach.attach(partition)?;
                Ok(())
            });
            stats
        })
        .map(Self)
    }

    fn ns(&self) -> &host_vsp::net::netns::Netns {
        &self.0.ns
    }

    /// The run, after which no chain broke the rules and every kick hit an ioeventfd.
    fn run(
        self,
        host_side: impl FnOnce(&host_vsp::net::netns::Netns),
    ) -> (GuestRun, VirtioNetStatsHandle) {
        let (run, stats) = self.0.run(host_side);
        let s = stats.get();
        assert_eq!(s.failed, 0, "no chain broke the rules: {s:?}");
        assert_eq!(s.register_notifies, 0, "every kick hit an ioeventfd: {s:?}");
        (run, stats)
    }
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
    let (sink, source) = tcp_listeners(guest.ns());
    let (run, stats) = guest.run(|_| {
        received_hash = tcp_host_side(&sink, &source, STREAM_BYTES);
    });
    check_tcp_console(&run, received_hash, STREAM_BYTES);
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
    let socket = udp_echo_socket(guest.ns());
    let mut echoed = 0;
    let (run, stats) = guest.run(|_| echoed = udp_echo(&socket, 10_000));
    check_udp_console(&run, 10_000, echoed);
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
    let socket = flood_socket(guest.ns());
    big_receive_buffer(&socket, 16 << 20);
    let mut flood = net_support::Flood::default();
    let (run, stats) = guest.run(|_| flood = flood_sink(&socket, N));
    let net_support::Flood { got, in_order } = flood;
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
