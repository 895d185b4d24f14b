//! Unit tests of the ring memories: every alignment, wrapped gather/scatter, page crossings.

use super::*;
use alloc::vec::Vec;

#[test]
fn aligned_buffer_roundtrip_at_every_alignment() {
    let mem = AlignedRingBuffer::new(256);
    for off in 0..32 {
        for len in 0..40 {
            let src: Vec<u8> = (0..len).map(|i| (off * 7 + i * 13 + 1) as u8).collect();
            mem.write_bytes(off, &src);
            let mut dst = alloc::vec![0u8; len];
            mem.read_bytes(off, &mut dst);
            assert_eq!(src, dst, "off {off} len {len}");
        }
    }
}

#[test]
fn u32_fields_are_little_endian_in_bytes() {
    let mem = AlignedRingBuffer::new(64);
    mem.store_u32(4, 0x1122_3344, Ordering::Relaxed);
    let mut b = [0u8; 4];
    mem.read_bytes(4, &mut b);
    assert_eq!(u32::from_ne_bytes(b), 0x1122_3344);
    assert_eq!(mem.load_u32(4, Ordering::Relaxed), 0x1122_3344);
    assert_eq!(mem.load_u32(0, Ordering::Relaxed), 0);
}

#[test]
fn paged_memory_translates_through_scattered_pages() {
    // Three pages in reverse physical order: ring offset 0 lives in the last page.
    let backing = AlignedRingBuffer::new(3 * PAGE_SIZE);
    let base = backing.view().base;
    let pages: Vec<NonNull<u8>> = (0..3)
        .rev()
        .map(|i| NonNull::new(base.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap())
        .collect();
    // SAFETY: the pages are live, writable and only accessed atomically while `paged` lives.
    let paged = unsafe { PagedMemory::new(pages) };
    assert_eq!(paged.len(), 3 * PAGE_SIZE);
    let src: Vec<u8> = (0..PAGE_SIZE + 100).map(|i| i as u8).collect();
    paged.write_bytes(PAGE_SIZE - 50, &src);
    let mut dst = alloc::vec![0u8; src.len()];
    paged.read_bytes(PAGE_SIZE - 50, &mut dst);
    assert_eq!(src, dst);
    // Ring byte PAGE_SIZE - 50 is physical byte 2 * PAGE_SIZE + PAGE_SIZE - 50.
    let mut b = [0u8; 1];
    backing.read_bytes(3 * PAGE_SIZE - 50, &mut b);
    assert_eq!(b[0], src[0]);
    paged.store_u32(PAGE_SIZE, 7, Ordering::Release);
    assert_eq!(backing.load_u32(PAGE_SIZE, Ordering::Acquire), 7);
}

#[test]
#[should_panic(expected = "out of range")]
fn out_of_range_is_a_programmer_error() {
    let mem = AlignedRingBuffer::new(64);
    let mut b = [0u8; 8];
    mem.read_bytes(60, &mut b);
}

#[test]
fn bulk_and_word_copies_roundtrip_at_every_alignment() {
    let mem = AlignedRingBuffer::new(1024);
    for off in 0..16 {
        for len in (0..300)
            .step_by(7)
            .chain([copy::BULK_MIN - 1, copy::BULK_MIN, 1024 - 16])
        {
            let src: Vec<u8> = (0..len).map(|i| (off * 3 + i * 11 + 5) as u8).collect();
            mem.write_bytes(0, &[0xee; 1024]);
            mem.write_bytes(off, &src);
            let mut all = alloc::vec![0u8; 1024];
            mem.read_bytes(0, &mut all);
            assert_eq!(&all[off..off + len], &src[..], "off {off} len {len}");
            assert!(
                all[..off].iter().all(|&b| b == 0xee),
                "before, off {off} len {len}"
            );
            assert!(
                all[off + len..].iter().all(|&b| b == 0xee),
                "after, off {off} len {len}"
            );
            let mut dst = alloc::vec![0u8; len];
            mem.read_bytes(off, &mut dst);
            assert_eq!(src, dst, "off {off} len {len}");
        }
    }
}

/// Implements only the required methods, so the wrapped copies use the trait's defaults.
struct DefaultsOnly(AlignedRingBuffer);

impl RingMemory for DefaultsOnly {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.0.load_u32(off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.0.store_u32(off, value, order)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.0.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.0.write_bytes(off, src)
    }
}

/// Four pages in the order 2, 0, 3, 1 of `backing`.
fn scattered(backing: &AlignedRingBuffer) -> PagedMemory<'_> {
    let base = backing.view().base;
    let pages: Vec<NonNull<u8>> = [2, 0, 3, 1]
        .iter()
        .map(|i| NonNull::new(base.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap())
        .collect();
    // SAFETY: the pages are live and writable while `backing` is borrowed, and only accessed
    // through this module.
    unsafe { PagedMemory::new(pages) }
}

/// Checks wrapped gather writes and scatter reads against a plain byte model.
fn check_wrapped<M: RingMemory>(
    mem: &M,
    region: CircularRegion,
    pos: usize,
    lens: &[usize],
    seed: u8,
) {
    let mut model = alloc::vec![0u8; mem.len()];
    mem.read_bytes(0, &mut model);
    let parts: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| seed ^ (k as u8 * 31) ^ (i as u8)).collect())
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    let flat: Vec<u8> = parts.concat();
    for (i, &b) in flat.iter().enumerate() {
        model[region.start + (pos + i) % region.size] = b;
    }
    mem.write_wrapped(region, pos, &refs);
    let mut all = alloc::vec![0u8; mem.len()];
    mem.read_bytes(0, &mut all);
    assert!(
        all == model,
        "write_wrapped {region:?} pos {pos} lens {lens:?}"
    );
    let mut back = alloc::vec![0u8; flat.len()];
    mem.read_wrapped(region, pos, &mut back);
    assert_eq!(
        back, flat,
        "read_wrapped {region:?} pos {pos} lens {lens:?}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    #[test]
    fn wrapped_copies_match_a_byte_model(
        start in 0usize..(2 * PAGE_SIZE),
        size in 1usize..(2 * PAGE_SIZE),
        pos_frac in 0.0f64..1.0,
        lens in proptest::collection::vec(0usize..1500, 0..5),
        seed in proptest::prelude::any::<u8>(),
    ) {
        let pos = ((size as f64 * pos_frac) as usize).min(size - 1);
        // Trim the parts to fit the region once.
        let mut left = size;
        let lens: Vec<usize> = lens.into_iter().map(|n| { let n = n.min(left); left -= n; n }).collect();
        let region = CircularRegion { start, size };
        let buffer = AlignedRingBuffer::new(4 * PAGE_SIZE);
        check_wrapped(&buffer, region, pos, &lens, seed);
        check_wrapped(&buffer.view(), region, pos, &lens, seed.wrapping_add(1));
        check_wrapped(&&buffer, region, pos, &lens, seed.wrapping_add(2));
        check_wrapped(&alloc::sync::Arc::new(AlignedRingBuffer::new(4 * PAGE_SIZE)), region, pos, &lens, seed);
        let backing = AlignedRingBuffer::new(4 * PAGE_SIZE);
        check_wrapped(&scattered(&backing), region, pos, &lens, seed.wrapping_add(3));
        check_wrapped(&DefaultsOnly(AlignedRingBuffer::new(4 * PAGE_SIZE)), region, pos, &lens, seed);
    }
}

