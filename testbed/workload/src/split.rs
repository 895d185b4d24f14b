//! One workload on several vCPUs at once: [`vp_share`] cuts a spec's LBA range into one contiguous
//! share per VP (the first `slots / vps` block slots to VP 0, the next to VP 1, ...; a remainder is
//! left untouched), and each VP runs the spec's own kind, block size, queue depth, I/O count, budget and
//! seed on its share (random kinds still issue at most one I/O per slot of their share). Shares never
//! overlap, so every VP's reads see what the disk held before the run plus that VP's own writes, and the
//! host replays each VP's writes independently. One VP's share is the spec itself.
//!
//! [`combine_checksums`] folds the VPs' sequence checksums, in VP order, into the one a result line
//! carries (one VP: its own checksum, unchanged).

use crate::sequence::{Plan, PlanError};
use crate::spec::{LbaRange, WorkloadSpec};

/// Most VPs one workload is split over.
pub const MAX_VPS: usize = 64;

/// The part of `spec` that VP `vp` of `vps` runs on a device of `capacity_sectors` sectors.
pub fn vp_share(
    spec: &WorkloadSpec,
    vp: usize,
    vps: usize,
    capacity_sectors: u64,
) -> Result<WorkloadSpec, PlanError> {
    let plan = Plan::new(spec, capacity_sectors)?;
    if vps <= 1 {
        return Ok(spec.clone());
    }
    let per = plan.slots() / vps as u64;
    if per == 0 || vp >= vps {
        return Err(PlanError::NoSlot(spec.block_bytes));
    }
    let sectors = per * plan.block_sectors();
    Ok(WorkloadSpec {
        lba_range: LbaRange {
            start: spec.lba_range.start + vp as u64 * sectors,
            count: sectors,
        },
        ..spec.clone()
    })
}

/// Every VP's share of `spec`, in VP order.
pub fn vp_shares(
    spec: &WorkloadSpec,
    vps: usize,
    capacity_sectors: u64,
) -> Result<alloc::vec::Vec<WorkloadSpec>, PlanError> {
    (0..vps.max(1))
        .map(|vp| vp_share(spec, vp, vps, capacity_sectors))
        .collect()
}

/// The checksum of a run split over VPs whose own checksums are `per_vp` (in VP order): FNV-1a over
/// their bytes; one VP's is its own.
pub fn combine_checksums(per_vp: &[u64]) -> u64 {
    match per_vp {
        [one] => *one,
        _ => per_vp
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Op;
    use crate::spec::Kind;
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    fn spec(kind: Kind, bs: u32, n: u64, start: u64, count: u64) -> WorkloadSpec {
        WorkloadSpec {
            lba_range: LbaRange { start, count },
            ..WorkloadSpec::new("t", kind, bs, 8, n)
        }
    }

    #[test]
    fn one_vp_runs_the_spec_itself() {
        let s = spec(Kind::RandRead, 4096, 100, 0, 0);
        assert_eq!(vp_share(&s, 0, 1, 1 << 20).unwrap(), s);
        assert_eq!(combine_checksums(&[7]), 7);
    }

    #[test]
    fn shares_are_contiguous_disjoint_and_inside_the_range() {
        let s = spec(Kind::RandWrite, 4096, 10_000, 64, 0);
        let capacity = 64 + 8 * 1001 + 3;
        let shares = vp_shares(&s, 4, capacity).unwrap();
        // 1001 slots: 250 each, the last slot untouched.
        for (vp, share) in shares.iter().enumerate() {
            assert_eq!(share.lba_range.start, 64 + vp as u64 * 2000);
            assert_eq!(share.lba_range.count, 2000);
            let plan = Plan::new(share, capacity).unwrap();
            assert_eq!(plan.ios(), 250);
            assert_eq!((share.queue_depth, share.seed), (s.queue_depth, s.seed));
        }
        assert!(vp_share(&s, 4, 4, capacity).is_err());
        let tiny = spec(Kind::SeqRead, 4096, 10, 0, 24);
        assert_eq!(vp_share(&tiny, 0, 4, 100), Err(PlanError::NoSlot(4096)));
    }

    #[test]
    fn combined_checksums_depend_on_every_vp_and_its_order() {
        let c = combine_checksums(&[1, 2]);
        assert_ne!(c, combine_checksums(&[2, 1]));
        assert_ne!(c, combine_checksums(&[1, 3]));
        assert_ne!(c, combine_checksums(&[1, 2, 0]));
    }

    proptest! {
        #[test]
        fn no_two_vps_touch_one_sector(vps in 2usize..5, slots in 8u64..600, n in 1u64..700, seed in any::<u64>()) {
            let s = WorkloadSpec { seed, ..spec(Kind::Mix { read_percent: 50 }, 1024, n, 16, slots * 2) };
            let capacity = 16 + slots * 2;
            let mut seen = BTreeSet::new();
            for share in vp_shares(&s, vps, capacity).unwrap() {
                let plan = Plan::new(&share, capacity).unwrap();
                let mine: BTreeSet<u64> = (0..plan.ios()).map(|i| plan.io(i).1).collect();
                prop_assert!(mine.iter().all(|s| !seen.contains(s)));
                prop_assert!(mine.iter().all(|&s| (16..capacity).contains(&s)));
                prop_assert!((0..plan.ios()).all(|i| matches!(plan.io(i).0, Op::Read | Op::Write)));
                seen.extend(mine);
            }
        }
    }
}
