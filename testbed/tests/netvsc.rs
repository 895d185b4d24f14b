//! The synthetic NIC end to end on real KVM: the guest kernel runs smoltcp over guest-drivers'
//! netvsc, the host serves the channel with netvsp on a real TAP device inside a network namespace
//! this test makes (198.18.0.0/15 addresses only; removed afterwards, also on failure), and the
//! Linux stack in that namespace is the peer: it pings the guest, streams 64 MiB each way over
//! TCP with both ends checking the bytes, and runs 10 000 UDP round trips. Every host-side loop is
//! bounded in count and time.

mod net_support;

use std::sync::Arc;

use host_vsp::synthetic::netvsp::{NetvspConfig, NetvspDevice, NetvspStatsHandle};
use net_support::{
    bye, check_tcp_console, check_udp_console, kvm, tcp_host_side, tcp_listeners, udp_echo,
    udp_echo_socket, user_exits,
};
use vmbus::protocol::Guid;

const GUEST_MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x18, 0x00, 0x02];
const NIC_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"NETVSC0\0");
const STREAM_BYTES: u64 = 64 << 20;

type NetGuest = net_support::NetGuest<NetvspStatsHandle>;

/// A guest running `net:<steps>` over netvsp on the test's TAP.
fn guest(tag: &str, steps: &str) -> Option<NetGuest> {
    NetGuest::new(tag, steps, |config, tap| {
        let nic = NetvspDevice::new(NIC_INSTANCE, Box::new(tap), NetvspConfig::new(GUEST_MAC))
            .expect("netvsp device");
        let stats = nic.stats();
        config.vmbus_device(Arc::new(nic));
        stats
    })
}

#[test]
fn netvsc_answers_arp_and_icmp_echo_from_the_linux_stack() {
    if !kvm() {
        return;
    }
    let Some(guest) = guest("icmp", "until-bye") else {
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
    let Some(guest) = guest("tcp", "tcp-send=64,tcp-recv") else {
        return;
    };
    let mut received_hash = 0;
    let (sink, source) = tcp_listeners(&guest.ns);
    let (run, stats) = guest.run(|_| {
        received_hash = tcp_host_side(&sink, &source, STREAM_BYTES);
    });
    check_tcp_console(&run, received_hash, STREAM_BYTES);
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
    let Some(guest) = guest("udp", "udp=10000") else {
        return;
    };
    let socket = udp_echo_socket(&guest.ns);
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
        "udp: {} tx / {} rx frames, {} guest signals, {} interrupts",
        s.netvsp.tx_frames, s.netvsp.rx_frames, s.channel.guest_signals, s.channel.interrupts
    );
    assert!(
        s.netvsp.tx_frames >= 10_000 && s.netvsp.rx_frames >= 10_000,
        "{s:?}"
    );
}
