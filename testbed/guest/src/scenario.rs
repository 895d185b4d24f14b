//! Scenarios the host asks for on the command line, run in order. Each returns Ok or an error message;
//! the kernel's exit code is 0 when all pass, else the 1-based index of the first failure.

use alloc::string::{String, ToString};

use guest_drivers::hv::{detect, hypercall::Hypercalls, synic::Synic};

use crate::platform::Kernel;
use crate::{arch, println};

/// Run every scenario named in `cmdline`.
pub fn run_all(cmdline: &str) -> u32 {
    for (i, name) in cmdline.split_ascii_whitespace().enumerate() {
        let result = match name {
            "hello" => hello(),
            "hv" => hv(),
            other => Err(alloc::format!("unknown scenario `{other}`")),
        };
        match result {
            Ok(()) => println!("scenario {name}: ok"),
            Err(e) => {
                println!("scenario {name}: FAILED: {e}");
                return i as u32 + 1;
            }
        }
    }
    0
}

/// Boot smoke test: the hypervisor's CPUID vendor as seen from CPL0, and the heap.
fn hello() -> Result<(), alloc::string::String> {
    let [max, b, c, d] = arch::cpuid(0x4000_0000, 0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&b.to_le_bytes());
    vendor[4..8].copy_from_slice(&c.to_le_bytes());
    vendor[8..12].copy_from_slice(&d.to_le_bytes());
    let v = alloc::vec![7u8; 1000];
    println!(
        "hello from CPL3: hypervisor `{}` max leaf {max:#x}, heap ok ({} bytes)",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        v.len()
    );
    Ok(())
}

/// Enlightenments: detect Hyper-V, enable the hypercall page and the SynIC (SINT2 on vector 0xF3).
fn hv() -> Result<(), String> {
    let info = detect::detect(&Kernel).map_err(|e| e.to_string())?;
    println!(
        "hv: vendor `{}` features {:#x}/{:#x}",
        core::str::from_utf8(&info.vendor).unwrap_or("?"),
        info.features_eax,
        info.features_ebx
    );
    let hc = Hypercalls::enable(&Kernel).map_err(|e| e.to_string())?;
    let _synic = Synic::enable(&Kernel, 2, 0xF3).map_err(|e| e.to_string())?;
    println!("hv: hypercall page at {:#x}, SynIC enabled", hc.page_gpa());
    Ok(())
}

