//! Boot scenarios: `hello` (CPL3 Rust, heap, CPUID snapshot) and `hv` (enlightenments: detection, the
//! hypercall page, the SynIC).

use alloc::string::ToString;

use guest_drivers::hv::{detect, hypercall::Hypercalls, synic::Synic};

use super::Outcome;
use crate::platform::Kernel;
use crate::{arch, println};

/// Run `name` if it is a boot scenario.
pub fn run(name: &str, _args: &str) -> Option<Outcome> {
    Some(match name {
        "hello" => hello(),
        "hv" => hv(),
        "marks" => {
            arch::mark(1);
            arch::mark(2);
            Ok(())
        }
        _ => return None,
    })
}

/// Boot smoke test: the hypervisor's CPUID vendor as seen from CPL0, and the heap.
fn hello() -> Outcome {
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
fn hv() -> Outcome {
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
