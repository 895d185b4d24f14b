//! The deterministic I/O sequence of a workload on a device of known size ([`Plan`]). The guest's engine
//! and the host's verification compute the same sequence from the same spec.
//!
//! The range is cut into block slots of `block_bytes`. Random kinds visit the slots in a seeded
//! pseudo-random **permutation** (a Feistel network over the next power of four, cycle-walked into
//! range), so each slot is touched at most once per run: a random workload issues at most one I/O per
//! slot. Sequential kinds walk the slots in order and wrap at the end. Mixed workloads pick read or
//! write per I/O from a seeded hash.

use crate::pattern::mix64;
use crate::queue::Op;
use crate::spec::{Kind, WorkloadSpec};

/// Why a spec cannot run on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The LBA range reaches beyond the device.
    #[error("LBA range {start}+{count} does not fit a device of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        start: u64,
        /// Sectors asked for (0 = to the end).
        count: u64,
        /// Device sectors.
        capacity: u64,
    },
    /// The range holds no whole block.
    #[error("the LBA range holds no whole {0}-byte block")]
    NoSlot(u32),
}

/// A workload resolved against a device: which I/O is the i-th.
#[derive(Debug, Clone)]
pub struct Plan {
    kind: Kind,
    seed: u64,
    block_bytes: u64,
    start_sector: u64,
    slots: u64,
    ios: u64,
    /// Feistel half width in bits (the permutation domain is 4^half).
    half: u32,
}

impl Plan {
    /// Resolve `spec` on a device of `capacity_sectors` 512-byte sectors.
    pub fn new(spec: &WorkloadSpec, capacity_sectors: u64) -> Result<Self, PlanError> {
        let r = spec.lba_range;
        let out_of_range = PlanError::OutOfRange {
            start: r.start,
            count: r.count,
            capacity: capacity_sectors,
        };
        let count = if r.count == 0 {
            capacity_sectors.checked_sub(r.start).ok_or(out_of_range)?
        } else {
            r.count
        };
        match r.start.checked_add(count) {
            Some(end) if end <= capacity_sectors => {}
            _ => return Err(out_of_range),
        }
        let block_sectors = u64::from(spec.block_bytes / 512).max(1);
        let slots = count / block_sectors;
        if slots == 0 {
            return Err(PlanError::NoSlot(spec.block_bytes));
        }
        let ios = if spec.kind.is_random() {
            spec.max_ios.min(slots)
        } else {
            spec.max_ios
        };
        // Smallest even-width domain 4^half >= slots.
        let bits = 64 - (slots - 1).leading_zeros();
        let half = bits.div_ceil(2).max(1);
        Ok(Self {
            kind: spec.kind,
            seed: spec.seed,
            block_bytes: u64::from(spec.block_bytes),
            start_sector: r.start,
            slots,
            ios,
            half,
        })
    }

    /// I/Os the plan holds (random kinds: at most one per slot).
    pub fn ios(&self) -> u64 {
        self.ios
    }

    /// Block slots in the range.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Bytes per I/O.
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Sectors per I/O.
    pub fn block_sectors(&self) -> u64 {
        self.block_bytes / 512
    }

    /// One past the last sector the plan can touch.
    pub fn end_sector(&self) -> u64 {
        self.start_sector + self.slots * self.block_sectors()
    }

