//! The contract between the testbed (host) and its guest kernel (`testbed/guest`): the boot info the
//! host writes before the guest starts ([`BootInfo`] at [`BOOT_INFO_GPA`]), the command-line and log
//! areas, and the I/O ports the guest reports through. Both ends use these definitions and nothing
//! else, so the layout cannot drift between them.
#![no_std]
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Where the host writes [`BootInfo`] (below the kernel image, above hypervisor-lite's boot area).
/// The guest's CPL0 shim hands this address to Rust.
pub const BOOT_INFO_GPA: u64 = 0xe_0000;
/// "VIRIDIAN" as a little-endian u64: [`BootInfo::magic`].
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VIRIDIAN");
/// Where the host writes the command line (scenario tokens separated by spaces).
pub const CMDLINE_GPA: u64 = 0xe_0100;
/// Longest command line.
pub const MAX_CMDLINE: usize = 0xf00;
/// The guest's shared-memory log: `{u64 written, u64 dropped, text}`.
pub const LOG_GPA: u64 = 0xe_1000;
/// Size of the log area (up to the 1 MiB line where the kernel image may start).
pub const LOG_LEN: u64 = 0x10_0000 - LOG_GPA;
/// The guest reports CPU exceptions here: the vector, then RIP's low and high halves (u32 writes).
pub const FAULT_PORT: u16 = 0x502;
/// The guest writes a u32 marker here to delimit a measured window; the host snapshots its
/// counters at that exact point.
pub const MARK_PORT: u16 = 0x503;
/// The in-guest RAM-disk baseline: the guest writes the GPA of a command block
/// `{u64 cmd, u64 gpa, u64 len, u64 status, u64 capacity}` here.
pub const RAMDISK_PORT: u16 = 0x5d0;

/// Where the testbed places the virtio-net device's virtio-mmio window (identity mapped by the guest,
/// in the MMIO hole after virtio-blk's window at 0xD000_0000).
pub const VIRTIO_NET_MMIO_GPA: u64 = 0xD000_1000;
/// Size of that window.
pub const VIRTIO_NET_MMIO_SIZE: u64 = 0x1000;
/// The vector the testbed delivers virtio-net interrupts on.
pub const VIRTIO_NET_VECTOR: u8 = 0x51;

/// Where the testbed places the emulated e1000's 128 KiB register window (in the MMIO hole; no PCI
/// bus exists, so the guest finds it here).
pub const E1000_MMIO_GPA: u64 = 0xD100_0000;
/// The vector of the emulated e1000's MSI.
pub const E1000_VECTOR: u8 = 0x58;

/// The boot info: nine little-endian u64 words at [`BOOT_INFO_GPA`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Bytes of guest RAM in all (both ranges below).
    pub ram_bytes: u64,
    /// GPA of the command line.
    pub cmdline_gpa: u64,
    /// Length of the command line.
    pub cmdline_len: u64,
    /// GPA of the shared-memory log.
    pub log_gpa: u64,
    /// Length of the log; 0: the guest logs to COM1 instead.
    pub log_len: u64,
    /// End of the RAM below the MMIO hole: that RAM is `[0, low_ram_end)`.
    pub low_ram_end: u64,
    /// First byte of the RAM above the MMIO hole.
    pub high_ram_start: u64,
    /// End of the RAM above the hole: that RAM is `[high_ram_start, high_ram_end)`, empty when equal.
    /// The guest's CPL0 shim identity-maps up to here (at least the first 4 GiB).
    pub high_ram_end: u64,
}

impl BootInfo {
    /// The boot info for a guest whose RAM is the `(gpa, len)` ranges `ram` (the partition's layout:
    /// one range at GPA 0, at most one above the MMIO hole) with a command line of `cmdline_len`
    /// bytes, at the standard places. A range that does not start at 0 is the high one; if there are
    /// several, the highest.
    pub fn new(ram: &[(u64, u64)], cmdline_len: u64) -> Self {
        let low_ram_end = ram.iter().find(|r| r.0 == 0).map_or(0, |r| r.1);
        let (high_ram_start, high_ram_end) = ram
            .iter()
            .filter(|r| r.0 != 0)
            .map(|r| (r.0, r.0.saturating_add(r.1)))
            .max()
            .unwrap_or((low_ram_end, low_ram_end));
        Self {
            magic: BOOT_MAGIC,
            ram_bytes: ram.iter().map(|r| r.1).sum(),
            cmdline_gpa: CMDLINE_GPA,
            cmdline_len,
            log_gpa: LOG_GPA,
            log_len: LOG_LEN,
            low_ram_end,
            high_ram_start,
            high_ram_end,
        }
    }
}

