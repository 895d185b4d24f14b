//! The testbed's report: one [`Row`] per device × workload, built from the guest's result line and the
//! host's counters over the line's mark window ([`Measurement::new`]), rendered as an aligned text
//! table ([`table`]), JSON ([`json`]) and an SVG chart ([`svg::chart`]).
//!
//! Per DESIGN.md, a count "per I/O" is its delta over the measured window divided by the I/Os completed
//! in it. Each row also carries the queue depth the guest actually sustained (`achieved_qd`, column
//! `QD`): a device whose driver cannot keep the spec's depth in flight shows it. Host CPU time per I/O
//! likewise, from the vCPU's and the device threads' CPU clocks over the window ([`crate::cpu`]). A
//! row whose device failed (wrong data, I/O errors, no window) carries only its reason: wrong data
//! never produces numbers.

pub mod document;
pub mod svg;

use std::fmt::Write as _;

use hypervisor_lite::StatsSnapshot;
use serde_json::{json, Value};
use workload::WorkloadResult;

use crate::cpu::CpuWindow;

/// The numbers of one device × workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    /// I/Os completed.
    pub ios: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// Seconds from the first submit to the last completion (guest TSC).
    pub seconds: f64,
    /// Median latency in µs.
    pub lat_p50_us: f64,
    /// 99th-percentile latency in µs.
    pub lat_p99_us: f64,
    /// Largest latency in µs.
    pub lat_max_us: f64,
    /// Returns of KVM_RUN to user space in the window.
    pub user_exits: u64,
    /// KVM `exits` (every VM exit) in the window.
    pub vm_exits: u64,
    /// KVM `irq_injections` in the window.
    pub interrupts: u64,
    /// Guest→host notifications the guest device reported.
    pub guest_signals: u64,
    /// Interrupts the guest kernel counted taking.
    pub guest_interrupts: u64,
    /// Most requests the guest had in flight at once (the queue depth the device sustained).
    pub achieved_qd: u64,
    /// Host CPU µs per I/O: the vCPU thread's and the device threads' together.
    pub host_cpu_us_per_io: f64,
    /// CPU µs per I/O of the vCPU thread: guest code, exits, and device models run on it (IDE).
    pub vcpu_cpu_us_per_io: f64,
    /// CPU µs per I/O of the partition's device threads (VMBus, storvsp, virtio-blk worker).
    pub device_cpu_us_per_io: f64,
}

impl Measurement {
    /// Combine the guest's result with the host's window counters and CPU time; cycles are converted
    /// at `tsc_hz`.
    pub fn new(
        result: &WorkloadResult,
        window: &StatsSnapshot,
        cpu: &CpuWindow,
        tsc_hz: u64,
    ) -> Self {
        let us = |cycles: u64| cycles as f64 * 1e6 / tsc_hz.max(1) as f64;
        let cpu = cpu.us_per_io(result.ios);
        Self {
            ios: result.ios,
            bytes: result.bytes,
            seconds: result.cycles as f64 / tsc_hz.max(1) as f64,
            lat_p50_us: us(result.p50),
            lat_p99_us: us(result.p99),
            lat_max_us: us(result.max),
            user_exits: window.user_exits(),
            vm_exits: window.kvm_exits(),
            interrupts: window.vcpu_sum("irq_injections"),
            guest_signals: result.signals,
            guest_interrupts: result.interrupts,
            achieved_qd: result.achieved_qd,
            host_cpu_us_per_io: cpu.host,
            vcpu_cpu_us_per_io: cpu.vcpu,
            device_cpu_us_per_io: cpu.device,
        }
    }

    /// Host CPU µs per I/O in [`CPU_SPLIT`] order: total, vCPU thread, device threads.
    pub fn cpu_per_io(&self) -> [f64; 3] {
        [
            self.host_cpu_us_per_io,
            self.vcpu_cpu_us_per_io,
            self.device_cpu_us_per_io,
        ]
    }

    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ios as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Gigabits (10^9 bits) of payload per second.
    pub fn gbit_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / 1e9 / self.seconds
        } else {
            0.0
        }
    }

    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / 1e6 / self.seconds
        } else {
            0.0
        }
    }

    /// `count` divided by the I/Os (0 when none completed).
    pub fn per_io(&self, count: u64) -> f64 {
        if self.ios == 0 {
            0.0
        } else {
            count as f64 / self.ios as f64
        }
    }

    /// The transition counts per I/O, in [`TRANSITIONS`] order.
    pub fn transitions_per_io(&self) -> [f64; 4] {
        [
            self.per_io(self.user_exits),
            self.per_io(self.vm_exits),
            self.per_io(self.interrupts),
            self.per_io(self.guest_signals),
        ]
    }
}