#[test]
fn paged_wrapped_write_lands_in_the_right_physical_pages() {
    let backing = AlignedRingBuffer::new(4 * PAGE_SIZE);
    let paged = scattered(&backing);
    // Region = ring pages 1..4 (physical 0, 3, 1); write 16 bytes before its end and 16 after
    // its start, and a page crossing in the middle.
    let region = CircularRegion {
        start: PAGE_SIZE,
        size: 3 * PAGE_SIZE,
    };
    let a = [0xaau8; 100];
    let b = [0xbbu8; 32];
    paged.write_wrapped(region, PAGE_SIZE - 50, &[&a]);
    paged.write_wrapped(region, 3 * PAGE_SIZE - 16, &[&b]);
    let byte = |phys: usize| {
        let mut x = [0u8; 1];
        backing.read_bytes(phys, &mut x);
        x[0]
    };
    // Ring byte 2 * PAGE_SIZE - 50 is in ring page 1 = physical page 0.
    assert_eq!(byte(PAGE_SIZE - 50), 0xaa);
    assert_eq!(byte(PAGE_SIZE - 51), 0);
    // ... and continues in ring page 2 = physical page 3.
    assert_eq!(byte(3 * PAGE_SIZE + 49), 0xaa);
    assert_eq!(byte(3 * PAGE_SIZE + 50), 0);
    // The wrapped write ends in ring page 3 = physical page 1 and resumes at the region start.
    assert_eq!(byte(2 * PAGE_SIZE - 16), 0xbb);
    assert_eq!(byte(2 * PAGE_SIZE - 17), 0);
    assert_eq!(byte(15), 0xbb);
    assert_eq!(byte(16), 0);
    // Ring page 0 (physical 2) is outside the region and untouched.
    let mut page0 = alloc::vec![0u8; PAGE_SIZE];
    backing.read_bytes(2 * PAGE_SIZE, &mut page0);
    assert!(page0.iter().all(|&x| x == 0));
}

#[test]
#[should_panic(expected = "out of range")]
fn wrapped_read_longer_than_the_region_panics() {
    let mem = AlignedRingBuffer::new(256);
    let mut b = [0u8; 65];
    mem.read_wrapped(
        CircularRegion {
            start: 64,
            size: 64,
        },
        0,
        &mut b,
    );
}

#[test]
#[should_panic(expected = "out of range")]
fn wrapped_write_at_the_region_end_panics() {
    let mem = AlignedRingBuffer::new(256);
    mem.write_wrapped(
        CircularRegion {
            start: 64,
            size: 64,
        },
        64,
        &[&[1]],
    );
}

#[test]
#[should_panic(expected = "out of range")]
fn wrapped_gather_longer_than_the_region_panics() {
    let mem = AlignedRingBuffer::new(256);
    mem.write_wrapped(
        CircularRegion {
            start: 64,
            size: 64,
        },
        8,
        &[&[0; 40], &[0; 25]],
    );
}

#[test]
#[should_panic(expected = "out of range")]
fn region_beyond_the_memory_panics() {
    let mem = AlignedRingBuffer::new(256);
    let mut b = [0u8; 8];
    mem.read_wrapped(
        CircularRegion {
            start: 200,
            size: 64,
        },
        0,
        &mut b,
    );
}

#[test]
#[should_panic(expected = "out of range")]
fn default_wrapped_copies_check_too() {
    let mem = DefaultsOnly(AlignedRingBuffer::new(256));
    mem.write_wrapped(
        CircularRegion {
            start: 64,
            size: 64,
        },
        8,
        &[&[0; 40], &[0; 25]],
    );
}
