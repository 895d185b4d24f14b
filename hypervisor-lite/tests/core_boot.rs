//! Core partition tests on real KVM: 64-bit and 32-bit guests print over COM1, four vCPUs report their VP index,
//! APIC id and stack, port-I/O/MMIO/MSR handlers see exactly the guest's accesses and their replies reach the
//! guest, CPUID overrides replace KVM's signature, a triple fault is reported with registers, a halted
//! partition is stopped from another thread, a guest given as bytes boots like one from a file, and missing KVM
//! is one typed error.

mod core_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use core_support::Recorder;
use hypervisor_lite::boot::{self, BootMode};
use hypervisor_lite::testing::{guest_elf, kvm_or_skip};
use hypervisor_lite::{
    Error, KvmUnavailableCause, MsrHandler, PartitionConfig, VcpuCtx, VcpuOutcome,
};
use kvm_bindings::kvm_cpuid_entry2;

const TIMEOUT: Duration = Duration::from_secs(20);

fn exit_codes(outcomes: &[VcpuOutcome]) -> Vec<Option<u32>> {
    outcomes.iter().map(VcpuOutcome::exit_code).collect()
}

#[test]
fn long_mode_guest_prints_over_serial() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("hello64"));
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(exit_codes(&out), [Some(0x64)], "{out:?}");
    let msg = "hello from 64-bit long mode\n";
    assert_eq!(p.serial_output().text(), msg);
    let s = p.stats();
    // One exit per byte plus the exit port: nothing else left the kernel.
    assert_eq!(s.vcpus[0].user_exits.io, msg.len() as u64 + 1);
    assert_eq!(s.user_exits(), msg.len() as u64 + 1);
    assert!(
        s.kvm_exits() >= s.user_exits(),
        "KVM exits {} < user exits {}",
        s.kvm_exits(),
        s.user_exits()
    );
}

/// A guest given as bytes (as a binary that embeds its guest does) boots like one read from a file,
/// and a config's Debug names the image's size rather than dumping it.
#[test]
fn guest_from_memory_boots_like_one_from_a_file() {
    if !kvm_or_skip() {
        return;
    }
    let image = std::fs::read(guest_elf("hello64")).unwrap();
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_bytes(image.clone());
    assert!(
        format!("{cfg:?}").contains(&format!("Bytes({} bytes)", image.len())),
        "{cfg:?}"
    );
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(exit_codes(&out), [Some(0x64)], "{out:?}");
    assert_eq!(p.serial_output().text(), "hello from 64-bit long mode\n");
    // Garbage bytes are refused when the partition is built, naming why.
    let mut bad = PartitionConfig::new(4 << 20, 1);
    bad.elf_bytes(&b"not an elf"[..]);
    assert!(matches!(bad.build(), Err(Error::Load(_))));
}

#[test]
fn protected_mode_guest_prints_over_serial() {
    if !kvm_or_skip() {
        return;
    }
    let rec = Arc::new(Recorder::default());
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.mode(BootMode::Protected32)
        .elf_file(guest_elf("hello32"))
        .add_port_handler(0x520..0x521, rec.clone());
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(exit_codes(&out), [Some(0x32)], "{out:?}");
    assert_eq!(
        p.serial_output().text(),
        "hello from 32-bit protected mode\n"
    );
    let cr0 = rec.writes_to(0x520);
    assert_eq!(cr0.len(), 1);
    assert_eq!(cr0[0] & 1, 1, "CR0.PE");
    assert_eq!(cr0[0] & (1 << 31), 0, "CR0.PG");
}

#[test]
fn four_vcpus_report_their_vp_index_apic_id_and_stack() {
    if !kvm_or_skip() {
        return;
    }
    let rec = Arc::new(Recorder::default());
    let mut cfg = PartitionConfig::new(8 << 20, 4);
    cfg.elf_file(guest_elf("vp_index"))
        .add_port_handler(0x500..0x510, rec.clone());
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(
        exit_codes(&out),
        [Some(0x100), Some(0x101), Some(0x102), Some(0x103)],
        "{out:?}"
    );
    for vp in 0..4u32 {
        assert_eq!(rec.writes_by(vp, 0x500), [u64::from(vp)], "RDI of VP {vp}");
        assert_eq!(
            rec.writes_by(vp, 0x504),
            [u64::from(vp)],
            "CPUID APIC id of VP {vp}"
        );
        assert_eq!(
            rec.writes_by(vp, 0x508),
            [boot::stack_top(vp)],
            "RSP of VP {vp}"
        );
        assert_eq!(rec.writes_by(vp, 0x50C), [4], "RSI of VP {vp}");
    }
    let s = p.stats();
    for v in &s.vcpus {
        assert_eq!(v.user_exits.io, 5, "VP {}", v.vp_index);
        assert_eq!(v.user_exits.total(), 5, "VP {}", v.vp_index);
    }
}

