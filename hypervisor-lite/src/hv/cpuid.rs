//! The Hyper-V CPUID surface: the hypervisor-present bit in leaf 1 and the synthetic leaves
//! 0x40000000–0x40000005 ("Microsoft Hv", interface "Hv#1", version, features, recommendations, limits).
//!
//! Pure data: [`hv_cpuid_leaves`] builds the leaves, [`apply_hv_cpuid`] edits a CPUID table (e.g. the one KVM
//! reports as supported) so that it exposes exactly this surface and no KVM signature leaf. CPUID executed at CPL0
//! returns these values on this host (see `shared/notes/guest-kernel.md`); at CPL3 it returns the real machine's.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 31: a hypervisor is present.
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Vendor leaf: EAX = highest hypervisor leaf, EBX:ECX:EDX = vendor signature.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface leaf: EAX = interface signature "Hv#1".
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version leaf.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Feature identification leaf (partition privileges in EAX/EBX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations leaf.
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits leaf.
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// First and last leaf of the hypervisor CPUID range (all of it is replaced by [`apply_hv_cpuid`]).
pub const HYPERVISOR_LEAF_RANGE: core::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_00FF;

/// "Microsoft Hv" as EBX, ECX, EDX.
pub const VENDOR_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Micr"),
    u32::from_le_bytes(*b"osof"),
    u32::from_le_bytes(*b"t Hv"),
];
/// "Hv#1" in EAX of [`LEAF_INTERFACE`].
pub const INTERFACE_SIGNATURE: u32 = u32::from_le_bytes(*b"Hv#1");

/// [`LEAF_FEATURES`] EAX bit 1: the partition reference counter (TIME_REF_COUNT) is available.
pub const FEATURE_EAX_TIME_REF_COUNT: u32 = 1 << 1;
/// [`LEAF_FEATURES`] EAX bit 2: SynIC MSRs (SCONTROL, SVERSION, SIEFP, SIMP, EOM, SINTx) available.
pub const FEATURE_EAX_SYNIC: u32 = 1 << 2;
/// [`LEAF_FEATURES`] EAX bit 5: hypercall MSRs (GUEST_OS_ID, HYPERCALL) available.
pub const FEATURE_EAX_HYPERCALL_MSRS: u32 = 1 << 5;
/// [`LEAF_FEATURES`] EAX bit 6: VP_INDEX MSR available.
pub const FEATURE_EAX_VP_INDEX: u32 = 1 << 6;
/// [`LEAF_FEATURES`] EBX bit 4: the partition may call HvPostMessage.
pub const FEATURE_EBX_POST_MESSAGES: u32 = 1 << 4;
/// [`LEAF_FEATURES`] EBX bit 5: the partition may call HvSignalEvent.
pub const FEATURE_EBX_SIGNAL_EVENTS: u32 = 1 << 5;
/// [`LEAF_RECOMMENDATIONS`] EAX bit 9: do not use SINT auto-EOI (we cannot honour it with KVM's in-kernel LAPIC).
pub const RECOMMEND_EAX_DEPRECATE_AUTO_EOI: u32 = 1 << 9;
/// [`LEAF_RECOMMENDATIONS`] EBX: spinlock retries before notifying the hypervisor; all ones = never notify.
pub const RECOMMEND_EBX_NEVER_NOTIFY_SPINLOCK: u32 = 0xFFFF_FFFF;

/// Hypervisor version reported in [`LEAF_VERSION`]: build number.
pub const VERSION_BUILD: u32 = 19041;
/// Hypervisor version reported in [`LEAF_VERSION`]: major.minor as `major << 16 | minor`.
pub const VERSION_MAJOR_MINOR: u32 = 10 << 16;

/// Parameters of the CPUID surface that depend on the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvCpuidConfig {
    /// Number of virtual processors of the partition (reported as the VP limit in [`LEAF_LIMITS`]).
    pub vp_count: u32,
}

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// The synthetic leaves 0x40000000–0x40000005, in ascending order.
pub fn hv_cpuid_leaves(config: &HvCpuidConfig) -> Vec<kvm_cpuid_entry2> {
    let [vendor_b, vendor_c, vendor_d] = VENDOR_SIGNATURE;
    vec![
        leaf(LEAF_VENDOR, LEAF_LIMITS, vendor_b, vendor_c, vendor_d),
        leaf(LEAF_INTERFACE, INTERFACE_SIGNATURE, 0, 0, 0),
        leaf(LEAF_VERSION, VERSION_BUILD, VERSION_MAJOR_MINOR, 0, 0),
        leaf(
            LEAF_FEATURES,
            FEATURE_EAX_TIME_REF_COUNT
                | FEATURE_EAX_SYNIC
                | FEATURE_EAX_HYPERCALL_MSRS
                | FEATURE_EAX_VP_INDEX,
            FEATURE_EBX_POST_MESSAGES | FEATURE_EBX_SIGNAL_EVENTS,
            0,
            0,
        ),
        leaf(
            LEAF_RECOMMENDATIONS,
            RECOMMEND_EAX_DEPRECATE_AUTO_EOI,
            RECOMMEND_EBX_NEVER_NOTIFY_SPINLOCK,
            0,
            0,
        ),
        // EAX max virtual processors, EBX max logical processors, ECX max interrupt-remapping vectors (none).
        leaf(LEAF_LIMITS, config.vp_count, config.vp_count, 0, 0),
    ]
}

