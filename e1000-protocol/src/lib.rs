//! The Intel 82540EM gigabit Ethernet controller ("e1000") as software sees it, from the 8254x
//! family's software developer's manual: the memory-mapped register offsets and their bits
//! ([`reg`] and the bit modules), the legacy receive and transmit descriptors ([`RxDescriptor`],
//! [`TxDescriptor`]) and the EEPROM words a driver reads ([`eeprom`]). The host's device model and
//! the guest's driver both use these definitions and nothing else.
//!
//! Every register is 32 bits wide and accessed as one aligned dword. Values are little-endian.
#![no_std]
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the register window (BAR 0 of the 82540EM: 128 KiB).
pub const MMIO_SIZE: u64 = 0x2_0000;
/// Size of one descriptor (legacy receive or transmit) in a ring.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Descriptor ring lengths (RDLEN/TDLEN) are multiples of this many bytes (eight descriptors).
pub const RING_LEN_ALIGN: u32 = 128;
/// The bits of RDLEN/TDLEN that hold the ring length (bits 19:7; the low seven read as zero).
pub const RING_LEN_MASK: u32 = 0x000F_FF80;
/// Descriptor ring bases (RDBAL/TDBAL) are 16-byte aligned: the low four bits are ignored.
pub const RING_BASE_ALIGN: u32 = 16;
/// The bits of RDH/RDT/TDH/TDT that hold a descriptor index.
pub const RING_INDEX_MASK: u32 = 0xFFFF;
/// Number of receive address (RAL/RAH) pairs.
pub const RECEIVE_ADDRESSES: usize = 16;
/// Number of multicast table array (MTA) registers (4096 hash bits).
pub const MTA_REGISTERS: usize = 128;
/// ITR counts in units of this many nanoseconds.
pub const ITR_UNIT_NS: u64 = 256;

/// Register offsets in the window.
pub mod reg {
    /// Device control.
    pub const CTRL: u32 = 0x0000;
    /// Device status (read only).
    pub const STATUS: u32 = 0x0008;
    /// EEPROM/flash control (bit-banged EEPROM access; not modelled beyond presence).
    pub const EECD: u32 = 0x0010;
    /// EEPROM read: start a word read, poll for done, take the data.
    pub const EERD: u32 = 0x0014;
    /// Extended device control.
    pub const CTRL_EXT: u32 = 0x0018;
    /// MDI (PHY) control.
    pub const MDIC: u32 = 0x0020;
    /// Interrupt cause read (read clears).
    pub const ICR: u32 = 0x00C0;
    /// Interrupt throttling rate.
    pub const ITR: u32 = 0x00C4;
    /// Interrupt cause set (write only).
    pub const ICS: u32 = 0x00C8;
    /// Interrupt mask set (write) / read.
    pub const IMS: u32 = 0x00D0;
    /// Interrupt mask clear (write only).
    pub const IMC: u32 = 0x00D8;
    /// Receive control.
    pub const RCTL: u32 = 0x0100;
    /// Transmit control.
    pub const TCTL: u32 = 0x0400;
    /// Transmit inter-packet gap.
    pub const TIPG: u32 = 0x0410;
    /// Receive descriptor base, low 32 bits.
    pub const RDBAL: u32 = 0x2800;
    /// Receive descriptor base, high 32 bits.
    pub const RDBAH: u32 = 0x2804;
    /// Receive descriptor ring length in bytes.
    pub const RDLEN: u32 = 0x2808;
    /// Receive descriptor head.
    pub const RDH: u32 = 0x2810;
    /// Receive descriptor tail.
    pub const RDT: u32 = 0x2818;
    /// Receive delay timer.
    pub const RDTR: u32 = 0x2820;
    /// Receive interrupt absolute delay timer.
    pub const RADV: u32 = 0x282C;
    /// Transmit descriptor base, low 32 bits.
    pub const TDBAL: u32 = 0x3800;
    /// Transmit descriptor base, high 32 bits.
    pub const TDBAH: u32 = 0x3804;
    /// Transmit descriptor ring length in bytes.
    pub const TDLEN: u32 = 0x3808;
    /// Transmit descriptor head.
    pub const TDH: u32 = 0x3810;
    /// Transmit descriptor tail.
    pub const TDT: u32 = 0x3818;
    /// Transmit interrupt delay value.
    pub const TIDV: u32 = 0x3820;
    /// Transmit absolute interrupt delay value.
    pub const TADV: u32 = 0x382C;
    /// First of the [`MTA_REGISTERS`](super::MTA_REGISTERS) multicast table array registers.
    pub const MTA: u32 = 0x5200;
    /// Receive address low of pair 0 (pair n at `RAL0 + 8 n`).
    pub const RAL0: u32 = 0x5400;
    /// Receive address high of pair 0 (pair n at `RAH0 + 8 n`).
    pub const RAH0: u32 = 0x5404;
}

