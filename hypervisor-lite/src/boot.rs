//! The boot area and initial vCPU state: GDT and identity page tables written into guest RAM below 1 MiB,
//! and the registers each vCPU starts with in 64-bit long mode or 32-bit protected mode.
//!
//! Guest physical layout (all below [`crate::loader::MIN_LOAD_ADDR`]):
//!
//! | range | contents |
//! |---|---|
//! | `0x1000` | GDT: `0x08` 64-bit code, `0x10` data, `0x18` 32-bit code, `0x20` TSS, `0x30` user data (DPL3),
//! |          | `0x38` user 64-bit code (DPL3) — the SYSRET layout for `STAR[63:48] = 0x28` |
//! | `0x2000` | PML4 |
//! | `0x3000` | PDPT |
//! | `0x4000..` | page directories, 2 MiB pages, identity map of `[0, max(4 GiB, end of RAM))`, up to 64 GiB |
//! | `0x50000..0x90000` | vCPU stacks, 16 KiB each: vCPU *n* starts with `RSP = 0x90000 - n * 0x4000` |
//! | `0x90000..` | one TSS per vCPU (`0x90000 + n * 0x2100`): `RSP0` = that vCPU's boot stack top, I/O bitmap allowing every port |
//!
//! Every page-table entry is present, writable and user-accessible (U/S = 1), so a guest may drop to CPL3
//! without building its own tables. The MMIO hole (LAPIC at 0xFEE00000, IOAPIC at 0xFEC00000) is mapped.
//!
//! Entry registers (both modes): `RIP` = ELF entry, `RDI` = VP index (= APIC id), `RSI` = number of vCPUs,
//! `RDX` = guest RAM bytes (low 32 bits in 32-bit mode, saturated to `u32::MAX`), `RSP` as above,
//! `RFLAGS` = 0x2 (interrupts off). Long mode: `CR0 = PE|MP|ET|NE|WP|PG`, `CR4 = PAE|OSFXSR|OSXMMEXCPT`,
//! `EFER = SCE|LME|LMA`, `CS = 0x08`, data segments `0x10`. Protected mode: `CR0 = PE|MP|ET|NE`,
//! `CR4 = OSFXSR|OSXMMEXCPT`, `EFER = 0`, `CS = 0x18`, data `0x10`, flat 4 GiB segments, no paging.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::memory::{GuestRam, MemoryError, LOW_RAM_END};

/// Guest physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest physical address of vCPU 0's TSS; vCPU *n*'s is at `TSS_BASE + n * TSS_STRIDE`.
pub const TSS_BASE: u64 = 0x9_0000;
/// Distance between two vCPUs' TSSs.
pub const TSS_STRIDE: u64 = 0x2100;
const _: () = assert!(TSS_LIMIT < TSS_STRIDE, "TSSs must not overlap");

/// Offset of the I/O permission bitmap in each TSS (right after the 104-byte 64-bit TSS).
const TSS_IOPB: u64 = 0x68;
/// TSS limit: the 8 KiB bitmap (all ports allowed) plus its 0xFF terminator byte.
pub const TSS_LIMIT: u64 = TSS_IOPB + 0x2000;
/// Guest physical address of the PML4.
pub const PML4_ADDR: u64 = 0x2000;
/// Guest physical address of the PDPT.
pub const PDPT_ADDR: u64 = 0x3000;
/// Guest physical address of the first page directory.
pub const PD_ADDR: u64 = 0x4000;
/// Largest identity mapping set up for the guest.
pub const MAX_IDENTITY_MAP: u64 = 64 << 30;
/// Top of vCPU 0's stack.
pub const STACK_TOP: u64 = 0x9_0000;
/// Stack bytes per vCPU.
pub const STACK_SIZE: u64 = 0x4000;
/// Most vCPUs the boot area has stacks for.
pub const MAX_VCPUS: u32 = 16;
/// Smallest RAM a partition may have (boot area + 1 MiB of image).
pub const MIN_RAM_BYTES: u64 = 2 << 20;

/// GDT selector of the 64-bit code segment.
pub const SEL_CODE64: u16 = 0x08;
/// GDT selector of the flat data segment.
pub const SEL_DATA: u16 = 0x10;
/// GDT selector of the 32-bit code segment.
pub const SEL_CODE32: u16 = 0x18;
/// GDT selector of the TSS.
pub const SEL_TSS: u16 = 0x20;
/// GDT selector of the user (DPL3) data segment; use with RPL 3 (0x33).
pub const SEL_USER_DATA: u16 = 0x30;
/// GDT selector of the user (DPL3) 64-bit code segment; use with RPL 3 (0x3B).
pub const SEL_USER_CODE64: u16 = 0x38;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;