/// Edits a CPUID table in place so that it presents the Hyper-V surface: sets leaf 1 ECX bit 31 (on every
/// index-0 leaf 1 entry; adds none if leaf 1 is absent), removes every entry in 0x40000000–0x400000FF (KVM's
/// "KVMKVMKVM" signature and feature leaves would make Linux pick KVM) and appends [`hv_cpuid_leaves`].
pub fn apply_hv_cpuid(entries: &mut Vec<kvm_cpuid_entry2>, config: &HvCpuidConfig) {
    entries.retain(|e| !HYPERVISOR_LEAF_RANGE.contains(&e.function));
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= CPUID1_ECX_HYPERVISOR;
    }
    entries.extend(hv_cpuid_leaves(config));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(entries: &[kvm_cpuid_entry2], function: u32) -> kvm_cpuid_entry2 {
        let mut it = entries.iter().filter(|e| e.function == function);
        let e = *it
            .next()
            .unwrap_or_else(|| panic!("leaf {function:#x} missing"));
        assert!(it.next().is_none(), "leaf {function:#x} duplicated");
        e
    }

    fn sig(regs: &[u32]) -> Vec<u8> {
        regs.iter().flat_map(|r| r.to_le_bytes()).collect()
    }

    #[test]
    fn vendor_and_interface_signatures() {
        let leaves = hv_cpuid_leaves(&HvCpuidConfig { vp_count: 2 });
        let v = find(&leaves, LEAF_VENDOR);
        assert_eq!(v.eax, 0x4000_0005);
        assert_eq!(sig(&[v.ebx, v.ecx, v.edx]), b"Microsoft Hv");
        assert_eq!(sig(&[find(&leaves, LEAF_INTERFACE).eax]), b"Hv#1");
        assert_eq!(INTERFACE_SIGNATURE, 0x3123_7648);
    }

    #[test]
    fn features_and_recommendations_have_the_documented_bits() {
        let leaves = hv_cpuid_leaves(&HvCpuidConfig { vp_count: 3 });
        let f = find(&leaves, LEAF_FEATURES);
        assert_eq!(f.eax, (1 << 1) | (1 << 2) | (1 << 5) | (1 << 6));
        assert_eq!(f.ebx, (1 << 4) | (1 << 5));
        let r = find(&leaves, LEAF_RECOMMENDATIONS);
        assert_eq!(r.eax, 1 << 9);
        assert_eq!(r.ebx, 0xFFFF_FFFF);
        let l = find(&leaves, LEAF_LIMITS);
        assert_eq!((l.eax, l.ebx), (3, 3));
        let ver = find(&leaves, LEAF_VERSION);
        assert_eq!((ver.eax, ver.ebx), (19041, 0x000A_0000));
    }

    #[test]
    fn apply_replaces_kvm_leaves_and_sets_the_hypervisor_bit() {
        let mut table = vec![
            leaf(0, 0xD, 0, 0, 0),
            leaf(1, 0x000806F8, 0, 0x7FFA_3203, 0),
            leaf(0x4000_0000, 0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D),
            leaf(0x4000_0001, 0x0100_7AFB, 0, 0, 0),
            leaf(0x4000_0010, 1, 2, 3, 4),
            leaf(0x8000_0000, 0x8000_0008, 0, 0, 0),
        ];
        apply_hv_cpuid(&mut table, &HvCpuidConfig { vp_count: 1 });
        assert_eq!(find(&table, 1).ecx, 0xFFFA_3203);
        assert_eq!(find(&table, 0).eax, 0xD);
        assert_eq!(find(&table, 0x8000_0000).eax, 0x8000_0008);
        assert!(table.iter().all(|e| e.function != 0x4000_0010));
        let v = find(&table, LEAF_VENDOR);
        assert_eq!(sig(&[v.ebx, v.ecx, v.edx]), b"Microsoft Hv");
        assert_eq!(find(&table, LEAF_INTERFACE).eax, INTERFACE_SIGNATURE);
        let hv_leaves = table
            .iter()
            .filter(|e| HYPERVISOR_LEAF_RANGE.contains(&e.function))
            .count();
        assert_eq!(hv_leaves, 6);
    }
}
