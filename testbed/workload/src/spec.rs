//! What a workload is ([`WorkloadSpec`]) and its compact text encoding: one command-line token with no
//! spaces, `NAME:key=value,key=value,...`, e.g. `rr4k-qd32:k=rr,bs=4096,qd=32,n=2000,ms=3000,seed=7`.
//!
//! Keys: `k` kind (`rr` random read, `rw` random write, `sr` sequential read, `sw` sequential write,
//! `mixP` random with P % reads), `bs` block bytes (a multiple of 512; `4k`/`1m` suffixes accepted),
//! `qd` queue depth, `n` I/O count, `ms` time budget in milliseconds (0 = none), `seed`, `lba`
//! `START+COUNT` in 512-byte sectors (COUNT 0 = to the end of the device). `k` and `bs` are required.
//! [`WorkloadSpec`]'s `Display` writes every key, so `parse(format(spec)) == spec`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Largest block a workload may use.
pub const MAX_BLOCK_BYTES: u32 = 1 << 20;
/// Deepest queue a workload may ask for.
pub const MAX_QUEUE_DEPTH: u16 = 256;
/// Most I/Os in one workload (the engine keeps one latency sample per I/O).
pub const MAX_IOS: u64 = 1_000_000;
/// Longest time budget (10 minutes).
pub const MAX_MILLIS: u32 = 600_000;
/// Longest workload name.
pub const MAX_NAME: usize = 32;

/// The access pattern of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential reads (wrapping at the end of the range).
    SeqRead,
    /// Sequential writes (wrapping at the end of the range).
    SeqWrite,
    /// Random reads and writes; `read_percent` of the I/Os are reads.
    Mix {
        /// Share of reads, 0..=100.
        read_percent: u8,
    },
}

impl Kind {
    /// Whether offsets are a permutation of the range's slots (else sequential).
    pub fn is_random(self) -> bool {
        !matches!(self, Kind::SeqRead | Kind::SeqWrite)
    }

    /// Whether the workload may write.
    pub fn writes(self) -> bool {
        match self {
            Kind::RandWrite | Kind::SeqWrite => true,
            Kind::Mix { read_percent } => read_percent < 100,
            Kind::RandRead | Kind::SeqRead => false,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::RandRead => f.write_str("rr"),
            Kind::RandWrite => f.write_str("rw"),
            Kind::SeqRead => f.write_str("sr"),
            Kind::SeqWrite => f.write_str("sw"),
            Kind::Mix { read_percent } => write!(f, "mix{read_percent}"),
        }
    }
}

/// The sectors (512 bytes each) a workload may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaRange {
    /// First sector.
    pub start: u64,
    /// Number of sectors; 0 = up to the end of the device.
    pub count: u64,
}

/// One workload: what to issue, how deep, how many and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Short name (`[A-Za-z0-9_.-]`, at most [`MAX_NAME`] bytes), used as the report's row label.
    pub name: String,
    /// Access pattern.
    pub kind: Kind,
    /// Bytes per I/O (a multiple of 512).
    pub block_bytes: u32,
    /// Requests kept in flight.
    pub queue_depth: u16,
    /// I/Os to issue (random kinds issue at most one per block slot of the range).
    pub max_ios: u64,
    /// Stop submitting after this many milliseconds (0 = no budget).
    pub max_millis: u32,
    /// Seed of the random permutation and of the read/write choice.
    pub seed: u64,
    /// Where on the device.
    pub lba_range: LbaRange,
    /// Byte offset of every request buffer from a page boundary (0..4096): non-zero exercises
    /// devices with buffers that are not page-aligned (data still physically contiguous).
    pub buffer_offset: u16,
}