#[test]
fn port_and_mmio_handlers_see_guest_accesses_and_answer_reads() {
    if !kvm_or_skip() {
        return;
    }
    let ports = Arc::new(Recorder::with_replies(&[
        (0x602, 0xCAFE_BABE),
        (0x603, 0xBEEF),
    ]));
    let mmio = Arc::new(Recorder::with_replies(&[(0xD000_0010, 0x600D_F00D)]));
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("devices"))
        .add_port_handler(0x600..0x604, ports.clone())
        .add_mmio_handler(0xD000_0000..0xD000_1000, mmio.clone());
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(exit_codes(&out), [Some(0)], "{out:?}");

    let seen: Vec<(u64, bool, Vec<u8>)> = ports
        .accesses()
        .into_iter()
        .map(|a| (a.addr, a.write, a.data))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0x600, true, 0x1234_5678u32.to_le_bytes().to_vec()),
            (0x601, true, vec![0xAB]),
            (0x602, false, 0xCAFE_BABEu32.to_le_bytes().to_vec()),
            (0x603, true, 0xCAFE_BABEu32.to_le_bytes().to_vec()),
            (0x603, false, 0xBEEFu16.to_le_bytes().to_vec()),
            (0x603, true, 0xBEEFu32.to_le_bytes().to_vec()),
            (0x603, true, 0x600D_F00Du32.to_le_bytes().to_vec()),
        ]
    );
    let seen: Vec<(u64, bool, Vec<u8>)> = mmio
        .accesses()
        .into_iter()
        .map(|a| (a.addr, a.write, a.data))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                0xD000_0000,
                true,
                0x1122_3344_5566_7788u64.to_le_bytes().to_vec()
            ),
            (0xD000_0010, false, 0x600D_F00Du32.to_le_bytes().to_vec()),
            (0xD000_0020, true, vec![0x5A]),
        ]
    );
    let u = p.stats().vcpus[0].user_exits;
    assert_eq!((u.io, u.mmio, u.total()), (8, 3, 11), "{u:?}");
}

/// Owns MSRs 0x40000000..0x40000010: 0x40000000 is a read/write register, everything else #GPs.
#[derive(Default)]
struct ScratchMsr {
    value: Mutex<u64>,
    accesses: Mutex<Vec<(u32, u32, Option<u64>)>>,
}

impl MsrHandler for ScratchMsr {
    fn msr_ranges(&self) -> Vec<std::ops::Range<u32>> {
        std::iter::once(0x4000_0000..0x4000_0010).collect()
    }
    fn rdmsr(&self, vcpu: &mut VcpuCtx, msr: u32) -> Option<u64> {
        self.accesses
            .lock()
            .unwrap()
            .push((vcpu.vp_index(), msr, None));
        (msr == 0x4000_0000).then(|| *self.value.lock().unwrap())
    }
    fn wrmsr(&self, vcpu: &mut VcpuCtx, msr: u32, value: u64) -> bool {
        self.accesses
            .lock()
            .unwrap()
            .push((vcpu.vp_index(), msr, Some(value)));
        if msr != 0x4000_0000 {
            return false;
        }
        *self.value.lock().unwrap() = value;
        true
    }
}

#[test]
fn cpuid_overrides_and_msr_handler_reach_cpl0() {
    if !kvm_or_skip() {
        return;
    }
    let rec = Arc::new(Recorder::default());
    let msr = Arc::new(ScratchMsr::default());
    let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
    let leaf = kvm_cpuid_entry2 {
        function: 0x4000_0000,
        eax: 0x4000_0005,
        ebx: sig(b"Micr"),
        ecx: sig(b"osof"),
        edx: sig(b"t Hv"),
        ..Default::default()
    };
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("cpuid_msr"))
        .add_port_handler(0x730..0x740, rec.clone())
        .set_msr_handler(msr.clone())
        .extra_cpuid(vec![leaf]);
    let mut p = cfg.build().unwrap();
    let out = p.run_timeout(TIMEOUT).unwrap();
    assert_eq!(exit_codes(&out), [Some(0)], "{out:?}");
    assert_eq!(
        rec.writes_to(0x730),
        [
            0x4000_0005,
            sig(b"Micr").into(),
            sig(b"osof").into(),
            sig(b"t Hv").into()
        ]
    );
    assert_eq!(rec.writes_to(0x734), [0x5566_7788, 0x1122_3344]);
    assert_eq!(rec.writes_to(0x738), [1], "one #GP from the refused rdmsr");
    assert_eq!(
        *msr.accesses.lock().unwrap(),
        [
            (0, 0x4000_0000, Some(0x1122_3344_5566_7788)),
            (0, 0x4000_0000, None),
            (0, 0x4000_0005, None)
        ]
    );
    let u = p.stats().vcpus[0].user_exits;
    assert_eq!(
        (u.msr_write, u.msr_read, u.io, u.total()),
        (1, 2, 8, 11),
        "{u:?}"
    );
}