/// Names of [`Measurement::transitions_per_io`]'s entries.
pub const TRANSITIONS: [&str; 4] = ["user exits", "VM exits", "interrupts", "guest signals"];

/// Names of [`Measurement::cpu_per_io`]'s entries.
pub const CPU_SPLIT: [&str; 3] = ["host CPU", "vCPU thread", "device threads"];

/// What a row measured: block I/O (counts per I/O) or network traffic (counts per packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A disk workload: `ios` are I/Os.
    Block,
    /// A network workload ([`crate::net`]): `ios` are packets (frames both ways through the
    /// NIC), `bytes` the payload the workload moved, latencies those of request/response only
    /// (NaN, reported as null, where the workload has none).
    Net,
}

impl Kind {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Block => "block",
            Kind::Net => "net",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Block or network.
    pub kind: Kind,
    /// The device (kit) name.
    pub device: String,
    /// The in-guest baseline rather than a device.
    pub baseline: bool,
    /// The workload name.
    pub workload: String,
    /// The full spec token.
    pub spec: String,
    /// vCPUs of the guest that ran it.
    pub vcpus: u32,
    /// Device queues (channels) in use: one per vCPU where the workload was split over the vCPUs
    /// (`bench`'s module docs), else 1.
    pub channels: u32,
    /// Numbers, or why there are none.
    pub outcome: Result<Measurement, String>,
}

impl Row {
    /// The device label (baselines are starred).
    pub fn label(&self) -> String {
        if self.baseline {
            format!("{}*", self.device)
        } else {
            self.device.clone()
        }
    }
}

fn fixed(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The rows as aligned text tables — block rows, then network rows under their own header —
/// failed rows with their reason, and footnotes.
pub fn table(rows: &[Row]) -> String {
    let block: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::Block).collect();
    let net: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::Net).collect();
    let mut out = String::new();
    if !block.is_empty() || net.is_empty() {
        out.push_str(&grid(&BLOCK_HEADER, &block, block_cells));
        if block.iter().any(|r| r.baseline) {
            out.push_str(
                "* in-guest baseline: the workload served from guest RAM inside the guest, no device \
                 and no exit — the floor every device is compared with\n",
            );
        }
        out.push_str(
            "cpu µs/IO: host CPU time per I/O over the window = vcpu (the vCPU threads: guest code, \
             exits and device models run on them, as IDE is) + dev (the device threads)\n",
        );
        if block.iter().any(|r| r.vcpus > 1) {
            out.push_str(
                "vCPUs: the guest's; ch: device queues in use — one per vCPU where every vCPU runs the \
                 workload on its own channel and share of the range at once (I/Os summed, latency the \
                 worst vCPU's, QD summed), 1 where the BSP runs it alone\n",
            );
        }
    }
    if !net.is_empty() {
        if !block.is_empty() {
            out.push('\n');
        }
        out.push_str(&grid(&NET_HEADER, &net, net_cells));
        if net.iter().any(|r| r.baseline) {
            out.push_str(
                "* in-guest baseline: the same traffic over a loopback inside the guest, no NIC and \
                 no exit — the floor every NIC is compared with\n",
            );
        }
        out.push_str(
            "pkt: a frame through the NIC, either way; Gbit/s: the workload's payload; cpu µs/pkt = \
             vcpu + dev as for I/Os\n",
        );
    }
    out
}

const BLOCK_HEADER: [&str; 23] = [
    "device",
    "workload",
    "vCPUs",
    "ch",
    "I/Os",
    "QD",
    "MiB",
    "s",
    "IOPS",
    "MB/s",
    "p50 µs",
    "p99 µs",
    "user exits",
    "/IO",
    "VM exits",
    "/IO",
    "irqs",
    "/IO",
    "signals",
    "/IO",
    "cpu µs/IO",
    "vcpu",
    "dev",
];

const NET_HEADER: [&str; 19] = [
    "device",
    "workload",
    "pkts",
    "s",
    "pps",
    "Gbit/s",
    "p50 µs",
    "p99 µs",
    "user exits",
    "/pkt",
    "VM exits",
    "/pkt",
    "irqs",
    "/pkt",
    "signals",
    "/pkt",
    "cpu µs/pkt",
    "vcpu",
    "dev",
];