/// The CPU mode vCPUs start in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMode {
    /// 64-bit long mode with identity paging.
    #[default]
    LongMode64,
    /// 32-bit protected mode, flat segments, paging off.
    Protected32,
}

/// Flat segment descriptor: base 0, limit 4 GiB; `access` is the access byte, `flags` the high nibble.
const fn descriptor(access: u64, flags: u64) -> u64 {
    0xFFFF | (0xF << 48) | (access << 40) | (flags << 52)
}

fn gdt_entries() -> [u64; 8] {
    let tss_limit = 0x67u64;
    let tss_low = tss_limit
        | ((TSS_BASE & 0xFF_FFFF) << 16)
        | (0x8B << 40)
        | (((TSS_BASE >> 24) & 0xFF) << 56);
    [
        0,
        descriptor(0x9A, 0xA), // 0x08: code, DPL0, L=1, G=1
        descriptor(0x92, 0xC), // 0x10: data, DPL0, D/B=1, G=1
        descriptor(0x9A, 0xC), // 0x18: code, DPL0, D=1, G=1
        tss_low, // 0x20: 64-bit TSS (busy), low half (vCPU 0's; TR bases differ per vCPU)
        TSS_BASE >> 32, // 0x28: TSS high half
        descriptor(0xF2, 0xC), // 0x30: user data, DPL3
        descriptor(0xFA, 0xA), // 0x38: user code, DPL3, L=1
    ]
}

/// Writes the GDT, TSS and (for long mode) identity page tables into guest RAM.
pub fn write_boot_area(ram: &GuestRam, mode: BootMode, vcpus: u32) -> Result<(), MemoryError> {
    for (i, e) in gdt_entries().iter().enumerate() {
        ram.write_u64(GDT_ADDR + 8 * i as u64, *e)?;
    }
    for vp in 0..vcpus {
        let tss = tss_addr(vp);
        ram.zero(tss, TSS_LIMIT + 1)?;
        ram.write_u64(tss + 4, stack_top(vp))?; // RSP0
        ram.write(tss + 0x66, &(TSS_IOPB as u16).to_le_bytes())?;
        ram.write(tss + TSS_LIMIT, &[0xFF])?;
    }
    if mode == BootMode::LongMode64 {
        let mapped = identity_map_bytes(ram.size());
        let pds = mapped >> 30;
        ram.zero(PML4_ADDR, 0x2000)?;
        ram.write_u64(PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITE | PTE_USER)?;
        let mut table = vec![0u8; 4096];
        for pd in 0..pds {
            let pd_addr = PD_ADDR + pd * 0x1000;
            ram.write_u64(
                PDPT_ADDR + pd * 8,
                pd_addr | PTE_PRESENT | PTE_WRITE | PTE_USER,
            )?;
            for (i, entry) in table.chunks_exact_mut(8).enumerate() {
                let addr = (pd << 30) | ((i as u64) << 21);
                entry.copy_from_slice(
                    &(addr | PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_HUGE).to_le_bytes(),
                );
            }
            ram.write(pd_addr, &table)?;
        }
    }
    Ok(())
}

/// Bytes identity-mapped in long mode for a RAM of `ram_bytes`: at least 4 GiB (covers the MMIO hole),
/// up to the end of RAM rounded up to 1 GiB, at most [`MAX_IDENTITY_MAP`].
pub fn identity_map_bytes(ram_bytes: u64) -> u64 {
    let ram_end = if ram_bytes > LOW_RAM_END {
        ram_bytes + (1 << 30)
    } else {
        ram_bytes
    };
    ram_end.div_ceil(1 << 30).clamp(4, MAX_IDENTITY_MAP >> 30) << 30
}

