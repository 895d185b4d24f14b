//! Enlightenment detection: is there a hypervisor, is it Hyper-V compatible ("Hv#1"), and does it offer
//! what the VMBus client needs (hypercall MSRs, VP index, SynIC, post-message and signal-event)?

use crate::platform::Platform;

/// What the hypervisor reported through its CPUID leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvInfo {
    /// Leaf 0x40000000 EAX: highest hypervisor leaf.
    pub max_leaf: u32,
    /// Leaf 0x40000000 vendor signature.
    pub vendor: [u8; 12],
    /// Leaf 0x40000003 EAX: partition privileges / MSR availability.
    pub features_eax: u32,
    /// Leaf 0x40000003 EBX: partition privileges (hypercalls allowed).
    pub features_ebx: u32,
    /// Leaf 0x40000004 EAX: implementation recommendations.
    pub recommendations: u32,
}

/// Leaf 0x40000003 EAX bits.
pub mod features {
    /// The partition reference counter (TIME_REF_COUNT) can be read.
    pub const TIME_REF_COUNT: u32 = 1 << 1;
    pub const SYNIC_MSRS: u32 = 1 << 2;
    pub const HYPERCALL_MSRS: u32 = 1 << 5;
    pub const VP_INDEX_MSR: u32 = 1 << 6;
    /// EBX bits.
    pub const POST_MESSAGES: u32 = 1 << 4;
    pub const SIGNAL_EVENTS: u32 = 1 << 5;
}

/// Why the guest cannot use Hyper-V enlightenments here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("no hypervisor present (CPUID.1:ECX[31] clear)")]
    NoHypervisor,
    #[error("hypervisor leaves stop at {0:#x}, need 0x40000005")]
    TooFewLeaves(u32),
    #[error("hypervisor interface is {0:#x}, not Hyper-V's \"Hv#1\"")]
    NotHyperV(u32),
    #[error("Hyper-V interface lacks {0}")]
    MissingFeature(&'static str),
}

const HV1: u32 = u32::from_le_bytes(*b"Hv#1");

/// Detect a Hyper-V compatible hypervisor with everything VMBus needs.
pub fn detect(platform: &impl Platform) -> Result<HvInfo, DetectError> {
    let [_, _, ecx, _] = platform.cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return Err(DetectError::NoHypervisor);
    }
    let [max_leaf, b, c, d] = platform.cpuid(0x4000_0000, 0);
    if max_leaf < 0x4000_0005 {
        return Err(DetectError::TooFewLeaves(max_leaf));
    }
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&b.to_le_bytes());
    vendor[4..8].copy_from_slice(&c.to_le_bytes());
    vendor[8..12].copy_from_slice(&d.to_le_bytes());
    let interface = platform.cpuid(0x4000_0001, 0)[0];
    if interface != HV1 {
        return Err(DetectError::NotHyperV(interface));
    }
    let [features_eax, features_ebx, _, _] = platform.cpuid(0x4000_0003, 0);
    let recommendations = platform.cpuid(0x4000_0004, 0)[0];
    let needs = [
        (
            features_eax & features::HYPERCALL_MSRS,
            "the hypercall MSRs",
        ),
        (features_eax & features::VP_INDEX_MSR, "the VP index MSR"),
        (features_eax & features::SYNIC_MSRS, "the SynIC MSRs"),
        (
            features_ebx & features::POST_MESSAGES,
            "the HvPostMessage privilege",
        ),
        (
            features_ebx & features::SIGNAL_EVENTS,
            "the HvSignalEvent privilege",
        ),
    ];
    if let Some((_, what)) = needs.iter().find(|(bit, _)| *bit == 0) {
        return Err(DetectError::MissingFeature(what));
    }
    Ok(HvInfo {
        max_leaf,
        vendor,
        features_eax,
        features_ebx,
        recommendations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::DmaRegion;

    struct FakeCpuid(fn(u32) -> [u32; 4]);
    impl Platform for FakeCpuid {
        fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
            (self.0)(leaf)
        }
        fn rdmsr(&self, _: u32) -> u64 {
            0
        }
        fn wrmsr(&self, _: u32, _: u64) {}
        fn alloc_dma(&self, _: usize) -> Option<DmaRegion> {
            None
        }
        fn free_dma(&self, _: DmaRegion) {}
        fn interrupt_count(&self, _: u8) -> u64 {
            0
        }
        fn interrupt_total(&self) -> u64 {
            0
        }
        fn wait_for_interrupt(&self, seen: u64) -> u64 {
            seen
        }
    }

    fn hyperv(leaf: u32) -> [u32; 4] {
        let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
        match leaf {
            1 => [0, 0, 1 << 31, 0],
            0x4000_0000 => [0x4000_0005, sig(b"Micr"), sig(b"osof"), sig(b"t Hv")],
            0x4000_0001 => [HV1, 0, 0, 0],
            0x4000_0003 => [(1 << 2) | (1 << 5) | (1 << 6), (1 << 4) | (1 << 5), 0, 0],
            0x4000_0004 => [1 << 9, u32::MAX, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn detects_hyperv() {
        let info = detect(&FakeCpuid(hyperv)).unwrap();
        assert_eq!(&info.vendor, b"Microsoft Hv");
        assert_eq!(info.recommendations, 1 << 9);
    }

    #[test]
    fn refuses_bare_metal_kvm_and_missing_features() {
        assert_eq!(
            detect(&FakeCpuid(|_| [0; 4])),
            Err(DetectError::NoHypervisor)
        );
        let kvm = |leaf| match leaf {
            0x4000_0001 => [0x0100_007b, 0, 0, 0],
            other => hyperv(other),
        };
        assert_eq!(
            detect(&FakeCpuid(kvm)),
            Err(DetectError::NotHyperV(0x0100_007b))
        );
        let no_synic = |leaf| match leaf {
            0x4000_0003 => [(1 << 5) | (1 << 6), (1 << 4) | (1 << 5), 0, 0],
            other => hyperv(other),
        };
        assert_eq!(
            detect(&FakeCpuid(no_synic)),
            Err(DetectError::MissingFeature("the SynIC MSRs"))
        );
        let short = |leaf| match leaf {
            0x4000_0000 => [0x4000_0001, 0, 0, 0],
            other => hyperv(other),
        };
        assert_eq!(
            detect(&FakeCpuid(short)),
            Err(DetectError::TooFewLeaves(0x4000_0001))
        );
    }
}
