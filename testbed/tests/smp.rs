//! The guest kernel on several vCPUs (KVM): every vCPU comes up in the guest, runs work the BSP hands
//! it and takes its own interrupts — with the wake-up IPIs and each vCPU's exits counted exactly; every
//! vCPU does verified I/O at once on its own storvsc sub-channel, its completions interrupting it and no
//! other; a channel moved with MODIFYCHANNEL interrupts its new VP.

use std::sync::Arc;
use std::time::Duration;

use guest_abi::smp_io;
use host_vsp::backend::RamDisk;
use host_vsp::synthetic::ic::vsp::IcVsp;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};
use testbed::{GuestVm, GuestVmConfig};
use vmbus::protocol::{Guid, Version};

/// Generous: four vCPU threads time-share two cores here.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's wake-up IPI vector (`smp::WAKE_VECTOR` in the guest kernel).
const WAKES: &str = "wakes";

fn boot(cmdline: &str, vcpus: u32) -> GuestVmConfig {
    let mut config = GuestVmConfig::new(cmdline);
    config.vcpus = vcpus;
    config
}

#[test]
fn four_vcpus_come_up_and_each_reads_its_own_vp_index() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(boot("smp", 4)).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.ended_by, 0, "the BSP powers off");
    assert_eq!(run.console_number("smp-cpus"), 4);
    for vp in 0..4u64 {
        assert_eq!(run.console_number(&format!("smp-vp{vp}-index")), vp);
        assert_eq!(run.console_number(&format!("smp-vp{vp}-recorded")), vp);
    }
    // Each AP was woken exactly once, for its one job. The BSP was sent one IPI per AP coming online
    // and one per job finished (6), but IPIs of one vector that reach it while the previous one is
    // still pending (its IRR bit set, e.g. while it still runs the shim with interrupts off) are one
    // interrupt: at least one, at most six.
    for vp in 1..4u64 {
        assert_eq!(run.console_number(&format!("smp-vp{vp}-{WAKES}")), 1);
        assert_eq!(run.console_number(&format!("smp-vp{vp}-jobs")), 1);
    }
    let bsp_wakes = run.console_number(&format!("smp-vp0-{WAKES}"));
    assert!((1..=6).contains(&bsp_wakes), "{bsp_wakes}");
    // Exits are accounted per vCPU: each read its VP_INDEX MSR once (one user exit) and nothing else
    // left the kernel, but for the BSP's exit-port write and the others' stop.
    assert_eq!(run.stats.vcpus.len(), 4);
    for v in &run.stats.vcpus {
        let exits = &v.user_exits;
        assert_eq!(exits.msr_read, 1, "VP {}: {exits:?}", v.vp_index);
        assert_eq!(exits.msr_write, 0, "VP {}: {exits:?}", v.vp_index);
        let io = u64::from(v.vp_index == 0);
        assert_eq!(exits.io, io, "VP {}: {exits:?}", v.vp_index);
    }
}

#[test]
fn one_vcpu_guest_is_unchanged() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let run = GuestVm::new(boot("smp", 1)).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.console_number("smp-cpus"), 1);
    assert_eq!(run.console_number("smp-vp0-index"), 0);
    assert_eq!(run.console_number(&format!("smp-vp0-{WAKES}")), 0);
    assert!(!run.console.contains("smp-vp1"), "{}", run.console);
}

/// Verified I/Os (writes, and as many reads) each vCPU does per phase.
const PAGES: u64 = 24;

