//! The Hyper-V CPUID surface as a CPL0 guest sees it on real KVM.

mod hv_support;

use hv_support::{build, run_ok, RESULTS};
use hypervisor_lite::testing::kvm_or_skip;

#[test]
fn guest_sees_microsoft_hv_leaves_and_no_kvm_signature() {
    if !kvm_or_skip() {
        return;
    }
    let (mut partition, _hv) = build("hv_cpuid");
    run_ok(&mut partition);
    let ram = partition.ram();
    let leaf = |n: u64| -> [u32; 4] {
        let mut r = [0u32; 4];
        for (i, v) in r.iter_mut().enumerate() {
            *v = ram.read_u32(RESULTS + 16 * n + 4 * i as u64).unwrap();
        }
        r
    };
    let bytes = |regs: &[u32]| {
        regs.iter()
            .flat_map(|r| r.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let vendor = leaf(0);
    assert_eq!(vendor[0], 0x4000_0005, "max hypervisor leaf");
    assert_eq!(bytes(&vendor[1..]), b"Microsoft Hv");
    assert_eq!(bytes(&leaf(1)[..1]), b"Hv#1");
    let version = leaf(2);
    assert_eq!((version[0], version[1]), (19041, 0x000A_0000));
    let features = leaf(3);
    assert_eq!(
        features[0] & 0b110_0100,
        0b110_0100,
        "SynIC, hypercall MSRs, VP index: {:#x}",
        features[0]
    );
    assert_eq!(
        features[1] & 0b11_0000,
        0b11_0000,
        "post messages, signal events: {:#x}",
        features[1]
    );
    let recommendations = leaf(4);
    assert_eq!(recommendations[0], 1 << 9, "deprecate auto-EOI");
    assert_eq!(recommendations[1], 0xFFFF_FFFF);
    assert_eq!(leaf(5)[0], 1, "one VP");
    let leaf1_ecx = ram.read_u32(RESULTS + 0x80).unwrap();
    assert_ne!(leaf1_ecx & (1 << 31), 0, "hypervisor present bit");
}