/// CTRL bits.
pub mod ctrl {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link reset.
    pub const LRST: u32 = 1 << 3;
    /// Auto-speed detection enable.
    pub const ASDE: u32 = 1 << 5;
    /// Set link up.
    pub const SLU: u32 = 1 << 6;
    /// Device reset (self-clearing).
    pub const RST: u32 = 1 << 26;
    /// VLAN mode enable.
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
}

/// STATUS bits.
pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link up.
    pub const LU: u32 = 1 << 1;
    /// Speed field (bits 7:6): 10 = 1000 Mb/s.
    pub const SPEED_MASK: u32 = 0b11 << 6;
    /// 1000 Mb/s.
    pub const SPEED_1000: u32 = 0b10 << 6;
}

/// EECD bits.
pub mod eecd {
    /// An EEPROM is present.
    pub const PRES: u32 = 1 << 8;
}

/// EERD bits (82540 layout).
pub mod eerd {
    /// Start a read.
    pub const START: u32 = 1 << 0;
    /// The read is done and DATA is valid.
    pub const DONE: u32 = 1 << 4;
    /// Word address field shift (bits 15:8).
    pub const ADDR_SHIFT: u32 = 8;
    /// Word address field mask.
    pub const ADDR_MASK: u32 = 0xFF << ADDR_SHIFT;
    /// Data field shift (bits 31:16).
    pub const DATA_SHIFT: u32 = 16;
}

/// Interrupt cause bits (ICR, ICS, IMS, IMC share them).
pub mod icr {
    /// Transmit descriptor written back.
    pub const TXDW: u32 = 1 << 0;
    /// Transmit queue empty.
    pub const TXQE: u32 = 1 << 1;
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
    /// Receive sequence error.
    pub const RXSEQ: u32 = 1 << 3;
    /// Receive descriptor minimum threshold reached.
    pub const RXDMT0: u32 = 1 << 4;
    /// Receiver overrun (no descriptor for a frame that arrived).
    pub const RXO: u32 = 1 << 6;
    /// Receiver timer interrupt (a frame was stored).
    pub const RXT0: u32 = 1 << 7;
    /// The causes the 82540 defines (bits 0–16 less the reserved 5 and 8).
    pub const VALID: u32 = 0x0001_FEDF;
}

/// RCTL bits.
pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Store bad packets.
    pub const SBP: u32 = 1 << 2;
    /// Unicast promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Long packet enable.
    pub const LPE: u32 = 1 << 5;
    /// Loopback mode field (bits 7:6); 00 = none.
    pub const LBM_MASK: u32 = 0b11 << 6;
    /// Descriptor minimum threshold field (bits 9:8); 00 = half.
    pub const RDMTS_MASK: u32 = 0b11 << 8;
    /// Multicast offset field shift (bits 13:12).
    pub const MO_SHIFT: u32 = 12;
    /// Multicast offset field mask.
    pub const MO_MASK: u32 = 0b11 << MO_SHIFT;
    /// Broadcast accept mode.
    pub const BAM: u32 = 1 << 15;
    /// Buffer size field shift (bits 17:16).
    pub const BSIZE_SHIFT: u32 = 16;
    /// Buffer size field mask.
    pub const BSIZE_MASK: u32 = 0b11 << BSIZE_SHIFT;
    /// VLAN filter enable.
    pub const VFE: u32 = 1 << 18;
    /// Buffer size extension (sizes ×16).
    pub const BSEX: u32 = 1 << 25;
    /// Strip the Ethernet CRC from received frames.
    pub const SECRC: u32 = 1 << 26;

    /// The receive buffer size RCTL selects, in bytes (BSIZE with BSEX; BSEX with BSIZE 00 is
    /// reserved and reads as 2048).
    pub const fn buffer_size(rctl: u32) -> usize {
        let bsize = (rctl & BSIZE_MASK) >> BSIZE_SHIFT;
        let extended = rctl & BSEX != 0;
        match (bsize, extended) {
            (0, _) => 2048,
            (1, false) => 1024,
            (2, false) => 512,
            (3, false) => 256,
            (1, true) => 16384,
            (2, true) => 8192,
            _ => 4096,
        }
    }

    /// The BSIZE/BSEX bits that select `bytes` (one of the eight sizes), or `None`.
    pub const fn buffer_size_bits(bytes: usize) -> Option<u32> {
        let (bsize, bsex) = match bytes {
            2048 => (0, 0),
            1024 => (1, 0),
            512 => (2, 0),
            256 => (3, 0),
            16384 => (1, BSEX),
            8192 => (2, BSEX),
            4096 => (3, BSEX),
            _ => return None,
        };
        Some((bsize << BSIZE_SHIFT) | bsex)
    }
}

