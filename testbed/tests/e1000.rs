//! The emulated e1000 end to end on real KVM — the register-driven baseline beside netvsc: the
//! guest kernel runs smoltcp over guest-drivers' e1000 driver, the host serves the NIC's MMIO
//! window with host-vsp's 82540EM model on a real TAP device inside a network namespace this test
//! makes (198.18.0.0/15 addresses only; removed afterwards, also on failure), and the Linux stack
//! in that namespace is the peer: it pings the guest, streams 64 MiB each way over TCP with both
//! ends checking the bytes, runs 10 000 UDP round trips and counts a one-way UDP flood. Unlike
//! netvsc, every packet costs the guest at least one user exit (the TDT doorbell or the ICR/IMC/
//! RDT/IMS of the interrupt that brings it in): each step asserts that over its mark window. Every
//! host-side loop is bounded in count and time.

mod net_support;

use std::sync::Arc;

use guest_abi::{E1000_MMIO_GPA, E1000_VECTOR};
use host_kvm::e1000::{E1000Placement, KvmE1000};
use host_vsp::emulated::e1000::{E1000Device, E1000Stats, E1000StatsHandle};
use host_vsp::net::netns::Netns;
use net_support::{
    bye, check_tcp_console, check_udp_console, flood_sink, flood_socket, kvm, mmio_exits,
    tcp_host_side, tcp_listeners, udp_echo, udp_echo_socket,
};
use testbed::GuestRun;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x18, 0x00, 0x02];
const STREAM_BYTES: u64 = 64 << 20;

/// A guest running `net:dev=e1000,<steps>` with the NIC's window at the GPA guest-abi names.
struct NetGuest(net_support::NetGuest<E1000StatsHandle>);

impl NetGuest {
    fn new(tag: &str, steps: &str) -> Option<Self> {
        let steps = format!("dev=e1000,{steps}");
        net_support::NetGuest::new(tag, &steps, |config, tap| {
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
            let placed = kvm.clone();
            config.configure(move |pc| {
                placed.register(pc);
                Ok(())
            });
            config.attach(move |partition, _| Ok(kvm.attach(partition)?));
            stats
        })
        .map(Self)
    }

    fn ns(&self) -> &Netns {
        &self.0.ns
    }

    /// The run and the NIC's counters, after which the NIC never failed.
    fn run(self, host_side: impl FnOnce(&Netns)) -> (GuestRun, E1000Stats) {
        let (run, stats) = self.0.run(host_side);
        assert_eq!(stats.failure(), None);
        (run, stats.get())
    }
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
        bye(ns);
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
    let (sink, source) = tcp_listeners(guest.ns());
    let (run, s) = guest.run(|_| {
        received_hash = tcp_host_side(&sink, &source, STREAM_BYTES);
    });
    check_tcp_console(&run, received_hash, STREAM_BYTES);
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
    let socket = udp_echo_socket(guest.ns());
    let mut echoed = 0;
    let (run, s) = guest.run(|_| echoed = udp_echo(&socket, 10_000));
    check_udp_console(&run, 10_000, echoed);
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
    let socket = flood_socket(guest.ns());
    let mut received = 0;
    let (run, s) = guest.run(|_| received = flood_sink(&socket, N).got);
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