/// Why a workload token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No `:` between the name and the keys.
    #[error("expected NAME:key=value,... in `{0}`")]
    Shape(String),
    /// The name is empty, too long or has characters other than `[A-Za-z0-9_.-]`.
    #[error("invalid workload name `{0}`")]
    Name(String),
    /// An item without `=`.
    #[error("expected key=value, got `{0}`")]
    Item(String),
    /// A key this format does not have.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// A key given twice.
    #[error("key `{0}` given twice")]
    Duplicate(String),
    /// A required key is missing.
    #[error("missing key `{0}`")]
    Missing(&'static str),
    /// A value that does not parse or is out of range.
    #[error("invalid value `{value}` for `{key}`: {why}")]
    Value {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn bad(key: &str, value: &str, why: &'static str) -> ParseError {
    ParseError::Value {
        key: key.to_string(),
        value: value.to_string(),
        why,
    }
}

fn parse_u64(key: &str, value: &str) -> Result<u64, ParseError> {
    let digits_ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok {
        return Err(bad(key, value, "not a decimal number"));
    }
    value
        .parse::<u64>()
        .map_err(|_| bad(key, value, "number too large"))
}

/// A byte count with an optional `k`/`m` (binary) suffix.
fn parse_bytes(key: &str, value: &str) -> Result<u64, ParseError> {
    let (digits, mult) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1u64 << 20),
        _ => (value, 1),
    };
    parse_u64(key, digits)?
        .checked_mul(mult)
        .ok_or_else(|| bad(key, value, "number too large"))
}

fn parse_kind(value: &str) -> Result<Kind, ParseError> {
    Ok(match value {
        "rr" => Kind::RandRead,
        "rw" => Kind::RandWrite,
        "sr" => Kind::SeqRead,
        "sw" => Kind::SeqWrite,
        _ => {
            let pct = value
                .strip_prefix("mix")
                .ok_or_else(|| bad("k", value, "expected rr, rw, sr, sw or mixP"))?;
            let p = parse_u64("k", pct)?;
            if p > 100 {
                return Err(bad("k", value, "read percent above 100"));
            }
            Kind::Mix {
                read_percent: p as u8,
            }
        }
    })
}

fn parse_range(value: &str) -> Result<LbaRange, ParseError> {
    let (start, count) = value
        .split_once('+')
        .ok_or_else(|| bad("lba", value, "expected START+COUNT"))?;
    let range = LbaRange {
        start: parse_u64("lba", start)?,
        count: parse_u64("lba", count)?,
    };
    if range.start.checked_add(range.count).is_none() {
        return Err(bad("lba", value, "range overflows"));
    }
    Ok(range)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl WorkloadSpec {
    /// Parse one token (see the module docs). Never panics.
    pub fn parse(token: &str) -> Result<Self, ParseError> {
        let (name, items) = token
            .split_once(':')
            .ok_or_else(|| ParseError::Shape(token.to_string()))?;
        if !valid_name(name) {
            return Err(ParseError::Name(name.to_string()));
        }
        let mut seen: Vec<&str> = Vec::new();
        let (mut kind, mut bs) = (None, None);
        let mut spec = WorkloadSpec {
            name: name.to_string(),
            kind: Kind::RandRead,
            block_bytes: 0,
            queue_depth: 1,
            max_ios: 1000,
            max_millis: 0,
            seed: 1,
            lba_range: LbaRange::default(),
            buffer_offset: 0,
        };
        for item in items.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ParseError::Item(item.to_string()))?;
            if seen.contains(&key) {
                return Err(ParseError::Duplicate(key.to_string()));
            }
            match key {
                "k" => kind = Some(parse_kind(value)?),
                "bs" => {
                    let b = parse_bytes(key, value)?;
                    if b == 0 || !b.is_multiple_of(512) || b > u64::from(MAX_BLOCK_BYTES) {
                        return Err(bad(
                            key,
                            value,
                            "must be a non-zero multiple of 512 up to 1 MiB",
                        ));
                    }
                    bs = Some(b as u32);
                }
                "qd" => {
                    let q = parse_u64(key, value)?;
                    if q == 0 || q > u64::from(MAX_QUEUE_DEPTH) {
                        return Err(bad(key, value, "must be 1..=256"));
                    }
                    spec.queue_depth = q as u16;
                }
                "n" => {
                    let n = parse_u64(key, value)?;
                    if n == 0 || n > MAX_IOS {
                        return Err(bad(key, value, "must be 1..=1000000"));
                    }
                    spec.max_ios = n;
                }
                "ms" => {
                    let ms = parse_u64(key, value)?;
                    if ms > u64::from(MAX_MILLIS) {
                        return Err(bad(key, value, "must be at most 600000"));
                    }
                    spec.max_millis = ms as u32;
                }
                "seed" => spec.seed = parse_u64(key, value)?,
                "lba" => spec.lba_range = parse_range(value)?,
                "off" => {
                    let off = parse_u64(key, value)?;
                    if off >= 4096 {
                        return Err(bad(key, value, "must be below 4096"));
                    }
                    spec.buffer_offset = off as u16;
                }
                _ => return Err(ParseError::UnknownKey(key.to_string())),
            }
            seen.push(key);
        }
        spec.kind = kind.ok_or(ParseError::Missing("k"))?;
        spec.block_bytes = bs.ok_or(ParseError::Missing("bs"))?;
        Ok(spec)
    }

    /// A spec with the given shape and no time budget, whole device, seed 1.
    pub fn new(name: &str, kind: Kind, block_bytes: u32, queue_depth: u16, max_ios: u64) -> Self {
        Self {
            name: name.to_string(),
            kind,
            block_bytes,
            queue_depth,
            max_ios,
            max_millis: 0,
            seed: 1,
            lba_range: LbaRange::default(),
            buffer_offset: 0,
        }
    }
}