/// TCTL bits.
pub mod tctl {
    /// Transmitter enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold field shift (bits 11:4).
    pub const CT_SHIFT: u32 = 4;
    /// Collision distance field shift (bits 21:12).
    pub const COLD_SHIFT: u32 = 12;
}

/// The RAH bit that makes a receive address pair valid (the filter uses it).
pub const RAH_AV: u32 = 1 << 31;

/// Receive descriptor status bits.
pub mod rx_status {
    /// Descriptor done: the device wrote it back.
    pub const DD: u8 = 1 << 0;
    /// End of packet: the last descriptor of a frame.
    pub const EOP: u8 = 1 << 1;
    /// Ignore checksum indication: the device did not check the checksums.
    pub const IXSM: u8 = 1 << 2;
}

/// Transmit descriptor command bits (legacy layout, the `cmd` byte).
pub mod tx_cmd {
    /// End of packet.
    pub const EOP: u8 = 1 << 0;
    /// Insert the Ethernet FCS.
    pub const IFCS: u8 = 1 << 1;
    /// Insert checksum (at CSO, from CSS).
    pub const IC: u8 = 1 << 2;
    /// Report status: write DD back when done.
    pub const RS: u8 = 1 << 3;
    /// Report packet sent (82544 only; treated as RS).
    pub const RPS: u8 = 1 << 4;
    /// Descriptor extension: not a legacy descriptor.
    pub const DEXT: u8 = 1 << 5;
    /// VLAN packet enable (insert the tag in `special`).
    pub const VLE: u8 = 1 << 6;
    /// Interrupt delay enable (TIDV).
    pub const IDE: u8 = 1 << 7;
}

/// Transmit descriptor status bits.
pub mod tx_status {
    /// Descriptor done.
    pub const DD: u8 = 1 << 0;
}

/// A legacy receive descriptor: the driver writes `buffer_addr`, the device writes the rest.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RxDescriptor {
    /// Guest physical address of the receive buffer.
    pub buffer_addr: u64,
    /// Bytes stored in this descriptor's buffer.
    pub length: u16,
    /// Packet checksum.
    pub checksum: u16,
    /// [`rx_status`] bits.
    pub status: u8,
    /// Receive error bits.
    pub errors: u8,
    /// VLAN tag.
    pub special: u16,
}

/// Byte offset of [`RxDescriptor::status`] (the device writes it last).
pub const RX_STATUS_OFFSET: usize = 12;

/// A legacy transmit descriptor: the driver writes all but `status`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TxDescriptor {
    /// Guest physical address of the data.
    pub buffer_addr: u64,
    /// Bytes of data.
    pub length: u16,
    /// Checksum offset.
    pub cso: u8,
    /// [`tx_cmd`] bits.
    pub cmd: u8,
    /// [`tx_status`] bits (the device writes DD here).
    pub status: u8,
    /// Checksum start.
    pub css: u8,
    /// VLAN tag.
    pub special: u16,
}

/// Byte offset of [`TxDescriptor::status`].
pub const TX_STATUS_OFFSET: usize = 12;

/// The EEPROM words a driver reads.
pub mod eeprom {
    /// Words in the 82540EM's (Microwire) EEPROM.
    pub const WORDS: usize = 64;
    /// Words 0–2: the MAC address, little-endian byte pairs.
    pub const MAC_WORDS: usize = 3;
    /// The word that makes words `0..=CHECKSUM_WORD` sum to [`CHECKSUM_SUM`].
    pub const CHECKSUM_WORD: usize = 0x3F;
    /// What words `0..=CHECKSUM_WORD` sum to (wrapping) in a valid image.
    pub const CHECKSUM_SUM: u16 = 0xBABA;

