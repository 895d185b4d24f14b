//! `testbed`: boots the viridian guest kernel once per device, drives the same workloads through each
//! device (and the same traffic through each NIC) and reports throughput, latency and mode transitions
//! per I/O (per packet) as a table (stdout), JSON and an SVG
//! chart. Progress and log messages go to stderr. Exit status: 0 all rows measured, 1 some row FAILED,
//! 2 usage or setup error (one message), 130 interrupted; `testbed --help` says more.
//!
//! ```sh
//! cargo run --release -p testbed -- --json out.json --svg out.svg   # block and network rows (root)
//! cargo run --release -p testbed -- --workload 'rr4k:k=rr,bs=4k,qd=16,n=5000,ms=2000' --devices ramdisk
//! testbed --image disk.img --workload 'r:k=rr,bs=4k,n=1000' --json - | jq .rows
//! ```

mod cli;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use testbed::bench::{self, BenchOptions, DeviceKit};
use testbed::net::{self, NetKit, NetOptions, NetPlan};
use testbed::report::document::RunInfo;
use testbed::report::Row;
use workload::WorkloadSpec;

use cli::args::Args;
use cli::disk::{self, DiskPlan};
use cli::output;

/// Exit status of an interrupted run (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// How a run that got past setup ended.
struct Finished {
    /// Rows that FAILED.
    failed: usize,
    /// Stopped by SIGINT before every workload ran.
    interrupted: bool,
}

fn main() -> ExitCode {
    // clap prints its own one message and exits 2 for usage errors (0 for --help and --version).
    let args = Args::parse();
    init_logging(args.verbose);
    let cancel = Arc::new(AtomicBool::new(false));
    install_sigint(&cancel);
    match run(&args, &cancel) {
        Ok(Finished {
            failed: 0,
            interrupted: false,
        }) => ExitCode::SUCCESS,
        Ok(Finished { failed, .. }) if failed > 0 => {
            eprintln!("testbed: {failed} row(s) FAILED");
            ExitCode::from(1)
        }
        Ok(Finished { .. }) => {
            eprintln!("testbed: interrupted: reported the workloads that finished");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("testbed: error: {}", output::describe(&e));
            ExitCode::from(2)
        }
    }
}

/// Log to stderr: `RUST_LOG` when set, else warnings, `-v` info, `-vv` debug.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::builder().parse_lossy(directives)
        }
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// First SIGINT: set `cancel` (the running guest stops, what finished is reported); second: exit now.
fn install_sigint(cancel: &Arc<AtomicBool>) {
    let flag = cancel.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::AcqRel) {
            eprintln!("testbed: interrupted again: exiting without a report");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("testbed: interrupted: stopping the guest (Ctrl-C again to exit at once)");
    });
    if let Err(e) = installed {
        tracing::warn!(error = %e, "no SIGINT handler: Ctrl-C will lose the report");
    }
}

/// The workloads the command line asks for (the defaults sized to the disk).
fn workloads(args: &Args, capacity: u64) -> Result<Vec<WorkloadSpec>> {
    if args.workloads.is_empty() {
        return Ok(disk::default_workloads(capacity));
    }
    args.workloads
        .iter()
        .map(|w| WorkloadSpec::parse(w).with_context(|| format!("--workload `{w}`")))
        .collect()
}