impl fmt::Display for WorkloadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:k={},bs={},qd={},n={},ms={},seed={},lba={}+{}",
            self.name,
            self.kind,
            self.block_bytes,
            self.queue_depth,
            self.max_ios,
            self.max_millis,
            self.seed,
            self.lba_range.start,
            self.lba_range.count
        )?;
        if self.buffer_offset != 0 {
            write!(f, ",off={}", self.buffer_offset)?;
        }
        Ok(())
    }
}

impl core::str::FromStr for WorkloadSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Sectors (512 bytes) the default workloads touch: the first 64 MiB of a device.
pub const DEFAULT_SPAN_SECTORS: u64 = (64 << 20) / 512;

/// The default workload set: 4 KiB random read at QD1 and QD32, 4 KiB random write at QD32, 64 KiB
/// sequential read at QD8, each over the first 64 MiB and with a 3 s budget (an emulated disk that
/// needs ~50 ms per I/O then finishes its four workloads in about 12 s).
pub fn default_workloads() -> Vec<WorkloadSpec> {
    let span = LbaRange {
        start: 0,
        count: DEFAULT_SPAN_SECTORS,
    };
    let spec = |name: &str, kind, bs, qd, n, seed| WorkloadSpec {
        max_millis: 3000,
        seed,
        lba_range: span,
        ..WorkloadSpec::new(name, kind, bs, qd, n)
    };
    alloc::vec![
        spec("rr4k-qd1", Kind::RandRead, 4096, 1, 5000, 1),
        spec("rr4k-qd32", Kind::RandRead, 4096, 32, 16000, 2),
        spec("rw4k-qd32", Kind::RandWrite, 4096, 32, 16000, 3),
        spec("sr64k-qd8", Kind::SeqRead, 65536, 8, 4000, 4),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_example() {
        let s = WorkloadSpec::parse("rr4k-qd32:k=rr,bs=4096,qd=32,n=2000,ms=3000,seed=7").unwrap();
        assert_eq!(s.name, "rr4k-qd32");
        assert_eq!(s.kind, Kind::RandRead);
        assert_eq!(
            (
                s.block_bytes,
                s.queue_depth,
                s.max_ios,
                s.max_millis,
                s.seed
            ),
            (4096, 32, 2000, 3000, 7)
        );
        assert_eq!(s.lba_range, LbaRange::default());
    }

    #[test]
    fn suffixes_mix_and_ranges() {
        let s = WorkloadSpec::parse("m:k=mix70,bs=64k,lba=2048+8192").unwrap();
        assert_eq!(s.kind, Kind::Mix { read_percent: 70 });
        assert_eq!(s.block_bytes, 65536);
        assert_eq!(
            s.lba_range,
            LbaRange {
                start: 2048,
                count: 8192
            }
        );
        assert!(s.kind.writes() && s.kind.is_random());
        assert!(!Kind::SeqRead.writes() && !Kind::SeqRead.is_random());
    }

    #[test]
    fn refuses_bad_tokens() {
        type Check = fn(&ParseError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("noColon", |e| matches!(e, ParseError::Shape(_))),
            (":k=rr,bs=512", |e| matches!(e, ParseError::Name(_))),
            ("a b:k=rr,bs=512", |e| matches!(e, ParseError::Name(_))),
            ("x:k=rr,bs", |e| matches!(e, ParseError::Item(_))),
            ("x:k=rr,bs=512,zz=1", |e| {
                matches!(e, ParseError::UnknownKey(_))
            }),
            ("x:k=rr,k=rw,bs=512", |e| {
                matches!(e, ParseError::Duplicate(_))
            }),
            ("x:bs=512", |e| matches!(e, ParseError::Missing("k"))),
            ("x:k=rr", |e| matches!(e, ParseError::Missing("bs"))),
            ("x:k=rr,bs=1000", |e| matches!(e, ParseError::Value { .. })),
            ("x:k=rr,bs=2m", |e| matches!(e, ParseError::Value { .. })),
            ("x:k=rr,bs=512,qd=0", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=rr,bs=512,qd=257", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=mix101,bs=512", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=rr,bs=512,n=-1", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=rr,bs=512,lba=5", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=rr,bs=512,lba=18446744073709551615+1", |e| {
                matches!(e, ParseError::Value { .. })
            }),
            ("x:k=rr,bs=99999999999999999999k", |e| {
                matches!(e, ParseError::Value { .. })
            }),
        ];
        for (token, check) in cases {
            let e = WorkloadSpec::parse(token).unwrap_err();
            assert!(check(&e), "{token}: {e:?}");
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let d = default_workloads();
        assert_eq!(d.len(), 4);
        for s in d {
            let text = format!("{s}");
            assert!(!text.contains(' '));
            assert_eq!(WorkloadSpec::parse(&text).unwrap(), s);
        }
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::RandRead),
            Just(Kind::RandWrite),
            Just(Kind::SeqRead),
            Just(Kind::SeqWrite),
            (0u8..=100).prop_map(|read_percent| Kind::Mix { read_percent }),
        ]
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,80}") {
            let _ = WorkloadSpec::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_near_valid_tokens(
            s in "[a-z0-9]{1,6}:(k=(rr|rw|sr|sw|mix[0-9]{1,4})|bs=[0-9]{1,8}[km]?|qd=[0-9]{1,4}|n=[0-9]{1,8}|ms=[0-9]{1,7}|seed=[0-9]{1,21}|lba=[0-9]{1,21}\\+[0-9]{1,21}|[a-z]{1,3}=[0-9]{0,3}|,){0,9}"
        ) {
            if let Ok(spec) = WorkloadSpec::parse(&s) {
                prop_assert_eq!(WorkloadSpec::parse(&format!("{spec}")).unwrap(), spec);
            }
        }

        #[test]
        fn format_parse_round_trip(
            name in "[A-Za-z0-9_.-]{1,32}",
            kind in arb_kind(),
            blocks in 1u32..=2048,
            qd in 1u16..=256,
            n in 1u64..=MAX_IOS,
            ms in 0u32..=MAX_MILLIS,
            seed in any::<u64>(),
            start in 0u64..1 << 40,
            count in 0u64..1 << 40,
        ) {
            let spec = WorkloadSpec {
                name, kind, block_bytes: blocks * 512, queue_depth: qd, max_ios: n, max_millis: ms, seed,
                lba_range: LbaRange { start, count },
                buffer_offset: 0,
            };
            let text = format!("{spec}");
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(WorkloadSpec::parse(&text).unwrap(), spec);
        }
    }
}