    /// The MAC address held in EEPROM words 0–2.
    pub fn mac_of(words: [u16; MAC_WORDS]) -> [u8; 6] {
        let mut mac = [0; 6];
        for (i, w) in words.iter().enumerate() {
            mac[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        mac
    }

    /// A valid image holding `mac`: the MAC words, zeros, and the checksum word.
    pub fn image(mac: [u8; 6]) -> [u16; WORDS] {
        let mut words = [0u16; WORDS];
        for i in 0..MAC_WORDS {
            words[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
        }
        let sum = words[..CHECKSUM_WORD]
            .iter()
            .fold(0u16, |s, w| s.wrapping_add(*w));
        words[CHECKSUM_WORD] = CHECKSUM_SUM.wrapping_sub(sum);
        words
    }

    /// Whether words `0..=CHECKSUM_WORD` sum to [`CHECKSUM_SUM`].
    pub fn checksum_ok(words: &[u16]) -> bool {
        words.len() > CHECKSUM_WORD
            && words[..=CHECKSUM_WORD]
                .iter()
                .fold(0u16, |s, w| s.wrapping_add(*w))
                == CHECKSUM_SUM
    }
}

/// The multicast table bit (0..4096) a destination address hashes to under RCTL's multicast
/// offset `mo` (0–3): twelve bits of the address's last two bytes, from bit 36, 35, 34 or 32.
pub fn multicast_hash(dest: &[u8; 6], mo: u32) -> u16 {
    let (a, b) = (u16::from(dest[4]), u16::from(dest[5]));
    let hash = match mo & 3 {
        0 => (a >> 4) | (b << 4),
        1 => (a >> 3) | (b << 5),
        2 => (a >> 2) | (b << 6),
        _ => a | (b << 8),
    };
    hash & 0xFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn descriptors_have_the_manuals_layout() {
        assert_eq!(size_of::<RxDescriptor>(), DESCRIPTOR_SIZE);
        assert_eq!(offset_of!(RxDescriptor, buffer_addr), 0);
        assert_eq!(offset_of!(RxDescriptor, length), 8);
        assert_eq!(offset_of!(RxDescriptor, checksum), 10);
        assert_eq!(offset_of!(RxDescriptor, status), RX_STATUS_OFFSET);
        assert_eq!(offset_of!(RxDescriptor, errors), 13);
        assert_eq!(offset_of!(RxDescriptor, special), 14);
        assert_eq!(size_of::<TxDescriptor>(), DESCRIPTOR_SIZE);
        assert_eq!(offset_of!(TxDescriptor, length), 8);
        assert_eq!(offset_of!(TxDescriptor, cso), 10);
        assert_eq!(offset_of!(TxDescriptor, cmd), 11);
        assert_eq!(offset_of!(TxDescriptor, status), TX_STATUS_OFFSET);
        assert_eq!(offset_of!(TxDescriptor, css), 13);
        assert_eq!(offset_of!(TxDescriptor, special), 14);
    }

    #[test]
    fn tx_command_bits_sit_in_the_legacy_lower_dword() {
        // In the manual's 32-bit view of bytes 8..12, CMD is bits 31:24: EOP is bit 24, RS 27.
        let d = TxDescriptor {
            length: 60,
            cmd: tx_cmd::EOP | tx_cmd::RS,
            ..Default::default()
        };
        let lower = u32::from_le_bytes(d.as_bytes()[8..12].try_into().unwrap());
        assert_eq!(lower, 0x0900_0000 | 60);
    }

    #[test]
    fn buffer_sizes_round_trip() {
        for bytes in [256, 512, 1024, 2048, 4096, 8192, 16384] {
            let bits = rctl::buffer_size_bits(bytes).unwrap();
            assert_eq!(rctl::buffer_size(bits), bytes);
        }
        assert_eq!(rctl::buffer_size(0), 2048);
        assert_eq!(rctl::buffer_size(0x0003_0000), 256);
        assert_eq!(rctl::buffer_size(0x0203_0000), 4096);
        assert_eq!(rctl::buffer_size_bits(3000), None);
    }

    #[test]
    fn eeprom_image_holds_the_mac_and_a_valid_checksum() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let words = eeprom::image(mac);
        assert_eq!(words[0], 0x5452);
        assert_eq!(eeprom::mac_of([words[0], words[1], words[2]]), mac);
        assert!(eeprom::checksum_ok(&words));
        let mut bad = words;
        bad[7] ^= 1;
        assert!(!eeprom::checksum_ok(&bad));
    }

    #[test]
    fn multicast_hash_takes_the_offset_bits() {
        // 01:00:5e:00:00:fb (mDNS): byte 4 = 0x00, byte 5 = 0xfb.
        let mdns = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
        assert_eq!(multicast_hash(&mdns, 0), 0xfb0);
        assert_eq!(multicast_hash(&mdns, 1), (0xfb << 5) & 0xfff);
        assert_eq!(multicast_hash(&mdns, 2), (0xfb << 6) & 0xfff);
        assert_eq!(multicast_hash(&mdns, 3), 0xb00);
    }
}