    /// The i-th I/O: its direction and first 512-byte sector.
    pub fn io(&self, i: u64) -> (Op, u64) {
        let slot = if self.kind.is_random() {
            self.permute(i % self.slots)
        } else {
            i % self.slots
        };
        let op = match self.kind {
            Kind::RandRead | Kind::SeqRead => Op::Read,
            Kind::RandWrite | Kind::SeqWrite => Op::Write,
            Kind::Mix { read_percent } => {
                if mix64(self.seed ^ mix64(i ^ 0x6d69_7865_6400_0000)) % 100
                    < u64::from(read_percent)
                {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        (op, self.start_sector + slot * self.block_sectors())
    }

    /// A digest of the first `ios` I/Os (direction and sector, in order): the guest reports it, the host
    /// recomputes it to prove both sides saw the same sequence.
    pub fn checksum(&self, ios: u64) -> u64 {
        let mut c = Checksum::new();
        for i in 0..ios {
            let (op, sector) = self.io(i);
            c.add(op, sector);
        }
        c.value()
    }

    fn round(&self, x: u64, r: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        mix64(
            x ^ mix64(
                self.seed
                    .wrapping_add(r.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ),
        ) & mask
    }

    /// A bijection on [0, 4^half), walked until it lands below `slots`.
    fn permute(&self, i: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        let mut x = i;
        loop {
            let (mut l, mut r) = (x >> self.half, x & mask);
            for round in 0..4 {
                let next = l ^ self.round(r, round);
                l = r;
                r = next;
            }
            x = (l << self.half) | r;
            if x < self.slots {
                return x;
            }
        }
    }
}

/// The running digest behind [`Plan::checksum`] (FNV-1a over direction and sector).
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Checksum {
    /// An empty digest.
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Add one I/O.
    pub fn add(&mut self, op: Op, sector: u64) {
        let tag = match op {
            Op::Read => b'r',
            Op::Write => b'w',
        };
        for b in core::iter::once(tag).chain(sector.to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LbaRange;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn spec(kind: Kind, bs: u32, n: u64, seed: u64, start: u64, count: u64) -> WorkloadSpec {
        WorkloadSpec {
            seed,
            lba_range: LbaRange { start, count },
            ..WorkloadSpec::new("t", kind, bs, 4, n)
        }
    }

    #[test]
    fn random_offsets_are_a_permutation_of_slots() {
        for slots in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let plan = Plan::new(
                &spec(Kind::RandRead, 4096, 1 << 20, 9, 64, slots * 8),
                1 << 30,
            )
            .unwrap();
            assert_eq!(plan.ios(), slots);
            let seen: BTreeSet<u64> = (0..slots).map(|i| plan.io(i).1).collect();
            assert_eq!(seen.len() as u64, slots);
            assert!(seen
                .iter()
                .all(|s| (s - 64).is_multiple_of(8) && *s < 64 + slots * 8));
        }
    }

    #[test]
    fn permutation_depends_on_the_seed_and_is_not_the_identity() {
        let a = Plan::new(&spec(Kind::RandWrite, 512, 100, 1, 0, 1000), 1000).unwrap();
        let b = Plan::new(&spec(Kind::RandWrite, 512, 100, 2, 0, 1000), 1000).unwrap();
        let sa: Vec<u64> = (0..100).map(|i| a.io(i).1).collect();
        let sb: Vec<u64> = (0..100).map(|i| b.io(i).1).collect();
        assert_ne!(sa, sb);
        assert_ne!(sa, (0..100).collect::<Vec<_>>());
        assert_eq!(a.checksum(100), a.clone().checksum(100));
        assert_ne!(a.checksum(100), b.checksum(100));
        assert_ne!(a.checksum(99), a.checksum(100));
    }

    #[test]
    fn sequential_wraps_and_whole_device_range() {
        let plan = Plan::new(&spec(Kind::SeqRead, 65536, 10, 1, 0, 0), 4 * 128 + 5).unwrap();
        assert_eq!(plan.slots(), 4);
        assert_eq!(plan.ios(), 10);
        let s: Vec<u64> = (0..6).map(|i| plan.io(i).1).collect();
        assert_eq!(s, [0, 128, 256, 384, 0, 128]);
        assert_eq!(plan.end_sector(), 512);
    }

    #[test]
    fn mix_honours_the_read_share() {
        let plan = Plan::new(
            &spec(Kind::Mix { read_percent: 70 }, 512, 10000, 5, 0, 0),
            20000,
        )
        .unwrap();
        let reads = (0..10000).filter(|&i| plan.io(i).0 == Op::Read).count();
        assert!((6500..7500).contains(&reads), "{reads}");
        let all_reads = Plan::new(
            &spec(Kind::Mix { read_percent: 100 }, 512, 100, 5, 0, 0),
            200,
        )
        .unwrap();
        assert!((0..100).all(|i| all_reads.io(i).0 == Op::Read));
    }

    #[test]
    fn ranges_outside_the_device_are_refused() {
        assert!(matches!(
            Plan::new(&spec(Kind::SeqRead, 512, 1, 1, 10, 0), 5),
            Err(PlanError::OutOfRange { .. })
        ));
        assert!(matches!(
            Plan::new(&spec(Kind::SeqRead, 512, 1, 1, 0, 11), 10),
            Err(PlanError::OutOfRange { .. })
        ));
        assert_eq!(
            Plan::new(&spec(Kind::SeqRead, 4096, 1, 1, 0, 7), 10).unwrap_err(),
            PlanError::NoSlot(4096)
        );
    }

    proptest! {
        #[test]
        fn permutation_never_repeats(slots in 1u64..3000, seed in any::<u64>()) {
            let plan = Plan::new(&spec(Kind::RandRead, 512, slots, seed, 0, slots), slots).unwrap();
            let seen: BTreeSet<u64> = (0..slots).map(|i| plan.io(i).1).collect();
            prop_assert_eq!(seen.len() as u64, slots);
        }
    }
}
