//! Talking to KVM before any vCPU runs: opening the device and creating the VM (turning every failure into one
//! [`Error::KvmUnavailable`]), checking capabilities, assembling the CPUID table (host-supported leaves, minus
//! KVM's signature leaves when replaced, plus caller overrides, plus per-vCPU APIC ids) and installing the MSR
//! filter that routes a handler's MSRs to user space.

use std::ffi::CString;
use std::ops::{Range, RangeInclusive};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, CpuId, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

use crate::error::{Error, KvmUnavailableCause, Result};

/// The hypervisor CPUID range (KVM's "KVMKVMKVM" signature lives at its start).
pub const HYPERVISOR_LEAVES: RangeInclusive<u32> = 0x4000_0000..=0x4000_00FF;
/// MSRs one filter range can cover (KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600 bytes).
const MAX_MSRS_PER_RANGE: u32 = 0x600 * 8;
/// Ranges one MSR filter can hold.
const MAX_FILTER_RANGES: usize = 16;

const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
];

fn unavailable(cause: KvmUnavailableCause) -> Error {
    Error::KvmUnavailable { cause }
}

/// Opens the KVM device at `path`, checks the API version and creates a VM.
pub fn open_kvm(path: &Path) -> Result<(Kvm, VmFd)> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        unavailable(KvmUnavailableCause::Open {
            path: path.to_path_buf(),
            errno: libc::EINVAL,
        })
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| {
        let path = path.to_path_buf();
        unavailable(match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmUnavailableCause::NoDevice { path },
            libc::EACCES | libc::EPERM => KvmUnavailableCause::PermissionDenied { path },
            errno => KvmUnavailableCause::Open { path, errno },
        })
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(unavailable(KvmUnavailableCause::ApiVersion {
            found: version,
        }));
    }
    let vm = kvm
        .create_vm()
        .map_err(|e| unavailable(KvmUnavailableCause::CreateVm { errno: e.errno() }))?;
    for (cap, name) in REQUIRED_CAPS {
        if !vm.check_extension(cap) {
            return Err(unavailable(KvmUnavailableCause::MissingCapability { name }));
        }
    }
    Ok((kvm, vm))
}

/// Whether `e` answers the same CPUID question as `x` (same leaf, and same subleaf where it matters).
fn same_leaf(e: &kvm_cpuid_entry2, x: &kvm_cpuid_entry2) -> bool {
    e.function == x.function
        && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
            || x.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
            || e.index == x.index)
}

/// The partition-wide CPUID table: `host` (KVM_GET_SUPPORTED_CPUID) with the hypervisor leaves removed when
/// `hide_kvm_leaves` is set or `extra` supplies any hypervisor leaf, then every `extra` entry replacing the
/// host's entry for the same leaf/subleaf or added.
pub fn merge_cpuid(
    host: &[kvm_cpuid_entry2],
    extra: &[kvm_cpuid_entry2],
    hide_kvm_leaves: bool,
) -> Vec<kvm_cpuid_entry2> {
    let replace_hv = hide_kvm_leaves
        || extra
            .iter()
            .any(|e| HYPERVISOR_LEAVES.contains(&e.function));
    let mut out: Vec<kvm_cpuid_entry2> = host
        .iter()
        .filter(|e| !(replace_hv && HYPERVISOR_LEAVES.contains(&e.function)))
        .copied()
        .collect();
    for x in extra {
        out.retain(|e| !same_leaf(e, x));
        out.push(*x);
    }
    out
}

/// The table for one vCPU: the initial APIC id in leaf 1 EBX[31:24] and the x2APIC id in leaves 0xB/0x1F EDX.
pub fn cpuid_for_vcpu(table: &[kvm_cpuid_entry2], apic_id: u32) -> Result<CpuId> {
    let mut entries = table.to_vec();
    for e in &mut entries {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24),
            0xB | 0x1F => e.edx = apic_id,
            _ => {}
        }
    }
    if entries.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(Error::InvalidConfig(format!(
            "{} CPUID entries (max {KVM_MAX_CPUID_ENTRIES})",
            entries.len()
        )));
    }
    CpuId::from_entries(&entries).map_err(|e| Error::InvalidConfig(format!("CPUID table: {e:?}")))
}

/// The host-supported CPUID leaves.
pub fn host_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(cpuid.as_slice().to_vec())
}