/// The kits named in `names` (all of `all` when none is named), in the order asked; an unknown
/// name is an error listing the known ones (`what`: "device" or "NIC").
fn select<'a, K: ?Sized>(
    names: &[String],
    all: &'a [Box<K>],
    name_of: fn(&K) -> &str,
    what: &str,
) -> Result<Vec<&'a K>> {
    if names.is_empty() {
        return Ok(all.iter().map(|k| &**k).collect());
    }
    let mut chosen = Vec::new();
    for name in names {
        match all.iter().find(|k| name_of(k) == name) {
            Some(k) => chosen.push(&**k),
            None => bail!(
                "unknown {what} `{name}` (known: {})",
                all.iter()
                    .map(|k| name_of(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(chosen)
}

/// Check everything, then run every device and NIC; setup errors are `Err` (exit 2).
fn run(args: &Args, cancel: &Arc<AtomicBool>) -> Result<Finished> {
    output::check(args)?;
    let plan = DiskPlan::from_args(args)?;
    let all = bench::kits();
    let (specs, kits) = if args.block_rows() {
        let specs = workloads(args, plan.bytes())?;
        let kits = select(&args.devices, &all, <dyn DeviceKit>::name, "device")?;
        disk::check_workloads(&specs, &kits, plan.bytes())?;
        (specs, kits)
    } else {
        (Vec::new(), Vec::new())
    };
    let all_nics = net::kits();
    let nic_kits = if args.net_rows() {
        select(&args.nics, &all_nics, <dyn NetKit>::name, "NIC")?
    } else {
        Vec::new()
    };
    let writers: Vec<&str> = specs
        .iter()
        .filter(|s| s.kind.writes())
        .map(|s| s.name.as_str())
        .collect();
    // Refused before KVM is even looked at: the image is not opened for writing.
    disk::check_writes(args, &plan, &writers)?;
    if let Some(path) = &args.image {
        check_not_an_output(args, path)?;
    }
    hypervisor_lite::kvm_setup::open_kvm(Path::new(hypervisor_lite::partition::DEFAULT_KVM_PATH))
        .context("checking KVM")?;
    let nic_kits = check_namespace(nic_kits)?;
    let disk = disk::open(args, &plan, &writers)?;

    let tsc_hz = bench::calibrate_tsc();
    let progress = !args.quiet;
    if progress {
        let names = |v: Vec<&str>| v.join(", ");
        eprintln!(
            "testbed: TSC {:.3} GHz; {} workload(s) on {} vCPU(s) on {}; network rows on {}",
            tsc_hz as f64 / 1e9,
            specs.len(),
            args.vcpus,
            names(kits.iter().map(|k| k.name()).collect()),
            names(nic_kits.iter().map(|k| k.name()).collect())
        );
    }
    let opts = BenchOptions {
        tsc_hz,
        progress,
        echo: args.echo,
        timeout: None,
        contents: disk.contents,
        cancel: Some(cancel.clone()),
        on_line: None,
        vcpus: args.vcpus,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut interrupted = false;
    for kit in kits {
        if cancel.load(Ordering::Acquire) {
            interrupted = true;
            break;
        }
        if progress {
            let what = if kit.baseline() {
                " (in-guest baseline, not a device)"
            } else {
                ""
            };
            eprintln!("testbed: {}{what}: booting the guest", kit.name());
        }
        let run = bench::run_device(kit, disk.backend.clone(), &specs, &opts);
        if progress {
            report_progress(kit.name(), &run.rows, run.interrupted);
        }
        interrupted |= run.interrupted;
        rows.extend(run.rows);
        if run.interrupted {
            break;
        }
    }
    let net_opts = NetOptions {
        tsc_hz,
        echo: args.echo,
        plan: NetPlan {
            flood: args.net_flood,
            stream_mib: args.net_stream_mib,
            round_trips: args.net_rr,
        },
    };
    for kit in nic_kits {
        if interrupted || cancel.load(Ordering::Acquire) {
            interrupted = true;
            break;
        }
        if progress {
            let what = if kit.baseline() {
                " (in-guest baseline, not a NIC)"
            } else {
                ""
            };
            eprintln!(
                "testbed: {}{what}: booting the guest for the network rows",
                kit.name()
            );
        }
        let net_rows = net::run_nic(kit, &net_opts);
        if progress {
            report_progress(kit.name(), &net_rows, false);
        }
        rows.extend(net_rows);
    }

    let info = RunInfo {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        tsc_hz,
        backend: disk.info,
        interrupted,
    };
    output::emit(args, &rows, &info)?;
    Ok(Finished {
        failed: rows.iter().filter(|r| r.outcome.is_err()).count(),
        interrupted,
    })
}

/// One progress line for a device's or NIC's finished rows.
fn report_progress(name: &str, rows: &[Row], interrupted: bool) {
    let failed = rows.iter().filter(|r| r.outcome.is_err()).count();
    let state = match (failed, interrupted) {
        (0, false) => "data verified".to_string(),
        (0, true) => format!("interrupted after {} workload(s)", rows.len()),
        (n, _) => format!("{n} FAILED"),
    };
    eprintln!("testbed: {name}: done, {state}");
}

/// The NICs that can run: all of them when a network namespace can be made; otherwise none, after
/// one line saying why (an error under CI=true, where the network rows must run).
fn check_namespace(kits: Vec<&dyn NetKit>) -> Result<Vec<&dyn NetKit>> {
    if kits.iter().all(|k| k.baseline()) {
        return Ok(kits);
    }
    match net::probe_namespace() {
        Ok(()) => Ok(kits),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            Err(e.context("the network rows (CI=true: they must run)"))
        }
        Err(e) => {
            eprintln!(
                "testbed: network rows skipped: {} (they need root for a network namespace of \
                 their own)",
                output::describe(&e)
            );
            Ok(Vec::new())
        }
    }
}

/// The image must not also be where the report goes.
fn check_not_an_output(args: &Args, image: &Path) -> Result<()> {
    for (flag, out) in [("--json", &args.json), ("--svg", &args.svg)] {
        if out.as_deref() == Some(image) {
            bail!("{flag} {} is also the --image", image.display());
        }
    }
    Ok(())
}
