//! Deterministic disk contents. Every 512-byte sector ([`PATTERN_UNIT`]) of a disk holds
//! `pattern(sector, generation)`: generation 0 is what the host pre-fills disks with before read
//! workloads; the write workload that is the k-th bench token of a run writes generation `k + 1`.
//! Because contents depend only on (sector, generation), reads of any size at any offset can be checked,
//! and repeating a write within one workload cannot make the final contents ambiguous.
//!
//! [`DiskModel`] records the generation each sector must hold; the guest checks reads against it, the host
//! replays the same workloads into its own model and checks the disk image after the run.
//!
//! A disk the host did not pre-fill (a user's image) holds data the guest cannot know. Over such a disk
//! ([`DiskModel::over_image`]) generation 0 means "the image's own contents": reads of those sectors are
//! not checked in the guest but folded into a read digest (a sum of [`digest_term`]s of
//! [`sector_hash`]es) that the host recomputes from the image file.

use alloc::vec::Vec;

/// Granularity of the pattern: one value per 512-byte sector.
pub const PATTERN_UNIT: usize = 512;

/// Generation of sectors whose contents are unknown (a failed write): never checked.
pub const UNKNOWN: u8 = u8::MAX;

/// Highest generation a write workload may use.
pub const MAX_GENERATION: u8 = UNKNOWN - 1;

/// SplitMix64 finalizer: a cheap bijective mix with good avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8-byte word at `word` (0..64) of `sector` in `generation`.
fn word(sector: u64, generation: u8, word: u64) -> u64 {
    let key = mix64(sector ^ (u64::from(generation) << 56) ^ 0x5649_5249_4449_414e);
    mix64(key.wrapping_add(word))
}

