//! Multi-CPU scenarios:
//! - `smp`: every CPU reads its VP_INDEX MSR at once (the APs as jobs from the BSP) and the kernel
//!   reports, per VP, the index read, the index the shim recorded and the wake IPIs it took;
//! - `smp-io:N`: storage on every CPU, each on its own storvsc channel ([`super::smp_io`]).
//!
//! Results are printed as `key=value` lines the host test reads.

use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_drivers::hv::msr;

use super::Outcome;
use crate::arch::{self, MAX_CPUS};
use crate::println;
use crate::smp::{self, WAKE_VECTOR};

/// Run `name` if it is a multi-CPU scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    Some(match name {
        "smp" => hello(),
        "smp-io" => super::smp_io::run(args),
        _ => return None,
    })
}

/// VP_INDEX as each CPU read it (u64::MAX: not read).
static VP_INDEX: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

fn read_vp_index() {
    let vp = smp::current();
    VP_INDEX[vp].store(arch::rdmsr(msr::VP_INDEX), Ordering::Release);
}

fn hello() -> Outcome {
    let cpus = smp::count();
    for vp in 1..cpus {
        smp::run_on(vp, read_vp_index).map_err(|e| format!("vp{vp}: {e}"))?;
    }
    read_vp_index();
    for vp in 1..cpus {
        smp::wait_idle(vp);
    }
    println!("smp-cpus={cpus}");
    for (vp, index) in VP_INDEX.iter().enumerate().take(cpus) {
        let index = index.load(Ordering::Acquire);
        println!(
            "smp-vp{vp}-index={index} smp-vp{vp}-recorded={} smp-vp{vp}-wakes={} smp-vp{vp}-jobs={}",
            arch::recorded_vp(vp),
            arch::interrupts_on_vp(vp, WAKE_VECTOR),
            smp::jobs_done(vp)
        );
        if index != vp as u64 {
            return Err(format!("CPU {vp} read VP_INDEX {index}"));
        }
    }
    Ok(())
}
