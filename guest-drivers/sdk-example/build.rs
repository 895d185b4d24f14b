//! Links the example as a static, position-dependent ELF placed by the guest kernel's `link.ld`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/../../testbed/guest/link.ld");
    println!("cargo:rerun-if-changed=../../testbed/guest/link.ld");
    println!("cargo:rerun-if-changed=../../testbed/guest/src");
}
