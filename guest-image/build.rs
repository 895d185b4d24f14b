//! Builds the guest kernel (`testbed/guest`, its own workspace: it must never share feature unification
//! with host crates) as a freestanding release ELF and tells this crate where it is
//! (`VIRIDIAN_GUEST_ELF`), which embeds it (`include_bytes!`): nothing of the build directory is read at
//! run time.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = manifest_dir
        .parent()
        .expect("guest-image lives inside the workspace")
        .to_path_buf();
    let guest = root.join("testbed").join("guest");
    let target_dir = out_dir.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    // Both freestanding workspaces share one target directory (and so their dependencies' builds).
    let kernel = build(&cargo, &guest, &target_dir, "viridian-guest");
    println!("cargo:rustc-env=VIRIDIAN_GUEST_ELF={}", kernel.display());
    let example = build(
        &cargo,
        &root.join("guest-drivers").join("sdk-example"),
        &target_dir,
        "sdk-example-guest",
    );
    println!(
        "cargo:rustc-env=VIRIDIAN_SDK_EXAMPLE_ELF={}",
        example.display()
    );
    // Every crate the guest kernel links, so that a change to any of them rebuilds it.
    for dir in [
        "testbed/guest/src",
        "guest-drivers/sdk-example/src",
        "testbed/workload/src",
        "testbed/probe-protocol/src",
        "testbed/guest-abi/src",
        "guest-drivers/src",
        "vmbus/src",
        "ic-protocol/src",
        "storvsp-protocol/src",
        "netvsp-protocol/src",
    ] {
        rerun_for_tree(&root.join(dir));
    }
    for file in [
        "testbed/guest/Cargo.toml",
        "testbed/guest/link.ld",
        "testbed/guest/build.rs",
        "testbed/workload/Cargo.toml",
        "testbed/probe-protocol/Cargo.toml",
        "testbed/guest-abi/Cargo.toml",
        "guest-drivers/Cargo.toml",
        "vmbus/Cargo.toml",
        "ic-protocol/Cargo.toml",
        "storvsp-protocol/Cargo.toml",
        "netvsp-protocol/Cargo.toml",
        "testbed/guest/Cargo.lock",
        "guest-drivers/sdk-example/Cargo.toml",
        "guest-drivers/sdk-example/Cargo.lock",
        "guest-drivers/sdk-example/build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
}

/// Builds the freestanding workspace at `dir` (release) into `target_dir`; returns the ELF `bin`.
fn build(cargo: &str, dir: &Path, target_dir: &Path, bin: &str) -> PathBuf {
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // Nothing of the outer build (clippy's wrapper, flags, target dir, profile settings) may leak into
    // the guest build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
            || matches!(
                key.as_str(),
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS"
            );
        if leaks {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("spawning cargo to build a guest");
    assert!(
        status.success(),
        "building the guest {} failed: {status}",
        dir.display()
    );
    target_dir.join("release").join(bin)
}

fn rerun_for_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rerun_for_tree(&path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
