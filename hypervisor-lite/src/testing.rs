//! Test support: paths of the freestanding test guests that `build.rs` assembles from every
//! `tests/guests/*.S` into `$OUT_DIR/guests/<name>.elf`, and [`kvm_or_skip`], the rule for tests that need KVM
//! (skip with a reason on a host without usable KVM, but fail when `CI=true`).
//!
//! Guest conventions (see [`crate::boot`]): linked at 0x100000 with entry `_start`; `RDI` = VP index,
//! `RSI` = vCPU count, `RDX` = RAM bytes, `RSP` = per-vCPU 16 KiB stack; COM1 at 0x3F8; finish by writing an exit
//! code to port [`crate::EXIT_PORT`] (0xF4). Guests may `#include "common.inc"` from `tests/guests/`.

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Path of the test guest built from `tests/guests/<name>.S`.
///
/// # Panics
/// If no such guest was built (names are listed in [`GUESTS`]).
pub fn guest_elf(name: &str) -> PathBuf {
    assert!(
        GUESTS.contains(&name),
        "no test guest {name:?}; built guests: {GUESTS:?} (was the assembler available to build.rs?)"
    );
    Path::new(GUEST_DIR).join(format!("{name}.elf"))
}

/// Whether KVM is usable here. If not, prints why and returns `false` (the test should return early) — unless
/// the environment has `CI=true`, where a missing KVM is a failure and this panics.
pub fn kvm_or_skip() -> bool {
    kvm_or_skip_at(Path::new(crate::partition::DEFAULT_KVM_PATH))
}

/// [`kvm_or_skip`] for an explicit device path.
pub fn kvm_or_skip_at(path: &Path) -> bool {
    match crate::kvm_setup::open_kvm(path) {
        Ok(_) => true,
        Err(e) if is_ci() => panic!("CI=true and KVM is required: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}
