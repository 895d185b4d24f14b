//! The one-line result the guest prints per workload and the host parses:
//!
//! ```text
//! bench mark=0 device=ramdisk workload=rr4k-qd1 gen=0 spec=rr4k-qd1:k=rr,... ios=5000 reads=5000
//!   writes=0 bytes=20480000 cycles=... p50=... p99=... max=... errors=0 signals=0 irqs=0 achieved_qd=1
//!   checksum=0x...
//! ```
//! (one line; wrapped here). `mark` is the start mark of the measured window (the end mark is
//! `mark + 1`), `gen` the generation the workload's writes stored, latencies are TSC cycles,
//! `achieved_qd` the most requests in flight at once. A failed workload ends with `failed=<reason>`
//! instead of numbers; the reason runs to the end of the line. Unknown keys are ignored so the line can
//! grow; `achieved_qd`, added later, reads as 0 when absent. Over an image, a done line also carries
//! `digest=0x...` (the read digest, right after `spec`); without it the digest is 0. A workload split
//! over VPs carries `vp_ios=N0/N1/...` (each VP's I/Os) right after `spec`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use crate::engine::WorkloadResult;

/// The prefix of every result line.
pub const PREFIX: &str = "bench ";

/// How a workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchOutcome {
    /// It ran; the numbers.
    Done(WorkloadResult),
    /// It failed; why.
    Failed(String),
}

/// One parsed result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchLine {
    /// Start mark of the window (end mark = `mark + 1`).
    pub mark: u32,
    /// The guest device name.
    pub device: String,
    /// The workload name.
    pub workload: String,
    /// Generation written by the workload (0: it wrote nothing).
    pub generation: u8,
    /// The full spec token that ran.
    pub spec: String,
    /// Split over VPs ([`crate::split`]): the I/Os each VP completed, in VP order (the numbers are
    /// their sums, `checksum` their [`combine_checksums`](crate::split::combine_checksums)). Empty: one
    /// VP ran the whole spec.
    pub vp_ios: Vec<u64>,
    /// The outcome.
    pub outcome: BenchOutcome,
}

/// Why a line is not a valid result line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// It does not start with `bench `.
    #[error("not a bench line")]
    NotBench,
    /// A field without `=`.
    #[error("expected key=value, got `{0}`")]
    Item(String),
    /// A required key is missing.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A number that does not parse.
    #[error("invalid number `{value}` for `{key}`")]
    Number {
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
    },
}

impl fmt::Display for BenchLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}mark={} device={} workload={} gen={} spec={}",
            self.mark, self.device, self.workload, self.generation, self.spec
        )?;
        if !self.vp_ios.is_empty() {
            f.write_str(" vp_ios=")?;
            for (i, n) in self.vp_ios.iter().enumerate() {
                write!(f, "{}{n}", if i == 0 { "" } else { "/" })?;
            }
        }
        if let BenchOutcome::Done(r) = &self.outcome {
            if r.read_digest != 0 {
                write!(f, " digest={:#018x}", r.read_digest)?;
            }
        }
        match &self.outcome {
            BenchOutcome::Done(r) => write!(
                f,
                " ios={} reads={} writes={} bytes={} cycles={} p50={} p99={} max={} errors={} \
                 signals={} irqs={} achieved_qd={} checksum={:#018x}",
                r.ios,
                r.reads,
                r.writes,
                r.bytes,
                r.cycles,
                r.p50,
                r.p99,
                r.max,
                r.errors,
                r.signals,
                r.interrupts,
                r.achieved_qd,
                r.checksum
            ),
            BenchOutcome::Failed(why) => {
                // Keep it one line whatever the reason says.
                f.write_str(" failed=")?;
                why.chars()
                    .try_for_each(|c| f.write_char(if c == '\n' || c == '\r' { ' ' } else { c }))
            }
        }
    }
}