/// The `above4g` scenario: I/O buffers and rings in guest RAM above 4 GiB.
pub mod above_4g {
    /// Byte `i` of the pattern the guest writes to the disk from memory above 4 GiB (both ends check it).
    pub const fn pattern(i: u64) -> u8 {
        (i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8 ^ (i >> 9) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn boot_info_layout() {
        assert_eq!(size_of::<BootInfo>(), 72);
        assert_eq!(offset_of!(BootInfo, magic), 0);
        assert_eq!(offset_of!(BootInfo, ram_bytes), 8);
        assert_eq!(offset_of!(BootInfo, cmdline_gpa), 16);
        assert_eq!(offset_of!(BootInfo, cmdline_len), 24);
        assert_eq!(offset_of!(BootInfo, log_gpa), 32);
        assert_eq!(offset_of!(BootInfo, log_len), 40);
        assert_eq!(offset_of!(BootInfo, low_ram_end), 48);
        assert_eq!(offset_of!(BootInfo, high_ram_start), 56);
        assert_eq!(offset_of!(BootInfo, high_ram_end), 64);
        assert_eq!(BootInfo::new(&[(0, 1)], 2).as_bytes()[..8], *b"VIRIDIAN");
    }

    #[test]
    fn ram_ranges_around_the_hole() {
        const GIB: u64 = 1 << 30;
        let small = BootInfo::new(&[(0, 64 << 20)], 0);
        assert_eq!(small.ram_bytes, 64 << 20);
        assert_eq!(small.low_ram_end, 64 << 20);
        assert_eq!(small.high_ram_start, small.high_ram_end);
        let big = BootInfo::new(&[(0, 3 * GIB), (4 * GIB, 29 * GIB)], 0);
        assert_eq!(big.ram_bytes, 32 * GIB);
        assert_eq!(big.low_ram_end, 3 * GIB);
        assert_eq!((big.high_ram_start, big.high_ram_end), (4 * GIB, 33 * GIB));
    }

    #[test]
    fn areas_do_not_overlap() {
        assert!(BOOT_INFO_GPA + size_of::<BootInfo>() as u64 <= CMDLINE_GPA);
        assert!(CMDLINE_GPA + MAX_CMDLINE as u64 <= LOG_GPA);
        assert_eq!(LOG_GPA + LOG_LEN, 0x10_0000);
    }
}

/// The network test bench both ends run: addresses (198.18.0.0/15 only), the host's server ports
/// and the byte stream the TCP steps carry, checked at both ends.
pub mod net {
    /// The guest's address (a /24).
    pub const GUEST_IP: [u8; 4] = [198, 18, 0, 2];
    /// The host's address on the TAP (a /24); the loopback floor takes it too.
    pub const HOST_IP: [u8; 4] = [198, 18, 0, 1];
    /// The host's UDP echo server (`udp=N`).
    pub const ECHO_PORT: u16 = 7001;
    /// The host's TCP sink (`tcp-send`).
    pub const TCP_SINK_PORT: u16 = 7002;
    /// The host's TCP source (`tcp-recv`).
    pub const TCP_SOURCE_PORT: u16 = 7003;
    /// The host's UDP sink (`udp-flood`), which answers `end` with `done`.
    pub const FLOOD_PORT: u16 = 7004;
    /// The guest's port for the flood: the host's `done` arrives there.
    pub const FLOOD_REPLY_PORT: u16 = 7104;
    /// The guest's port for `until-bye`.
    pub const BYE_PORT: u16 = 7009;
    /// Payload bytes of a `udp-flood` datagram and of a `udp` request.
    pub const DATAGRAM: usize = 64;

    /// Byte `i` of the TCP steps' stream.
    pub const fn pattern(i: u64) -> u8 {
        (i.wrapping_mul(0x9E37_79B9) >> 13) as u8
    }

    /// FNV-1a's starting value.
    pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

    /// FNV-1a of `bytes` continuing from `hash` (the stream's hash both ends print).
    pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(hash, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// The multi-vCPU storage scenario (`smp-io`) both ends check: where each vCPU's I/O lands on the disk
/// and the bytes it writes there (the guest reads them back; the host finds them in the image).
pub mod smp_io {
    /// Bytes of every I/O (one page).
    pub const IO_BYTES: usize = 4096;
    /// 512-byte blocks of every I/O.
    pub const IO_BLOCKS: u64 = (IO_BYTES / 512) as u64;
    /// Most I/Os one region holds.
    pub const MAX_IOS: u64 = 64;
    /// Region of the I/O done on a retargeted channel (regions 0..4 are the vCPUs' own).
    pub const MOVED_REGION: u64 = 4;
    /// Disk bytes the scenario needs at least.
    pub const DISK_BYTES: u64 = (MOVED_REGION + 1) * MAX_IOS * IO_BYTES as u64;

    /// First block of I/O `io` of `region`.
    pub const fn lba(region: u64, io: u64) -> u64 {
        (region * MAX_IOS + io) * IO_BLOCKS
    }

    /// The `word`-th u64 (little-endian) that I/O `io` of `region` writes.
    pub const fn word(region: u64, io: u64, word: u64) -> u64 {
        0x5350_0000_0000_0000 | (region << 40) | (io << 20) | word
    }
}