/// Splits MSR ranges into filter-sized pieces, rejecting empty or too many ranges.
pub fn filter_ranges(ranges: &[Range<u32>]) -> Result<Vec<Range<u32>>> {
    let mut out = Vec::new();
    for r in ranges {
        if r.start >= r.end {
            return Err(Error::InvalidConfig(format!("empty MSR range {r:?}")));
        }
        let mut start = r.start;
        while start < r.end {
            let end = r.end.min(start.saturating_add(MAX_MSRS_PER_RANGE));
            out.push(start..end);
            start = end;
        }
    }
    if out.len() > MAX_FILTER_RANGES {
        return Err(Error::InvalidConfig(format!(
            "MSR handler needs {} filter ranges; KVM allows {MAX_FILTER_RANGES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Routes `rdmsr`/`wrmsr` of `ranges` (and of MSRs KVM does not know) to user space: enables
/// KVM_CAP_X86_USER_SPACE_MSR (UNKNOWN | FILTER) and installs a default-allow filter denying `ranges`.
pub fn route_msrs_to_user_space(vm: &VmFd, ranges: &[Range<u32>]) -> Result<()> {
    if !vm.check_extension(Cap::X86UserSpaceMsr) {
        return Err(unavailable(KvmUnavailableCause::MissingCapability {
            name: "KVM_CAP_X86_USER_SPACE_MSR",
        }));
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER);
    vm.enable_cap(&cap)
        .map_err(Error::kvm("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    let pieces = filter_ranges(ranges)?;
    if pieces.is_empty() {
        return Ok(());
    }
    if !vm.check_extension(Cap::X86MsrFilter) {
        return Err(unavailable(KvmUnavailableCause::MissingCapability {
            name: "KVM_CAP_X86_MSR_FILTER",
        }));
    }
    // A clear bit denies the access, which (with the FILTER reason enabled) exits to user space.
    let bitmaps: Vec<Vec<u8>> = pieces
        .iter()
        .map(|r| vec![0u8; (r.end - r.start).div_ceil(8) as usize])
        .collect();
    let filter: Vec<MsrFilterRange<'_>> = pieces
        .iter()
        .zip(&bitmaps)
        .map(|(r, bitmap)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: r.start,
            msr_count: r.end - r.start,
            bitmap,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
        .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, flags: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn hypervisor_leaves_replace_kvm_signature() {
        let host = [
            leaf(0, 0, 0, 0xD),
            leaf(0x4000_0000, 0, 0, 0x4000_0001),
            leaf(0x4000_0001, 0, 0, 7),
        ];
        let extra = [leaf(0x4000_0000, 0, 0, 0x4000_0005)];
        let t = merge_cpuid(&host, &extra, false);
        assert_eq!(t.len(), 2);
        assert!(t
            .iter()
            .any(|e| e.function == 0x4000_0000 && e.eax == 0x4000_0005));
        assert!(!t.iter().any(|e| e.function == 0x4000_0001));
        assert_eq!(merge_cpuid(&host, &[], true).len(), 1);
        assert_eq!(merge_cpuid(&host, &[], false).len(), 3);
    }

    #[test]
    fn overrides_respect_significant_index() {
        let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let host = [leaf(7, 0, f, 1), leaf(7, 1, f, 2), leaf(1, 0, 0, 3)];
        let t = merge_cpuid(&host, &[leaf(7, 1, f, 9), leaf(1, 0, 0, 4)], false);
        let find = |func, idx| {
            t.iter()
                .find(|e| e.function == func && e.index == idx)
                .map(|e| e.eax)
        };
        assert_eq!(
            (find(7, 0), find(7, 1), find(1, 0)),
            (Some(1), Some(9), Some(4))
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn per_vcpu_table_sets_apic_ids() {
        let mut l1 = leaf(1, 0, 0, 0);
        l1.ebx = 0x0A0B_0C0D;
        let c = cpuid_for_vcpu(&[l1, leaf(0xB, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0)], 3).unwrap();
        assert_eq!(c.as_slice()[0].ebx, 0x030B_0C0D);
        assert_eq!(c.as_slice()[1].edx, 3);
    }

    #[test]
    fn msr_ranges_are_split_and_bounded() {
        assert_eq!(
            filter_ranges(std::slice::from_ref(&(0x4000_0000..0x4000_0100))).unwrap(),
            vec![0x4000_0000..0x4000_0100]
        );
        assert_eq!(
            filter_ranges(std::slice::from_ref(&(0..MAX_MSRS_PER_RANGE + 1)))
                .unwrap()
                .len(),
            2
        );
        assert!(filter_ranges(std::slice::from_ref(&(5..5))).is_err());
        let many: Vec<_> = (0..17).map(|i| i * 10..i * 10 + 1).collect();
        assert!(filter_ranges(&many).is_err());
    }
}
