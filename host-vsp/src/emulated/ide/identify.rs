//! The 512-byte IDENTIFY DEVICE data block (ATA/ATAPI-6 §8.15) of the emulated disk: ASCII strings
//! (byte-swapped within each word), the default CHS geometry, LBA28 and LBA48 capacities, the supported and
//! enabled command sets (48-bit addressing, FLUSH CACHE, FLUSH CACHE EXT) and the integrity word.

/// Largest sector count addressable with 28-bit LBAs (words 60–61 saturate here).
pub const LBA28_MAX_SECTORS: u64 = 0x0FFF_FFFF;

/// Identity strings of the emulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveIdentity {
    /// Model number (words 27–46, at most 40 ASCII characters, space padded).
    pub model: String,
    /// Serial number (words 10–19, at most 20 ASCII characters, space padded).
    pub serial: String,
    /// Firmware revision (words 23–26, at most 8 ASCII characters, space padded).
    pub firmware: String,
}

impl Default for DriveIdentity {
    fn default() -> Self {
        Self {
            model: "viridian emulated ATA disk".into(),
            serial: "VIRIDIAN-IDE-0001".into(),
            firmware: "1.0".into(),
        }
    }
}

/// Writes `text` into `words` as ATA strings: two characters per word, first character in the high byte,
/// space padded, non-ASCII replaced by `?`, truncated to the field.
fn put_string(words: &mut [u16], text: &str) {
    let mut bytes = text
        .bytes()
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                b
            } else {
                b'?'
            }
        })
        .chain(core::iter::repeat(b' '));
    for w in words {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// Builds the IDENTIFY DEVICE block for a disk of `sectors` 512-byte sectors.
pub fn identify_block(sectors: u64, identity: &DriveIdentity) -> [u8; 512] {
    let mut w = [0u16; 256];
    // Fixed, non-removable ATA device.
    w[0] = 0x0040;
    // Default CHS geometry (obsolete, but older drivers still read it).
    let (heads, spt) = (16u64, 63u64);
    let cylinders = (sectors / (heads * spt)).clamp(1, 16383);
    w[1] = cylinders as u16;
    w[3] = heads as u16;
    w[6] = spt as u16;
    put_string(&mut w[10..20], &identity.serial);
    put_string(&mut w[23..27], &identity.firmware);
    put_string(&mut w[27..47], &identity.model);
    // READ/WRITE MULTIPLE not supported: bit 15 set, zero sectors per block.
    w[47] = 0x8000;
    // Capabilities: LBA supported (bit 9); IORDY may be disabled (bit 10) is left clear.
    w[49] = 0x0200;
    w[50] = 0x4000;
    // Words 54–58 and 64–70 are valid.
    w[53] = 0x0003;
    let chs = cylinders * heads * spt;
    w[54] = cylinders as u16;
    w[55] = heads as u16;
    w[56] = spt as u16;
    w[57] = chs as u16;
    w[58] = (chs >> 16) as u16;
    let lba28 = sectors.min(LBA28_MAX_SECTORS);
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    // PIO modes 3 and 4.
    w[64] = 0x0003;
    // Major version: ATA-1 through ATA/ATAPI-6.
    w[80] = 0x007E;
    // Supported: write cache (82 bit 5); 48-bit addressing (83 bit 10), FLUSH CACHE (bit 12),
    // FLUSH CACHE EXT (bit 13); words 83/84 valid (bit 14).
    w[82] = 0x0020;
    w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400;
    w[84] = 0x4000;
    // Enabled: the same.
    w[85] = 0x0020;
    w[86] = 0x2000 | 0x1000 | 0x0400;
    w[87] = 0x4000;
    // Maximum user LBA for 48-bit commands (words 100–103).
    for (i, word) in w[100..104].iter_mut().enumerate() {
        *word = (sectors >> (16 * i)) as u16;
    }
    let mut block = [0u8; 512];
    for (i, word) in w.iter().enumerate() {
        block[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
    }
    // Integrity word: signature 0xA5, then a checksum making the 512 bytes sum to 0 (mod 256).
    block[510] = 0xA5;
    let sum = block[..511].iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    block[511] = sum.wrapping_neg();
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(block: &[u8; 512], i: usize) -> u16 {
        u16::from_le_bytes([block[2 * i], block[2 * i + 1]])
    }

    fn string(block: &[u8; 512], words: core::ops::Range<usize>) -> String {
        words
            .flat_map(|i| word(block, i).to_be_bytes())
            .map(char::from)
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    #[test]
    fn strings_capacities_and_checksum() {
        let id = DriveIdentity {
            model: "Model X".into(),
            serial: "SN123".into(),
            firmware: "FW".into(),
        };
        let sectors = 0x1_2345_6789;
        let b = identify_block(sectors, &id);
        assert_eq!(string(&b, 27..47), "Model X");
        assert_eq!(string(&b, 10..20), "SN123");
        assert_eq!(string(&b, 23..27), "FW");
        assert_eq!(
            u32::from(word(&b, 60)) | (u32::from(word(&b, 61)) << 16),
            0x0FFF_FFFF
        );
        let lba48 = (0..4).fold(0u64, |acc, i| {
            acc | (u64::from(word(&b, 100 + i)) << (16 * i))
        });
        assert_eq!(lba48, sectors);
        assert_ne!(word(&b, 83) & 0x0400, 0, "48-bit supported");
        assert_ne!(word(&b, 86) & 0x0400, 0, "48-bit enabled");
        assert_ne!(word(&b, 49) & 0x0200, 0, "LBA");
        assert_eq!(b[510], 0xA5);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
    }

    #[test]
    fn small_disk_reports_exact_lba28_count_and_sane_geometry() {
        let b = identify_block(2048, &DriveIdentity::default());
        assert_eq!(word(&b, 60), 2048);
        assert_eq!(word(&b, 61), 0);
        assert_eq!(word(&b, 1), 2);
        let long = DriveIdentity {
            model: "é".repeat(50),
            ..Default::default()
        };
        let b = identify_block(1, &long);
        assert!(string(&b, 27..47).bytes().all(|c| c == b'?'));
    }
}
