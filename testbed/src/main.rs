//! `testbed`: boots the viridian guest kernel once per device, drives the same workloads through each
//! device and reports IOPS, latency and mode transitions per I/O as a table (stdout), JSON and an SVG
//! chart. Progress goes to stderr. Exit status: 0 all rows measured, 1 some row FAILED, 2 usage or setup
//! error.
//!
//! ```sh
//! cargo run --release -p testbed -- --json out.json --svg out.svg
//! cargo run --release -p testbed -- --workload 'rr4k:k=rr,bs=4k,qd=16,n=5000,ms=2000' --devices ramdisk
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use host_vsp::backend::{FileDisk, FileDiskOptions, RamDisk};
use testbed::bench::{self, Backend, BenchOptions, DeviceKit};
use testbed::report::{self, Row};
use workload::WorkloadSpec;

/// Compare block devices by mode transitions per I/O.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about)]
struct Args {
    /// Write the rows as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a grouped bar chart of transitions per I/O to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Serve the devices from this raw image instead of a RAM disk (created with --disk-mib if missing;
    /// the sectors the workloads touch are overwritten).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Size of the RAM disk (or of a newly created image) in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    disk_mib: u64,
    /// A workload, `NAME:k=rr|rw|sr|sw|mixP,bs=4096,qd=32,n=2000,ms=3000,seed=7,lba=START+COUNT`;
    /// repeatable. Default: 4 KiB random read QD1 and QD32, 4 KiB random write QD32, 64 KiB sequential
    /// read QD8.
    #[arg(long = "workload", value_name = "SPEC")]
    workloads: Vec<String>,
    /// Devices to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    devices: Vec<String>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Echo the guest's serial console to stderr.
    #[arg(long)]
    echo: bool,
}

fn backend(args: &Args) -> Result<Backend> {
    let bytes = args
        .disk_mib
        .checked_mul(1 << 20)
        .filter(|&b| b > 0)
        .context("--disk-mib must be positive")?;
    Ok(match &args.image {
        Some(path) if path.exists() => Arc::new(
            FileDisk::open(path, FileDiskOptions::default())
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        Some(path) => Arc::new(
            FileDisk::create(path, bytes)
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Arc::new(RamDisk::new(bytes)),
    })
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("testbed: {failed} row(s) FAILED");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("testbed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run every device; returns the number of FAILED rows.
fn run(args: &Args) -> Result<usize> {
    let specs = if args.workloads.is_empty() {
        workload::default_workloads()
    } else {
        args.workloads
            .iter()
            .map(|w| WorkloadSpec::parse(w).with_context(|| format!("--workload `{w}`")))
            .collect::<Result<Vec<_>>>()?
    };
    let all = bench::kits();
    let kits: Vec<&dyn DeviceKit> = if args.devices.is_empty() {
        all.iter().map(|k| &**k).collect()
    } else {
        let mut chosen = Vec::new();
        for name in &args.devices {
            match all.iter().find(|k| k.name() == name) {
                Some(k) => chosen.push(&**k),
                None => bail!(
                    "unknown device `{name}` (known: {})",
                    all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        chosen
    };

    let tsc_hz = bench::calibrate_tsc();
    let progress = !args.quiet;
    if progress {
        eprintln!(
            "testbed: TSC {:.3} GHz; {} workload(s) on {}",
            tsc_hz as f64 / 1e9,
            specs.len(),
            kits.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
        );
    }
    let opts = BenchOptions {
        tsc_hz,
        progress,
        echo: args.echo,
        timeout: None,
    };
    let mut rows: Vec<Row> = Vec::new();
    for kit in kits {
        if progress {
            let what = if kit.baseline() {
                " (in-guest baseline, not a device)"
            } else {
                ""
            };
            eprintln!("testbed: {}{what}: booting the guest", kit.name());
        }
        let run = bench::run_device(kit, backend(args)?, &specs, &opts);
        if progress {
            let failed = run.rows.iter().filter(|r| r.outcome.is_err()).count();
            eprintln!(
                "testbed: {}: done, {}",
                kit.name(),
                if failed == 0 {
                    "data verified".to_string()
                } else {
                    format!("{failed} FAILED")
                }
            );
        }
        rows.extend(run.rows);
    }

    print!("{}", report::table(&rows));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&rows))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg::chart(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows.iter().filter(|r| r.outcome.is_err()).count())
}