#[test]
fn every_vcpu_does_verified_io_on_its_own_sub_channel_and_takes_its_own_interrupts() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let disk = Arc::new(RamDisk::new(smp_io::DISK_BYTES));
    let config = StorvspConfig {
        max_sub_channels: 3,
        ..StorvspConfig::default()
    };
    let device = StorvspDevice::new(
        Guid::new(0x5350, 4, 4, [0; 8]),
        LunMap::new().with_backend(0, disk.clone()),
        config,
    );
    let channels = device.channel_stats();
    let mut config = boot(&format!("smp-io:{PAGES}"), 4);
    config.vmbus_device(Arc::new(device));
    let run = GuestVm::new(config).unwrap().run(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(run.console_number("smp-io-max-sub-channels"), 3);

    // Phase 1, all four at once: each vCPU's writes and reads (one at a time, so each completion found
    // an empty ring and interrupted) arrived on that vCPU only — every VMBus interrupt a VP took in the
    // phase is one of its own completions.
    let ios = 2 * PAGES;
    let mut relids = Vec::new();
    for vp in 0..4 {
        assert_eq!(run.console_number(&format!("smp-io-vp{vp}-ios")), ios);
        assert_eq!(
            run.console_number(&format!("smp-io-vp{vp}-interrupts")),
            ios,
            "VP {vp}\n{}",
            run.console
        );
        relids.push(run.console_number(&format!("smp-io-vp{vp}-relid")));
    }
    relids.dedup();
    assert_eq!(relids.len(), 4, "four channels: {relids:?}");

    // Phase 2: sub-channel 1, moved to VP 2 with MODIFYCHANNEL, interrupted VP 2 only.
    assert_eq!(
        run.console_number("smp-moved-relid"),
        relids[1],
        "{}",
        run.console
    );
    for vp in 0..4 {
        let want = if vp == 2 { ios } else { 0 };
        assert_eq!(
            run.console_number(&format!("smp-moved-vp{vp}-interrupts")),
            want,
            "VP {vp}\n{}",
            run.console
        );
    }

    // The host side agrees: one worker per channel, each interrupting once per request it completed
    // (the primary also carried the handshake: BEGIN_INIT, the protocol version, the properties,
    // END_INIT, READ CAPACITY and CREATE_SUB_CHANNELS).
    let channels = channels.lock().unwrap().clone();
    assert_eq!(channels.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (index, stats) in &channels {
        let requests = match index {
            0 => ios + 6,
            1 => 2 * ios,
            _ => ios,
        };
        assert_eq!(stats.worker.packets, requests, "channel {index}: {stats:?}");
        assert_eq!(
            stats.channel.interrupts, requests,
            "channel {index}: {stats:?}"
        );
        assert!(!stats.serving, "channel {index} still served");
    }

    // And the image holds every vCPU's pages.
    let image = disk.snapshot();
    for region in 0..=smp_io::MOVED_REGION {
        for io in 0..PAGES {
            let at = (smp_io::lba(region, io) * 512) as usize;
            for w in 0..(smp_io::IO_BYTES / 8) as u64 {
                let o = at + 8 * w as usize;
                let got = u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
                assert_eq!(got, smp_io::word(region, io, w), "region {region} io {io}");
            }
        }
    }
}

#[test]
fn heartbeats_on_a_four_vcpu_guest_keep_their_exact_counts() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    const HEARTBEATS: u64 = 2_000;
    const BURST: u64 = 100;
    let heartbeat = IcVsp::heartbeat(Guid::new(0x4842, 1, 1, [0; 8]), HEARTBEATS, BURST);
    let shutdown = IcVsp::shutdown(Guid::new(0x5344, 1, 1, [0; 8]));
    let (hb, sd) = (heartbeat.control(), shutdown.control());
    let mut config = boot("vmbus:ic", 4);
    config
        .vmbus_device(Arc::new(heartbeat))
        .vmbus_device(Arc::new(shutdown));
    let mut vm = GuestVm::new(config).unwrap();
    let service = vm.vmbus().clone();
    vm.start().unwrap();
    let negotiated = hb
        .wait_until(TIMEOUT, |s| s.negotiated)
        .expect("heartbeat IC negotiated");
    let before = vm.stats();
    let done = hb
        .wait_until(TIMEOUT, |s| {
            s.heartbeats_answered == HEARTBEATS || s.errors > 0
        })
        .expect("all heartbeats answered");
    let after = vm.stats();
    sd.wait_until(TIMEOUT, |s| s.negotiated)
        .expect("shutdown IC negotiated");
    sd.request_shutdown();
    assert!(sd
        .wait_until(TIMEOUT, |s| s.shutdown_acknowledged)
        .is_some());
    let run = vm.wait(TIMEOUT).unwrap();
    run.expect_success().unwrap();
    assert_eq!(service.version(), Some(Version::WIN10_V5_3));
    assert_eq!(done.errors, 0, "{:?}", done.last_error);
    assert_eq!(run.console_number("ic-heartbeats"), HEARTBEATS);
    let bursts = HEARTBEATS / BURST;
    assert_eq!(done.bursts, bursts);
    // As on one vCPU: one interrupt per burst (on VP 0, where the IC channels were opened), one signal
    // per burst plus the negotiations and the shutdown answer, and no user exit on any vCPU meanwhile
    // (the APs sleep in an in-kernel HLT).
    let channel = done.channel;
    let at = negotiated.channel_at_negotiated;
    assert_eq!(channel.interrupts - at.interrupts, bursts);
    assert_eq!(run.console_number("ic-signals"), bursts + 3);
    let window = after.delta(&before);
    assert_eq!(window.vcpus.len(), 4);
    for v in &window.vcpus {
        assert_eq!(
            v.user_exits.total(),
            0,
            "VP {}: {:?}",
            v.vp_index,
            v.user_exits
        );
    }
    // Each AP enabled its own SynIC when the guest connected (SIMP, SIEFP, SINT2, SCONTROL) and did
    // nothing else that left the kernel but for the final stop.
    for v in &run.stats.vcpus[1..] {
        assert_eq!(
            v.user_exits.msr_write, 4,
            "VP {}: {:?}",
            v.vp_index, v.user_exits
        );
        assert_eq!(
            v.user_exits.msr_read, 0,
            "VP {}: {:?}",
            v.vp_index, v.user_exits
        );
        assert_eq!(v.user_exits.io, 0, "VP {}: {:?}", v.vp_index, v.user_exits);
    }
}
