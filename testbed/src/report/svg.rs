//! A hand-written SVG chart of panels of grouped bars: for block rows, mode transitions per I/O (user
//! exits, VM exits, interrupts, guest signals) and host CPU µs per I/O (total, vCPU thread, device
//! threads); for network rows the same two per packet, below. In each, one cluster per workload, one
//! group of bars per device inside it, on a logarithmic y axis with a line per decade. Zero values (which a log axis cannot draw) get a "0" at the baseline; failed devices
//! get "FAILED" instead of bars.

use std::fmt::Write as _;

use super::{Kind, Measurement, Row, CPU_SPLIT, TRANSITIONS};

/// One colour per transition kind, in [`TRANSITIONS`] order.
const COLORS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
/// One colour per CPU share, in [`CPU_SPLIT`] order.
const CPU_COLORS: [&str; 3] = ["#7f7f7f", "#9467bd", "#17becf"];

const BAR: f64 = 16.0;
const BAR_GAP: f64 = 3.0;
const DEVICE_GAP: f64 = 22.0;
const WORKLOAD_GAP: f64 = 44.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 96.0;
const PLOT_HEIGHT: f64 = 380.0;
/// Below a panel's plot: device and workload labels.
const LABELS: f64 = 60.0;
/// Below the panels: the notes.
const FOOTER: f64 = 70.0;

/// A log10 axis covering whole decades `10^lo ..= 10^hi` over `height` pixels from `bottom` upwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogScale {
    /// Lowest decade exponent.
    pub lo: i32,
    /// Highest decade exponent (> `lo`).
    pub hi: i32,
    /// Pixel y of the axis bottom.
    pub bottom: f64,
    /// Pixel height of the axis.
    pub height: f64,
}

impl LogScale {
    /// The smallest whole-decade range holding every positive value (at least one decade; at most
    /// down to 10^-3, values below draw at the bottom).
    pub fn fit(values: impl IntoIterator<Item = f64>, bottom: f64, height: f64) -> Self {
        let positive: Vec<f64> = values
            .into_iter()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
        let max = positive.iter().copied().fold(0.0, f64::max);
        let (lo, hi) = if positive.is_empty() {
            (-1, 1)
        } else {
            let lo = (min.log10().floor() as i32).max(-3);
            let hi = (max.log10().ceil() as i32).max(lo + 1);
            (lo, hi)
        };
        Self {
            lo,
            hi,
            bottom,
            height,
        }
    }

    /// Pixel y of `v` (> 0), clamped to the axis.
    pub fn y(&self, v: f64) -> f64 {
        let t = (v.log10() - f64::from(self.lo)) / f64::from(self.hi - self.lo);
        self.bottom - t.clamp(0.0, 1.0) * self.height
    }
}

/// Escape text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn decade_label(e: i32) -> String {
    if e >= 0 {
        format!("{}", 10u64.pow(e.min(18) as u32))
    } else {
        format!("{:.*}", (-e) as usize, 10f64.powi(e))
    }
}

fn value_label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

/// One panel of the chart: a grouped bar chart of some per-I/O values of every row.
struct Panel {
    title: &'static str,
    axis: &'static str,
    series: &'static [&'static str],
    colors: &'static [&'static str],
    values: fn(&Measurement) -> Vec<f64>,
}

fn transitions(m: &Measurement) -> Vec<f64> {
    m.transitions_per_io().to_vec()
}

fn cpu(m: &Measurement) -> Vec<f64> {
    m.cpu_per_io().to_vec()
}

/// The block rows' panels, top to bottom.
const BLOCK_PANELS: [Panel; 2] = [
    Panel {
        title: "Mode transitions per I/O (log scale)",
        axis: "transitions per I/O",
        series: &TRANSITIONS,
        colors: &COLORS,
        values: transitions,
    },
    Panel {
        title: "Host CPU time per I/O in µs (log scale)",
        axis: "host CPU µs per I/O",
        series: &CPU_SPLIT,
        colors: &CPU_COLORS,
        values: cpu,
    },
];

/// The network rows' panels, below the block rows'.
const NET_PANELS: [Panel; 2] = [
    Panel {
        title: "Network: mode transitions per packet (log scale)",
        axis: "transitions per packet",
        series: &TRANSITIONS,
        colors: &COLORS,
        values: transitions,
    },
    Panel {
        title: "Network: host CPU time per packet in µs (log scale)",
        axis: "host CPU µs per packet",
        series: &CPU_SPLIT,
        colors: &CPU_COLORS,
        values: cpu,
    },
];

/// The rows grouped by workload, in first-seen order.
type Clusters<'a> = Vec<(&'a str, Vec<&'a Row>)>;