fn block_cells(row: &Row, m: &Measurement) -> Vec<String> {
    vec![
        row.vcpus.to_string(),
        row.channels.to_string(),
        m.ios.to_string(),
        m.achieved_qd.to_string(),
        format!("{:.1}", m.bytes as f64 / (1 << 20) as f64),
        format!("{:.3}", m.seconds),
        format!("{:.0}", m.iops()),
        format!("{:.1}", m.mb_per_s()),
        fixed(m.lat_p50_us),
        fixed(m.lat_p99_us),
    ]
}

fn net_cells(_row: &Row, m: &Measurement) -> Vec<String> {
    vec![
        m.ios.to_string(),
        format!("{:.3}", m.seconds),
        format!("{:.0}", m.iops()),
        format!("{:.3}", m.gbit_per_s()),
        fixed(m.lat_p50_us),
        fixed(m.lat_p99_us),
    ]
}

/// One aligned table: `header`, then per row its label, workload, `lead` cells, the four
/// transition counts with their per-unit ratio, and the CPU split; failed rows last.
fn grid(header: &[&str], rows: &[&Row], lead: fn(&Row, &Measurement) -> Vec<String>) -> String {
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut failures = Vec::new();
    for row in rows {
        let mut line = vec![row.label(), row.workload.clone()];
        match &row.outcome {
            Ok(m) => {
                line.extend(lead(row, m));
                for count in [m.user_exits, m.vm_exits, m.interrupts, m.guest_signals] {
                    line.push(count.to_string());
                    line.push(fixed(m.per_io(count)));
                }
                line.extend(m.cpu_per_io().map(fixed));
                cells.push(line);
            }
            Err(why) => failures.push((line, why.clone())),
        }
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .chain(failures.iter().map(|(l, _)| l))
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let emit = |out: &mut String, line: &[String]| {
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c < 2 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}", " ".repeat(pad));
            }
            out.push_str(if c + 1 < line.len() { "  " } else { "\n" });
        }
    };
    emit(&mut out, &cells[0]);
    let rule: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
    out.push_str(&"-".repeat(rule));
    out.push('\n');
    for line in &cells[1..] {
        emit(&mut out, line);
    }
    for (line, why) in failures {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  FAILED: {why}",
            line[0],
            line[1],
            w0 = widths[0],
            w1 = widths[1]
        );
    }
    out
}