#[test]
fn triple_fault_is_reported_with_registers() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("triple"));
    let mut p = cfg.build().unwrap();
    let entry = p.image().unwrap().entry;
    let out = p.run_timeout(TIMEOUT).unwrap();
    let VcpuOutcome::Shutdown(state) = &out[0] else {
        panic!("expected a triple fault, got {out:?}")
    };
    assert_eq!(state.regs.rax, 0x1234_abcd, "{state}");
    assert_eq!(state.regs.rcx, 0xfee1_dead, "{state}");
    assert_eq!(state.regs.rip, entry + 10, "RIP at the ud2: {state}");
    assert_eq!(state.sregs.cr3, boot::PML4_ADDR);
    assert_ne!(state.sregs.cr0 & (1 << 31), 0, "paging on");
    assert_ne!(state.sregs.efer & (1 << 10), 0, "long mode active");
    assert_eq!(p.stats().vcpus[0].user_exits.shutdown, 1);
}

#[test]
fn one_vcpu_exiting_ends_the_partition_with_stop_on_exit() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = PartitionConfig::new(4 << 20, 3);
    cfg.elf_file(guest_elf("exit_vp0")).stop_on_exit(true);
    let mut p = cfg.build().unwrap();
    // Without the stop, VPs 1 and 2 would halt until the (long) timeout.
    let out = p.run_timeout(Duration::from_secs(600)).unwrap();
    assert_eq!(exit_codes(&out), [Some(0x42), None, None], "{out:?}");
    assert!(
        out[1..].iter().all(|o| matches!(o, VcpuOutcome::Stopped)),
        "{out:?}"
    );
}

#[test]
fn halted_partition_is_stopped_from_another_thread() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = PartitionConfig::new(4 << 20, 2);
    cfg.elf_file(guest_elf("halt_forever"));
    let mut p = cfg.build().unwrap();
    p.start().unwrap();
    let serial = p.serial_output();
    let stop = p.stop_handle();
    let stopper = std::thread::spawn(move || {
        let t0 = Instant::now();
        while serial.bytes().len() < 2 && t0.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.stop();
        Instant::now()
    });
    let out = p.join();
    let stopped_at = stopper.join().unwrap();
    assert!(
        out.iter().all(|o| matches!(o, VcpuOutcome::Stopped)),
        "{out:?}"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(p.serial_output().text(), "HH");

    // The join timeout stops a partition that never ends by itself.
    let mut p = cfg.build().unwrap();
    let t0 = Instant::now();
    let out = p.run_timeout(Duration::from_millis(300)).unwrap();
    assert!(
        matches!(out[..], [VcpuOutcome::Stopped, VcpuOutcome::Stopped]),
        "{out:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn missing_kvm_is_one_typed_error() {
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.kvm_path("/nonexistent/kvm");
    match cfg.build() {
        Err(Error::KvmUnavailable {
            cause: KvmUnavailableCause::NoDevice { path },
        }) => {
            assert_eq!(path, std::path::Path::new("/nonexistent/kvm"))
        }
        other => panic!("expected KvmUnavailable(NoDevice), got {other:?}"),
    }
    // A device that is not KVM: the API-version ioctl fails.
    cfg.kvm_path("/dev/null");
    let err = cfg.build().unwrap_err();
    assert!(
        matches!(
            err,
            Error::KvmUnavailable {
                cause: KvmUnavailableCause::ApiVersion { .. }
            }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("KVM is unavailable: "), "{err}");
}

#[test]
fn invalid_configurations_are_rejected() {
    for (ram, vcpus) in [(4 << 20, 0), (4 << 20, 17), (1 << 20, 1)] {
        let err = PartitionConfig::new(ram, vcpus).build().unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig(_)),
            "{ram:#x}/{vcpus}: {err}"
        );
    }
    if !kvm_or_skip() {
        return;
    }
    let rec = Arc::new(Recorder::default());
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.add_port_handler(0x3F0..0x3FA, rec.clone());
    assert!(
        matches!(cfg.build(), Err(Error::InvalidConfig(_))),
        "overlaps COM1"
    );
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.add_port_handler(0xF0..0x100, rec);
    assert!(
        matches!(cfg.build(), Err(Error::InvalidConfig(_))),
        "includes the exit port"
    );
    let mut p = PartitionConfig::new(4 << 20, 1).build().unwrap();
    assert!(matches!(p.start(), Err(Error::State(_))), "no image loaded");
}

#[test]
fn emulation_failure_is_an_internal_error_with_registers() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = PartitionConfig::new(4 << 20, 1);
    cfg.elf_file(guest_elf("sse_cpl0"));
    let mut p = cfg.build().unwrap();
    let entry = p.image().unwrap().entry;
    let out = p.run_timeout(TIMEOUT).unwrap();
    match &out[0] {
        VcpuOutcome::InternalError {
            suberror,
            data,
            state,
        } => {
            eprintln!("internal error {suberror} {data:x?} at {state}");
            assert_eq!(state.regs.rbx, 0x5e5e, "{state}");
            assert!((entry..entry + 16).contains(&state.regs.rip), "{state}");
            assert_eq!(p.stats().vcpus[0].user_exits.internal_error, 1);
        }
        // Hardware-assisted KVM runs CPL0 SSE natively: the guest then completes.
        VcpuOutcome::Exited { code } => assert_eq!(*code, 0x55),
        other => panic!("expected an internal error (KVM-PVM) or a clean exit, got {other:?}"),
    }
}