/// The rows of `kind` grouped by workload, in first-seen order.
fn clusters(rows: &[Row], kind: Kind) -> Clusters<'_> {
    let mut clusters: Clusters = Vec::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        match clusters.iter_mut().find(|(w, _)| *w == r.workload) {
            Some((_, devices)) => devices.push(r),
            None => clusters.push((&r.workload, vec![r])),
        }
    }
    clusters
}

/// The chart for `rows` as an SVG document.
pub fn chart(rows: &[Row]) -> String {
    let group_width = 4.0 * BAR + 3.0 * BAR_GAP;
    let block = clusters(rows, Kind::Block);
    let net = clusters(rows, Kind::Net);
    let mut sections: Vec<(&[Panel], &Clusters)> = Vec::new();
    if !block.is_empty() || net.is_empty() {
        sections.push((&BLOCK_PANELS, &block));
    }
    if !net.is_empty() {
        sections.push((&NET_PANELS, &net));
    }
    let plot_width = |clusters: &Clusters| {
        clusters
            .iter()
            .map(|(_, devs)| devs.len() as f64 * (group_width + DEVICE_GAP) - DEVICE_GAP)
            .sum::<f64>()
            + WORKLOAD_GAP * (clusters.len() as f64 + 1.0)
    };
    let widest = sections
        .iter()
        .map(|(_, c)| plot_width(c))
        .fold(200.0, f64::max);
    let width = (LEFT + widest + RIGHT).max(640.0);
    let panel_height = TOP + PLOT_HEIGHT + LABELS;
    let panels: usize = sections.iter().map(|(p, _)| p.len()).sum();
    let height = panel_height * panels as f64 + FOOTER;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut i = 0;
    for (section, clusters) in &sections {
        for p in section.iter() {
            panel(
                &mut s,
                p,
                clusters,
                panel_height * i as f64,
                width,
                group_width,
            );
            i += 1;
        }
    }
    let mut notes = Vec::new();
    if rows.iter().any(|r| r.baseline) {
        notes.push(
            "* in-guest baseline: served from guest RAM (block) or a loopback in the guest (network), \
             no device.",
        );
    }
    notes.push(
        "\"0\" at the axis: no such transition (or no device-thread CPU) in the measured window.",
    );
    notes.push(
        "host CPU = vCPU thread (guest code, exits and device models run on it, as IDE is) + device \
         threads (VMBus, storvsp, netvsp, virtio).",
    );
    for (i, note) in notes.iter().rev().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" font-size="12" fill="#444444">{}</text>"##,
            height - 12.0 - 18.0 * i as f64,
            esc(note)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Draw one panel whose top edge is at `top`.
fn panel(s: &mut String, p: &Panel, clusters: &Clusters, top: f64, width: f64, group_width: f64) {
    let plot_top = top + TOP;
    let bottom = plot_top + PLOT_HEIGHT;
    let scale = LogScale::fit(
        clusters
            .iter()
            .flat_map(|(_, rows)| rows.iter())
            .filter_map(|r| r.outcome.as_ref().ok())
            .flat_map(p.values),
        bottom,
        PLOT_HEIGHT,
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.0}" y="{:.1}" font-size="18" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        top + 30.0,
        esc(p.title)
    );
    // Legend, centred under the title.
    let legend_item = 150.0;
    let legend_x = (width - legend_item * p.series.len() as f64) / 2.0;
    for (i, (name, color)) in p.series.iter().zip(p.colors).enumerate() {
        let x = legend_x + legend_item * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="14" height="14" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#,
            top + 48.0,
            x + 20.0,
            top + 60.0,
            esc(name)
        );
    }
    // Decade grid and labels.
    for e in scale.lo..=scale.hi {
        let y = scale.y(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#cccccc" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            width - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            decade_label(e)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{LEFT}" y1="{plot_top}" y2="{bottom}" stroke="black"/><line x1="{LEFT}" x2="{:.1}" y1="{bottom}" y2="{bottom}" stroke="black"/>"#,
        width - RIGHT
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" font-size="13" text-anchor="middle">{}</text>"#,
        plot_top + PLOT_HEIGHT / 2.0,
        esc(p.axis)
    );

    let bars = p.series.len() as f64;
    let bar = (group_width - (bars - 1.0) * BAR_GAP) / bars;
    let mut x = LEFT + WORKLOAD_GAP;
    for (workload, devices) in clusters {
        let cluster_start = x;
        for row in devices {
            let center = x + group_width / 2.0;
            match &row.outcome {
                Ok(m) => {
                    for (i, v) in (p.values)(m).into_iter().enumerate() {
                        let bx = x + i as f64 * (bar + BAR_GAP);
                        let color = p.colors[i % p.colors.len()];
                        if v > 0.0 {
                            let y = scale.y(v);
                            let _ = writeln!(
                                s,
                                r#"<rect x="{bx:.1}" y="{y:.1}" width="{bar:.1}" height="{:.1}" fill="{color}"><title>{} {} {}: {}</title></rect>"#,
                                (bottom - y).max(1.0),
                                esc(&row.label()),
                                esc(workload),
                                esc(p.series[i]),
                                value_label(v)
                            );
                            let _ = writeln!(
                                s,
                                r#"<text transform="translate({:.1} {:.1}) rotate(-90)" font-size="10">{}</text>"#,
                                bx + bar / 2.0 + 3.5,
                                y - 4.0,
                                value_label(v)
                            );
                        } else {
                            let _ = writeln!(
                                s,
                                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="{color}">0</text>"#,
                                bx + bar / 2.0,
                                bottom - 4.0,
                            );
                        }
                    }
                }
                Err(_) => {
                    let _ = writeln!(
                        s,
                        r##"<text transform="translate({:.1} {:.1}) rotate(-90)" font-size="13" font-weight="bold" fill="#b00000">FAILED</text>"##,
                        center + 5.0,
                        bottom - 8.0
                    );
                }
            }
            let _ = writeln!(
                s,
                r#"<text x="{center:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
                bottom + 18.0,
                esc(&row.label())
            );
            x += group_width + DEVICE_GAP;
        }
        let cluster_end = x - DEVICE_GAP;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" text-anchor="middle">{}</text>"#,
            (cluster_start + cluster_end) / 2.0,
            bottom + 42.0,
            esc(workload)
        );
        x = cluster_end + WORKLOAD_GAP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::rows;

    #[test]
    fn log_scale_places_decades_evenly() {
        let sc = LogScale::fit([0.5, 3.0, 2500.0, 0.0], 400.0, 300.0);
        assert_eq!((sc.lo, sc.hi), (-1, 4));
        let step = sc.y(1.0) - sc.y(10.0);
        assert!((step - 60.0).abs() < 1e-9);
        assert!((sc.y(100.0) - sc.y(1000.0) - step).abs() < 1e-9);
        assert_eq!(sc.y(0.1), 400.0);
        assert_eq!(sc.y(1e-9), 400.0, "below the axis clamps to the bottom");
        assert_eq!(LogScale::fit([], 1.0, 1.0).lo, -1);
        assert_eq!(LogScale::fit([1.0], 1.0, 1.0).hi, 1);
    }

    #[test]
    fn chart_has_legend_labels_bars_and_failures() {
        let svg = chart(&rows());
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        for name in TRANSITIONS.iter().chain(&CPU_SPLIT) {
            assert!(svg.contains(&format!(">{name}</text>")), "{name}");
        }
        for title in [">Mode transitions per I/O", ">Host CPU time per I/O in µs"] {
            assert!(svg.contains(title), "{title}");
        }
        for label in [
            ">ramdisk*<",
            ">vmbus<",
            ">ide<",
            ">rr4k-qd1<",
            ">rw4k-qd32<",
            ">FAILED<",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // Transitions: four legend boxes; vmbus has four non-zero transitions, the ramdisk one (VM
        // exits). CPU: three legend boxes; vmbus has three non-zero bars, the ramdisk two (no device).
        assert_eq!(svg.matches("<rect x=").count(), 4 + 5 + 3 + 5);
        assert_eq!(svg.matches(">0</text>").count(), 3 + 1);
        assert_eq!(
            svg.matches(">FAILED<").count(),
            2,
            "the failed row in both panels"
        );
        assert!(svg.contains("vmbus rr4k-qd1 VM exits: 2.5<"));
        assert!(svg.contains("vmbus rr4k-qd1 host CPU: 5.5<"));
        assert!(svg.contains("vmbus rr4k-qd1 device threads: 1.5<"));
        assert!(svg.contains("ramdisk* rr4k-qd1 vCPU thread: 0.25<"));
        // Balanced elements.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(svg.matches("<svg").count(), 1);
        if let Ok(path) = std::env::var("TESTBED_SAMPLE_SVG") {
            std::fs::write(path, &svg).unwrap();
        }
    }

    #[test]
    fn text_is_escaped() {
        let mut r = rows();
        r[0].workload = "a<b&c".into();
        let svg = chart(&r);
        assert!(svg.contains("a&lt;b&amp;c") && !svg.contains("a<b"));
    }
}