fn segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the special registers for `mode` on top of KVM's reset state `sregs`.
pub fn setup_sregs(sregs: &mut kvm_sregs, mode: BootMode, vp_index: u32) {
    let data = segment(SEL_DATA, 0x3, 0, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt_entries().len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.tr = kvm_segment {
        base: tss_addr(vp_index),
        limit: TSS_LIMIT as u32,
        selector: SEL_TSS,
        type_: 0xB,
        present: 1,
        s: 0,
        g: 0,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        selector: 0,
        type_: 0x2,
        present: 1,
        limit: 0xFFFF,
        ..Default::default()
    };
    match mode {
        BootMode::LongMode64 => {
            sregs.cs = segment(SEL_CODE64, 0xB, 1, 0);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
            sregs.efer = EFER_SCE | EFER_LME | EFER_LMA;
        }
        BootMode::Protected32 => {
            sregs.cs = segment(SEL_CODE32, 0xB, 0, 1);
            sregs.cr3 = 0;
            sregs.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT;
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE;
            sregs.efer = 0;
        }
    }
}

/// General registers a vCPU starts with (see the module docs for the convention).
pub fn initial_regs(
    entry: u64,
    vp_index: u32,
    vcpus: u32,
    ram_bytes: u64,
    mode: BootMode,
) -> kvm_regs {
    let rdx = match mode {
        BootMode::LongMode64 => ram_bytes,
        BootMode::Protected32 => ram_bytes.min(u64::from(u32::MAX)),
    };
    kvm_regs {
        rip: entry,
        rsp: stack_top(vp_index),
        rdi: u64::from(vp_index),
        rsi: u64::from(vcpus),
        rdx,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Guest physical address of vCPU `vp_index`'s TSS.
pub fn tss_addr(vp_index: u32) -> u64 {
    TSS_BASE + u64::from(vp_index) * TSS_STRIDE
}

/// Initial stack pointer of vCPU `vp_index`.
pub fn stack_top(vp_index: u32) -> u64 {
    STACK_TOP - u64::from(vp_index) * STACK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_covers_the_hole_and_high_ram() {
        assert_eq!(identity_map_bytes(2 << 20), 4 << 30);
        assert_eq!(identity_map_bytes(4 << 30), 5 << 30);
        assert_eq!(identity_map_bytes(32 << 30), 33 << 30);
        assert_eq!(identity_map_bytes(512 << 30), MAX_IDENTITY_MAP);
        // Page directories must end below the stacks.
        assert!(
            PD_ADDR + (MAX_IDENTITY_MAP >> 30) * 0x1000
                <= STACK_TOP - u64::from(MAX_VCPUS) * STACK_SIZE
        );
        assert!(stack_top(MAX_VCPUS - 1) - STACK_SIZE >= PD_ADDR + 64 * 0x1000);
        assert!(tss_addr(MAX_VCPUS) <= crate::loader::MIN_LOAD_ADDR);
    }

    #[test]
    fn page_tables_map_the_lapic_page() {
        let ram = GuestRam::new(8 << 20).unwrap();
        write_boot_area(&ram, BootMode::LongMode64, 2).unwrap();
        assert_eq!(ram.read_u64(tss_addr(1) + 4).unwrap(), stack_top(1));
        assert_eq!(
            ram.read_u32(tss_addr(1) + 0x64).unwrap() >> 16,
            TSS_IOPB as u32
        );
        assert_eq!(
            ram.read_u32(tss_addr(1) + TSS_IOPB).unwrap(),
            0,
            "all ports allowed"
        );
        let lapic = 0xFEE0_0000u64;
        let pml4e = ram.read_u64(PML4_ADDR).unwrap();
        let pdpte = ram
            .read_u64((pml4e & !0xFFF) + 8 * ((lapic >> 30) & 511))
            .unwrap();
        let pde = ram
            .read_u64((pdpte & !0xFFF) + 8 * ((lapic >> 21) & 511))
            .unwrap();
        assert_eq!(pde & !0xFFF, lapic & !0x1F_FFFF);
        assert_eq!(pde & 0x87, 0x87);
    }

    #[test]
    fn gdt_descriptors_match_segment_registers() {
        let g = gdt_entries();
        assert_eq!(g[1], 0x00AF_9A00_0000_FFFF);
        assert_eq!(g[2], 0x00CF_9200_0000_FFFF);
        assert_eq!(g[3], 0x00CF_9A00_0000_FFFF);
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, BootMode::LongMode64, 3);
        assert_eq!(s.tr.base, tss_addr(3));
        assert_eq!(
            (s.cs.selector, s.cs.l, s.efer & EFER_LMA),
            (SEL_CODE64, 1, EFER_LMA)
        );
    }
}