/// The rows as a JSON array of objects, each with its `kind` (`block`: counts per I/O; `net`:
/// counts per packet, see [`Kind::Net`]); failed rows: `status` "failed", `error`, numbers null.
pub fn json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                let mut o = serde_json::Map::new();
                o.insert("kind".into(), row.kind.as_str().into());
                o.insert("device".into(), row.device.clone().into());
                o.insert("baseline".into(), row.baseline.into());
                o.insert("workload".into(), row.workload.clone().into());
                o.insert("spec".into(), row.spec.clone().into());
                o.insert("vcpus".into(), row.vcpus.into());
                o.insert("channels".into(), row.channels.into());
                match &row.outcome {
                    Ok(m) => {
                        o.insert("status".into(), "ok".into());
                        o.insert("error".into(), Value::Null);
                        for (key, value) in numbers(row.kind, m) {
                            o.insert(key.into(), value);
                        }
                    }
                    Err(why) => {
                        o.insert("status".into(), "failed".into());
                        o.insert("error".into(), why.clone().into());
                        // Only the field names of a measurement of nothing are used.
                        for (key, _) in numbers(row.kind, &Measurement::default()) {
                            o.insert(key.into(), Value::Null);
                        }
                    }
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// A finite number, or null (a latency the workload does not have).
fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The numeric fields of a row of `kind`, in document order.
fn numbers(kind: Kind, m: &Measurement) -> Vec<(&'static str, Value)> {
    let transitions = |unit: &'static [&'static str; 7]| {
        vec![
            (unit[0], num(m.per_io(m.user_exits))),
            (unit[1], num(m.per_io(m.vm_exits))),
            (unit[2], num(m.per_io(m.interrupts))),
            (unit[3], num(m.per_io(m.guest_signals))),
            (unit[4], num(m.host_cpu_us_per_io)),
            (unit[5], num(m.vcpu_cpu_us_per_io)),
            (unit[6], num(m.device_cpu_us_per_io)),
        ]
    };
    let counts = [
        ("user_exits", json!(m.user_exits)),
        ("vm_exits", json!(m.vm_exits)),
        ("interrupts", json!(m.interrupts)),
        ("guest_signals", json!(m.guest_signals)),
        ("guest_interrupts", json!(m.guest_interrupts)),
    ];
    let mut out = match kind {
        Kind::Block => vec![
            ("ios", json!(m.ios)),
            ("bytes", json!(m.bytes)),
            ("seconds", num(m.seconds)),
            ("iops", num(m.iops())),
            ("mb_per_s", num(m.mb_per_s())),
            ("lat_p50_us", num(m.lat_p50_us)),
            ("lat_p99_us", num(m.lat_p99_us)),
            ("lat_max_us", num(m.lat_max_us)),
            ("achieved_qd", json!(m.achieved_qd)),
        ],
        Kind::Net => vec![
            ("packets", json!(m.ios)),
            ("bytes", json!(m.bytes)),
            ("seconds", num(m.seconds)),
            ("pps", num(m.iops())),
            ("gbit_per_s", num(m.gbit_per_s())),
            ("lat_p50_us", num(m.lat_p50_us)),
            ("lat_p99_us", num(m.lat_p99_us)),
        ],
    };
    out.extend(counts);
    out.extend(match kind {
        Kind::Block => transitions(&[
            "user_exits_per_io",
            "vm_exits_per_io",
            "interrupts_per_io",
            "guest_signals_per_io",
            "host_cpu_us_per_io",
            "vcpu_cpu_us_per_io",
            "device_cpu_us_per_io",
        ]),
        Kind::Net => transitions(&[
            "user_exits_per_packet",
            "vm_exits_per_packet",
            "interrupts_per_packet",
            "guest_signals_per_packet",
            "host_cpu_us_per_packet",
            "vcpu_cpu_us_per_packet",
            "device_cpu_us_per_packet",
        ]),
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn measurement(ios: u64, user: u64, vm: u64, irq: u64, sig: u64) -> Measurement {
        Measurement {
            ios,
            bytes: ios * 4096,
            seconds: 0.5,
            lat_p50_us: 12.5,
            lat_p99_us: 250.0,
            lat_max_us: 900.0,
            user_exits: user,
            vm_exits: vm,
            interrupts: irq,
            guest_signals: sig,
            guest_interrupts: irq,
            achieved_qd: 7,
            host_cpu_us_per_io: 5.5,
            vcpu_cpu_us_per_io: 4.0,
            device_cpu_us_per_io: 1.5,
        }
    }

    pub(crate) fn rows() -> Vec<Row> {
        vec![
            Row {
                kind: Kind::Block,
                device: "ramdisk".into(),
                baseline: true,
                workload: "rr4k-qd1".into(),
                spec: "rr4k-qd1:k=rr,bs=4096".into(),
                vcpus: 1,
                channels: 1,
                outcome: Ok(Measurement {
                    host_cpu_us_per_io: 0.25,
                    vcpu_cpu_us_per_io: 0.25,
                    device_cpu_us_per_io: 0.0,
                    ..measurement(1000, 0, 3, 0, 0)
                }),
            },
            Row {
                kind: Kind::Block,
                device: "vmbus".into(),
                baseline: false,
                workload: "rr4k-qd1".into(),
                spec: "rr4k-qd1:k=rr,bs=4096".into(),
                vcpus: 1,
                channels: 1,
                outcome: Ok(measurement(1000, 10, 2500, 1000, 1000)),
            },
            Row {
                kind: Kind::Block,
                device: "ide".into(),
                baseline: false,
                workload: "rw4k-qd32".into(),
                spec: "rw4k-qd32:k=rw,bs=4096".into(),
                vcpus: 1,
                channels: 1,
                outcome: Err("data check: sector 8 does not hold generation 3".into()),
            },
        ]
    }

    #[test]
    fn measurement_converts_cycles_and_divides_per_io() {
        let r = WorkloadResult {
            ios: 200,
            bytes: 200 * 4096,
            cycles: 2_000_000_000,
            p50: 3000,
            p99: 30_000,
            signals: 50,
            interrupts: 7,
            achieved_qd: 31,
            ..Default::default()
        };
        let probe = StatsSnapshot {
            taken: std::time::Instant::now(),
            vcpus: vec![],
            vm: Default::default(),
        };
        let cpu = CpuWindow {
            vcpu: std::time::Duration::from_micros(900),
            device: std::time::Duration::from_micros(300),
        };
        let m = Measurement::new(&r, &probe, &cpu, 1_000_000_000);
        assert_eq!(m.seconds, 2.0);
        assert_eq!((m.lat_p50_us, m.lat_p99_us), (3.0, 30.0));
        assert_eq!(m.iops(), 100.0);
        assert!((m.mb_per_s() - 0.4096).abs() < 1e-12);
        assert_eq!(m.per_io(m.guest_signals), 0.25);
        assert_eq!(
            (m.user_exits, m.vm_exits, m.interrupts, m.guest_interrupts),
            (0, 0, 0, 7)
        );
        assert_eq!(m.achieved_qd, 31);
        assert_eq!(measurement(0, 5, 5, 5, 5).per_io(5), 0.0);
        // 1.2 ms of host CPU over 200 I/Os.
        assert_eq!(m.cpu_per_io(), [6.0, 4.5, 1.5]);
        let none = Measurement::new(&WorkloadResult::default(), &probe, &cpu, 1);
        assert_eq!(none.cpu_per_io(), [0.0; 3]);
    }

    #[test]
    fn table_aligns_columns_and_shows_failures_without_numbers() {
        let t = table(&rows());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("device"), "{t}");
        assert!(lines[1].chars().all(|c| c == '-'));
        // Data rows line up with the header: same width.
        assert_eq!(lines[2].chars().count(), lines[0].chars().count(), "{t}");
        assert_eq!(lines[3].chars().count(), lines[0].chars().count(), "{t}");
        assert!(
            lines[2].starts_with("ramdisk*") && lines[2].contains(" 2000 "),
            "{t}"
        );
        assert!(
            lines[3].contains("2.50") && lines[3].contains(" 2500 "),
            "{t}"
        );
        // Host CPU per I/O, then its vCPU and device split, last.
        fn last3(l: &str) -> Vec<&str> {
            l.split_whitespace().rev().take(3).collect()
        }
        assert!(lines[0].ends_with("cpu µs/IO   vcpu   dev"), "{t}");
        assert_eq!(last3(lines[2]), ["0", "0.250", "0.250"], "{t}");
        assert_eq!(last3(lines[3]), ["1.50", "4.00", "5.50"], "{t}");
        assert!(t.contains("= vcpu (the vCPU thread"), "{t}");
        let failed = lines.iter().find(|l| l.starts_with("ide")).unwrap();
        assert!(failed.contains("FAILED: data check"), "{t}");
        let (before, _) = failed.split_once("FAILED").unwrap();
        assert_eq!(
            before.split_whitespace().collect::<Vec<_>>(),
            ["ide", "rw4k-qd32"]
        );
        assert!(t.contains("* in-guest baseline"));
        // vCPUs and channels after the workload, the achieved depth after the I/Os.
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(&header[2..6], ["vCPUs", "ch", "I/Os", "QD"], "{t}");
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(&row[2..6], ["1", "1", "1000", "7"], "{t}");
        assert!(!t.contains("ch: device queues"), "one vCPU: no footnote");
        let mut split = rows();
        split[1].vcpus = 4;
        split[1].channels = 4;
        let t = table(&split);
        let row: Vec<&str> = t.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[..6],
            ["vmbus", "rr4k-qd1", "4", "4", "1000", "7"],
            "{t}"
        );
        assert!(t.contains("ch: device queues in use"), "{t}");
    }

    #[test]
    fn json_has_the_required_fields_and_nulls_for_failures() {
        let v = json(&rows());
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 3);
        for key in [
            "device",
            "workload",
            "vcpus",
            "channels",
            "ios",
            "achieved_qd",
            "iops",
            "lat_p50_us",
            "lat_p99_us",
            "user_exits_per_io",
            "vm_exits_per_io",
            "interrupts_per_io",
            "host_cpu_us_per_io",
            "vcpu_cpu_us_per_io",
            "device_cpu_us_per_io",
        ] {
            assert!(a.iter().all(|o| o.get(key).is_some()), "{key}");
        }
        assert_eq!(a[1]["host_cpu_us_per_io"], 5.5);
        assert_eq!(a[1]["vcpu_cpu_us_per_io"], 4.0);
        assert_eq!(a[1]["device_cpu_us_per_io"], 1.5);
        assert_eq!(a[0]["device_cpu_us_per_io"], 0.0);
        assert!(a[2]["host_cpu_us_per_io"].is_null());
        assert_eq!(a[1]["device"], "vmbus");
        assert_eq!(a[1]["ios"], 1000);
        assert_eq!(a[1]["vm_exits_per_io"], 2.5);
        assert_eq!(a[1]["interrupts_per_io"], 1.0);
        assert_eq!(a[1]["iops"], 2000.0);
        assert_eq!(a[1]["achieved_qd"], 7);
        assert!(a[2]["achieved_qd"].is_null());
        assert_eq!(a[0]["baseline"], true);
        assert_eq!(a[2]["status"], "failed");
        assert!(a[2]["ios"].is_null() && a[2]["iops"].is_null());
        assert!(a[2]["error"].as_str().unwrap().contains("generation 3"));
        // It is valid JSON text.
        let text = serde_json::to_string_pretty(&v).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    pub(crate) fn net_rows() -> Vec<Row> {
        let row = |device: &str, baseline, workload: &str, m| Row {
            kind: Kind::Net,
            device: device.into(),
            baseline,
            workload: workload.into(),
            spec: format!("{workload}:test"),
            vcpus: 1,
            channels: 1,
            outcome: m,
        };
        vec![
            row(
                "netvsc",
                false,
                "tcp-stream-tx",
                Ok(Measurement {
                    bytes: 8 << 20,
                    seconds: 0.25,
                    lat_p50_us: f64::NAN,
                    lat_p99_us: f64::NAN,
                    ..measurement(10_000, 0, 400, 200, 100)
                }),
            ),
            row(
                "e1000",
                false,
                "udp-rr",
                Ok(measurement(2_000, 6_000, 9_000, 2_000, 2_000)),
            ),
            row("virtio-net", false, "udp-rr", Err("no reply".into())),
        ]
    }

    #[test]
    fn net_rows_get_their_own_table_fields_and_nulls() {
        let mut rows = rows();
        rows.extend(net_rows());
        let t = table(&rows);
        let (block, net) = t.split_once("\n\n").expect("two tables");
        assert!(
            block.starts_with("device") && !block.contains("netvsc"),
            "{t}"
        );
        let lines: Vec<&str> = net.lines().collect();
        assert!(
            lines[0].starts_with("device") && lines[0].contains("pps"),
            "{t}"
        );
        assert!(
            lines[0].contains("Gbit/s") && lines[0].contains("cpu µs/pkt"),
            "{t}"
        );
        let stream: Vec<&str> = lines[2].split_whitespace().collect();
        // 10 000 packets in 0.25 s, 8 MiB of payload: 40 000 pps, 0.268 Gbit/s, no latency.
        assert_eq!(
            &stream[..8],
            [
                "netvsc",
                "tcp-stream-tx",
                "10000",
                "0.250",
                "40000",
                "0.268",
                "-",
                "-"
            ],
            "{t}"
        );
        assert!(net.contains("FAILED: no reply"), "{t}");

        let v = json(&rows);
        let a = v.as_array().unwrap();
        assert!(a[..3].iter().all(|o| o["kind"] == "block"));
        let n = &a[3];
        assert_eq!(n["kind"], "net");
        assert_eq!(n["packets"], 10_000);
        assert_eq!(n["pps"], 40_000.0);
        assert!((n["gbit_per_s"].as_f64().unwrap() - 0.268_435_456).abs() < 1e-9);
        assert!(n["lat_p50_us"].is_null() && n["lat_p99_us"].is_null());
        assert_eq!(n["vm_exits_per_packet"], 0.04);
        assert_eq!(n["interrupts_per_packet"], 0.02);
        assert_eq!(n["guest_signals_per_packet"], 0.01);
        assert_eq!(n["host_cpu_us_per_packet"], 5.5);
        assert!(n.get("ios").is_none() && n.get("iops").is_none());
        assert_eq!(a[4]["user_exits_per_packet"], 3.0);
        assert_eq!(a[4]["lat_p50_us"], 12.5);
        assert_eq!(a[5]["status"], "failed");
        assert!(a[5]["packets"].is_null() && a[5]["user_exits_per_packet"].is_null());
        assert!(a[5].get("ios").is_none());

        let svg = svg::chart(&rows);
        for title in [
            ">Mode transitions per I/O",
            ">Network: mode transitions per packet",
            ">Network: host CPU time per packet",
        ] {
            assert!(svg.contains(title), "{title}");
        }
        assert!(
            svg.contains("e1000 udp-rr user exits: 3.0<"),
            "the e1000 bar"
        );
        assert_eq!(
            svg.matches(">FAILED<").count(),
            4,
            "a failed row of each kind in its two panels"
        );
    }
}