/// Fill `buf` with the contents of consecutive sectors starting at `first_sector`, as written in
/// `generation` (`salt`). `buf` may have any length; a partial last sector gets that sector's prefix.
pub fn pattern(first_sector: u64, generation: u8, buf: &mut [u8]) {
    for (i, sector_bytes) in buf.chunks_mut(PATTERN_UNIT).enumerate() {
        let sector = first_sector.wrapping_add(i as u64);
        for (w, chunk) in sector_bytes.chunks_mut(8).enumerate() {
            let v = word(sector, generation, w as u64).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The first sector of `buf` (read from `first_sector`) whose contents differ from `generation`'s.
pub fn first_mismatch(first_sector: u64, generation: u8, buf: &[u8]) -> Option<u64> {
    buf.chunks(PATTERN_UNIT).enumerate().find_map(|(i, bytes)| {
        let sector = first_sector.wrapping_add(i as u64);
        let ok = bytes.chunks(8).enumerate().all(|(w, chunk)| {
            let v = word(sector, generation, w as u64).to_le_bytes();
            chunk == &v[..chunk.len()]
        });
        (!ok).then_some(sector)
    })
}

/// A read returned contents no generation explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sector {sector} does not hold generation {expected}")]
pub struct Mismatch {
    /// The first wrong sector.
    pub sector: u64,
    /// The generation it should hold.
    pub expected: u8,
}

/// Hash of one sector's contents (any length; [`PATTERN_UNIT`] bytes in practice): what the read digest
/// of an image disk is made of. Not cryptographic: it catches wrong data, not an adversary.
pub fn sector_hash(bytes: &[u8]) -> u64 {
    let mut h = 0x6a09_e667_f3bc_c908u64 ^ bytes.len() as u64;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    mix64(h)
}

/// What reading `sector`, whose contents hash to `hash` ([`sector_hash`]), adds to a read digest. Terms
/// are summed (wrapping), so the digest does not depend on the order reads complete in.
pub fn digest_term(sector: u64, hash: u64) -> u64 {
    mix64(sector ^ mix64(hash ^ 0x4449_4745_5354))
}

/// Which generation every sector holds. Sectors never written hold generation 0: the pre-fill, or over
/// an image ([`DiskModel::over_image`]) the image's own contents.
/// Grows on demand: only the highest written sector costs memory (one byte per sector).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskModel {
    generations: Vec<u8>,
    /// Generation 0 is the image's own contents (digested, not checked).
    image: bool,
}

impl DiskModel {
    /// Every sector at generation 0, the pre-fill.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every sector holds the image's own contents, which only the host knows: reads of sectors no
    /// workload wrote are digested ([`DiskModel::check_read`]), not checked.
    pub fn over_image() -> Self {
        Self {
            generations: Vec::new(),
            image: true,
        }
    }

    /// Whether generation 0 is the image's own contents.
    pub fn is_over_image(&self) -> bool {
        self.image
    }

    /// The generation of `sector`.
    pub fn generation(&self, sector: u64) -> u8 {
        usize::try_from(sector)
            .ok()
            .and_then(|s| self.generations.get(s).copied())
            .unwrap_or(0)
    }

    /// Record that `count` sectors from `first` now hold `generation`.
    pub fn record(&mut self, first: u64, count: u64, generation: u8) {
        let (Ok(first), Ok(count)) = (usize::try_from(first), usize::try_from(count)) else {
            return;
        };
        let Some(end) = first.checked_add(count) else {
            return;
        };
        if generation == 0 && end > self.generations.len() {
            // Generation 0 is the default: only overwrite what is already stored.
            let stored = self.generations.len();
            if first < stored {
                self.generations[first..stored].fill(0);
            }
            return;
        }
        if end > self.generations.len() {
            self.generations.resize(end, 0);
        }
        self.generations[first..end].fill(generation);
    }

    /// Take what `other` records for the `count` sectors from `first` (a VP's share of a split run,
    /// [`crate::split`], back into the model of the whole disk).
    pub fn adopt(&mut self, other: &DiskModel, first: u64, count: u64) {
        let mut sector = first;
        let end = first.saturating_add(count);
        while sector < end {
            let generation = other.generation(sector);
            let run = (sector..end)
                .take_while(|&s| other.generation(s) == generation)
                .count() as u64;
            self.record(sector, run, generation);
            sector += run;
        }
    }

    /// One past the highest sector that holds a generation other than 0.
    pub fn written_end(&self) -> u64 {
        self.generations
            .iter()
            .rposition(|&g| g != 0)
            .map_or(0, |p| p as u64 + 1)
    }

    /// Check `buf`, read from `first_sector`, against the generations recorded for its sectors
    /// ([`UNKNOWN`] sectors are skipped, and so are an image's own contents).
    pub fn check(&self, first_sector: u64, buf: &[u8]) -> Result<(), Mismatch> {
        self.check_read(first_sector, buf).map(drop)
    }

    /// [`DiskModel::check`], returning what the read adds to the read digest: over an image, the sum of
    /// the [`digest_term`]s of the sectors still holding the image's own contents (else 0).
    pub fn check_read(&self, first_sector: u64, buf: &[u8]) -> Result<u64, Mismatch> {
        let mut digest = 0u64;
        for (i, bytes) in buf.chunks(PATTERN_UNIT).enumerate() {
            let sector = first_sector.wrapping_add(i as u64);
            let expected = self.generation(sector);
            if expected == UNKNOWN {
                continue;
            }
            if expected == 0 && self.image {
                digest = digest.wrapping_add(digest_term(sector, sector_hash(bytes)));
            } else if first_mismatch(sector, expected, bytes).is_some() {
                return Err(Mismatch { sector, expected });
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn adopting_a_range_copies_exactly_that_range() {
        let mut whole = DiskModel::new();
        whole.record(0, 100, 2);
        let mut share = whole.clone();
        share.record(10, 5, 3);
        share.record(40, 20, 0);
        share.record(90, 30, 4);
        whole.adopt(&share, 0, 50);
        assert_eq!(whole.generation(9), 2);
        assert!((10..15).all(|s| whole.generation(s) == 3));
        assert!((40..50).all(|s| whole.generation(s) == 0));
        assert!(
            (50..100).all(|s| whole.generation(s) == 2),
            "outside the range"
        );
        whole.adopt(&share, 95, 30);
        assert!((95..120).all(|s| whole.generation(s) == 4));
        assert_eq!(whole.generation(120), 0);
        // Generation 0 beyond everything stored is already there (and used to panic).
        let mut empty = DiskModel::new();
        empty.adopt(&DiskModel::new(), 65536, 8);
        empty.record(100, 5, 0);
        assert_eq!(empty, DiskModel::new());
    }

    #[test]
    fn pattern_depends_on_sector_and_generation_only() {
        let mut big = vec![0u8; 8 * PATTERN_UNIT];
        pattern(100, 3, &mut big);
        let mut small = vec![0u8; PATTERN_UNIT];
        pattern(103, 3, &mut small);
        assert_eq!(&big[3 * PATTERN_UNIT..4 * PATTERN_UNIT], &small[..]);
        let mut other = vec![0u8; PATTERN_UNIT];
        pattern(103, 4, &mut other);
        assert_ne!(small, other);
        pattern(104, 3, &mut other);
        assert_ne!(small, other);
        // Not trivially zero, and every word differs within a sector.
        assert!(small.iter().any(|&b| b != 0));
        let words: alloc::collections::BTreeSet<_> = small.chunks(8).collect();
        assert_eq!(words.len(), PATTERN_UNIT / 8);
    }

    #[test]
    fn partial_sectors_are_prefixes() {
        let mut full = vec![0u8; PATTERN_UNIT];
        pattern(9, 0, &mut full);
        let mut part = vec![0u8; 13];
        pattern(9, 0, &mut part);
        assert_eq!(&full[..13], &part[..]);
        assert_eq!(first_mismatch(9, 0, &part), None);
    }

    #[test]
    fn mismatch_names_the_first_wrong_sector() {
        let mut buf = vec![0u8; 4 * PATTERN_UNIT];
        pattern(40, 1, &mut buf);
        assert_eq!(first_mismatch(40, 1, &buf), None);
        assert_eq!(first_mismatch(40, 2, &buf), Some(40));
        buf[2 * PATTERN_UNIT + 77] ^= 1;
        assert_eq!(first_mismatch(40, 1, &buf), Some(42));
    }

    #[test]
    fn over_an_image_unwritten_sectors_are_digested_and_written_ones_checked() {
        let mut m = DiskModel::over_image();
        assert!(m.is_over_image() && !DiskModel::new().is_over_image());
        m.record(2, 1, 5);
        let mut buf = vec![0x11u8; 4 * PATTERN_UNIT];
        pattern(2, 5, &mut buf[..PATTERN_UNIT]);
        // Sector 2 holds generation 5; 3, 4, 5 the image's bytes, which only go into the digest.
        let buf = [&vec![0x11u8; PATTERN_UNIT][..], &buf[..]].concat();
        let want: u64 = [1u64, 3, 4, 5].iter().fold(0, |d, &s| {
            d.wrapping_add(digest_term(s, sector_hash(&[0x11; PATTERN_UNIT])))
        });
        // Starting at sector 1: 1 unwritten, 2 written, 3..=5 unwritten.
        let digest = m.check_read(1, &buf[..5 * PATTERN_UNIT]).unwrap();
        assert_eq!(digest, want);
        // The digest depends on the data and on the sector.
        let mut other = buf.clone();
        other[3 * PATTERN_UNIT] ^= 1;
        assert_ne!(m.check_read(1, &other[..5 * PATTERN_UNIT]).unwrap(), want);
        assert_ne!(digest_term(1, 7), digest_term(2, 7));
        // A written sector is still checked.
        other[PATTERN_UNIT + 9] ^= 1;
        assert_eq!(
            m.check_read(1, &other[..5 * PATTERN_UNIT]),
            Err(Mismatch {
                sector: 2,
                expected: 5
            })
        );
        // Over the pre-fill nothing is digested.
        let mut filled = vec![0u8; PATTERN_UNIT];
        pattern(9, 0, &mut filled);
        assert_eq!(DiskModel::new().check_read(9, &filled), Ok(0));
        assert_ne!(sector_hash(&[0; 512]), sector_hash(&[0; 511]));
    }

    #[test]
    fn model_tracks_generations() {
        let mut m = DiskModel::new();
        assert_eq!(m.generation(5), 0);
        assert_eq!(m.written_end(), 0);
        m.record(8, 8, 2);
        m.record(12, 8, 3);
        assert_eq!(
            (
                m.generation(7),
                m.generation(8),
                m.generation(12),
                m.generation(19)
            ),
            (0, 2, 3, 3)
        );
        assert_eq!(m.written_end(), 20);
        m.record(16, 100, 0);
        assert_eq!((m.generation(15), m.generation(16)), (3, 0));
        assert_eq!(m.written_end(), 16);
        m.record(u64::MAX, 2, 1); // overflowing ranges are ignored
        assert_eq!(m.written_end(), 16);

        let mut buf = vec![0u8; 4 * PATTERN_UNIT];
        pattern(6, 0, &mut buf[..2 * PATTERN_UNIT]);
        pattern(8, 2, &mut buf[2 * PATTERN_UNIT..]);
        assert_eq!(m.check(6, &buf), Ok(()));
        buf[3 * PATTERN_UNIT] ^= 0x80;
        assert_eq!(
            m.check(6, &buf),
            Err(Mismatch {
                sector: 9,
                expected: 2
            })
        );
        m.record(9, 1, UNKNOWN);
        assert_eq!(m.check(6, &buf), Ok(()));
    }
}