/// The fields of a line, looked up by key.
struct Fields<'a> {
    items: alloc::vec::Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn text(&self, key: &'static str) -> Result<&'a str, LineError> {
        self.items
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or(LineError::Missing(key))
    }

    /// A number that older lines may lack (0 then).
    fn optional(&self, key: &'static str) -> Result<u64, LineError> {
        match self.text(key) {
            Err(LineError::Missing(_)) => Ok(0),
            _ => self.number(key),
        }
    }

    fn number(&self, key: &'static str) -> Result<u64, LineError> {
        let v = self.text(key)?;
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.map_err(|_| LineError::Number {
            key,
            value: v.to_string(),
        })
    }
}

impl BenchLine {
    /// Parse one line (surrounding whitespace allowed). Never panics.
    pub fn parse(line: &str) -> Result<Self, LineError> {
        let rest = line
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(LineError::NotBench)?;
        let (head, failed) = match rest.find(" failed=") {
            Some(at) => (&rest[..at], Some(&rest[at + " failed=".len()..])),
            None => (rest, None),
        };
        let mut items = alloc::vec::Vec::new();
        for item in head.split(' ').filter(|s| !s.is_empty()) {
            let kv = item
                .split_once('=')
                .ok_or_else(|| LineError::Item(item.to_string()))?;
            items.push(kv);
        }
        let f = Fields { items };
        let small = |key: &'static str, max: u64| {
            let v = f.number(key)?;
            if v > max {
                return Err(LineError::Number {
                    key,
                    value: v.to_string(),
                });
            }
            Ok(v)
        };
        let outcome = match failed {
            Some(why) => BenchOutcome::Failed(why.to_string()),
            None => BenchOutcome::Done(WorkloadResult {
                ios: f.number("ios")?,
                reads: f.number("reads")?,
                writes: f.number("writes")?,
                bytes: f.number("bytes")?,
                cycles: f.number("cycles")?,
                p50: f.number("p50")?,
                p99: f.number("p99")?,
                max: f.number("max")?,
                errors: f.number("errors")?,
                signals: f.number("signals")?,
                interrupts: f.number("irqs")?,
                achieved_qd: f.optional("achieved_qd")?,
                checksum: f.number("checksum")?,
                read_digest: match f.text("digest") {
                    Ok(_) => f.number("digest")?,
                    Err(_) => 0,
                },
            }),
        };
        let vp_ios = match f.text("vp_ios") {
            Err(_) => Vec::new(),
            Ok(list) => {
                let bad = || LineError::Number {
                    key: "vp_ios",
                    value: list.to_string(),
                };
                let counts = list
                    .split('/')
                    .map(|n| n.parse::<u64>().map_err(|_| bad()))
                    .collect::<Result<Vec<u64>, _>>()?;
                if counts.len() > crate::split::MAX_VPS {
                    return Err(bad());
                }
                counts
            }
        };
        Ok(Self {
            mark: small("mark", u64::from(u32::MAX))? as u32,
            device: f.text("device")?.to_string(),
            workload: f.text("workload")?.to_string(),
            generation: small("gen", u64::from(u8::MAX))? as u8,
            spec: f.text("spec")?.to_string(),
            vp_ios,
            outcome,
        })
    }

    /// The end mark of the window.
    pub fn end_mark(&self) -> u32 {
        self.mark.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    fn sample() -> BenchLine {
        BenchLine {
            mark: 4,
            device: "ramdisk".into(),
            workload: "rr4k-qd32".into(),
            generation: 0,
            spec: "rr4k-qd32:k=rr,bs=4096,qd=32,n=2000,ms=3000,seed=7,lba=0+0".into(),
            vp_ios: Vec::new(),
            outcome: BenchOutcome::Done(WorkloadResult {
                ios: 2000,
                reads: 2000,
                writes: 0,
                bytes: 2000 * 4096,
                cycles: 123_456_789,
                p50: 1000,
                p99: 5000,
                max: 9000,
                errors: 0,
                signals: 3,
                interrupts: 2,
                achieved_qd: 32,
                checksum: 0xdead_beef_0123_4567,
                read_digest: 0,
            }),
        }
    }

    #[test]
    fn done_lines_round_trip() {
        let l = sample();
        let text = format!("{l}");
        assert!(text.starts_with("bench mark=4 device=ramdisk workload=rr4k-qd32 "));
        assert!(text.contains(" checksum=0xdeadbeef01234567"));
        assert!(text.contains(" irqs=2 achieved_qd=32 "));
        assert_eq!(BenchLine::parse(&text).unwrap(), l);
        assert_eq!(BenchLine::parse(&format!("  {text}\n")).unwrap(), l);
        assert_eq!(l.end_mark(), 5);
    }

    #[test]
    fn read_digests_round_trip_and_lines_without_one_read_as_zero() {
        let mut l = sample();
        let BenchOutcome::Done(r) = &mut l.outcome else {
            unreachable!()
        };
        r.read_digest = 0x0123_4567_89ab_cdef;
        let text = format!("{l}");
        assert!(text.contains(" digest=0x0123456789abcdef "), "{text}");
        assert_eq!(BenchLine::parse(&text).unwrap(), l);
        assert!(!format!("{}", sample()).contains("digest="));
        assert!(matches!(
            BenchLine::parse(&text.replace("digest=0x0123", "digest=zz")),
            Err(LineError::Number { key: "digest", .. })
        ));
    }

    #[test]
    fn per_vp_counts_round_trip_and_bad_ones_are_errors() {
        let mut l = sample();
        l.vp_ios = alloc::vec![1000, 999, 1];
        let text = format!("{l}");
        assert!(text.contains(",lba=0+0 vp_ios=1000/999/1 ios="), "{text}");
        assert_eq!(BenchLine::parse(&text).unwrap(), l);
        assert!(!format!("{}", sample()).contains("vp_ios"));
        for bad in ["vp_ios=1//2", "vp_ios=x", "vp_ios="] {
            assert!(matches!(
                BenchLine::parse(&text.replace("vp_ios=1000/999/1", bad)),
                Err(LineError::Number { key: "vp_ios", .. })
            ));
        }
        let many = (0..65).map(|_| "1").collect::<Vec<_>>().join("/");
        assert!(BenchLine::parse(&text.replace("1000/999/1", &many)).is_err());
    }

    #[test]
    fn failed_lines_keep_their_reason_on_one_line() {
        let mut l = sample();
        l.outcome = BenchOutcome::Failed("I/O 3 (Read at sector 8): data\nmismatch = bad".into());
        let text = format!("{l}");
        assert!(!text.contains('\n'));
        let back = BenchLine::parse(&text).unwrap();
        assert_eq!(
            back.outcome,
            BenchOutcome::Failed("I/O 3 (Read at sector 8): data mismatch = bad".into())
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(
            BenchLine::parse("scenario bench: ok"),
            Err(LineError::NotBench)
        );
        let text = format!("{}", sample());
        assert_eq!(
            BenchLine::parse(&text.replace(" ios=2000", "")),
            Err(LineError::Missing("ios"))
        );
        assert!(matches!(
            BenchLine::parse(&text.replace("p50=1000", "p50=x")),
            Err(LineError::Number { key: "p50", .. })
        ));
        assert!(matches!(
            BenchLine::parse(&text.replace("gen=0", "gen=300")),
            Err(LineError::Number { key: "gen", .. })
        ));
        assert!(matches!(
            BenchLine::parse(&text.replace(" ios=", " junk ios=")),
            Err(LineError::Item(_))
        ));
        // Unknown keys are tolerated.
        assert!(BenchLine::parse(&text.replace(" ios=", " new=1 ios=")).is_ok());
        assert!(matches!(
            BenchLine::parse(&text.replace("achieved_qd=32", "achieved_qd=lots")),
            Err(LineError::Number {
                key: "achieved_qd",
                ..
            })
        ));
    }

    #[test]
    fn lines_from_before_achieved_qd_still_parse() {
        let l = sample();
        let old = format!("{l}").replace(" achieved_qd=32", "");
        let BenchOutcome::Done(r) = BenchLine::parse(&old).unwrap().outcome else {
            panic!("a done line")
        };
        assert_eq!(r.achieved_qd, 0);
        assert_eq!(r.interrupts, 2);
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "(bench )?\\PC{0,120}") {
            let _ = BenchLine::parse(&s);
        }
    }
}
