//! The command line: [`Args`] and the long help (workload grammar, devices, disks, output, exit codes).

use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser};

/// Largest `--disk-mib` (1 TiB): keeps the byte count far from overflow.
pub const MAX_DISK_MIB: u64 = 1 << 20;

/// RAM disk size when `--disk-mib` is not given.
pub const DEFAULT_DISK_MIB: u64 = 64;

const AFTER_HELP: &str = "\
Exit status: 0 all rows measured and verified, 1 a device FAILED (data check or run), 2 usage or setup
error, 130 interrupted. `--help` documents workloads, devices, disks and output.";

const AFTER_LONG_HELP: &str = "\
WORKLOADS
  --workload NAME:key=value,...   one token without spaces; repeat the flag for more workloads
    NAME  1 to 32 of [A-Za-z0-9_.-]: the row's label
    k     kind (required): rr random read, rw random write, sr sequential read, sw sequential
          write, mixP random with P % reads (e.g. mix70)
    bs    bytes per I/O (required): a multiple of 512 up to 1m; k and m suffixes (4k, 64k)
    qd    requests kept in flight, 1..=256 (default 1)
    n     I/Os to issue, 1..=1000000 (default 1000; random kinds issue at most one per block)
    ms    time budget in milliseconds, 0..=600000 (default 0: none)
    seed  seed of the random order and of the read/write choice (default 1)
    lba   START+COUNT in 512-byte sectors (default 0+0; COUNT 0: to the end of the disk)
    off   byte offset of every request buffer from a page boundary, 0..=4095 (default 0)
  Example: rr4k-qd32:k=rr,bs=4k,qd=32,n=2000,ms=3000
  Default set: rr4k-qd1, rr4k-qd32, rw4k-qd32 (writes), sr64k-qd8, over the first 64 MiB of the
  disk (all of it if smaller), 3 s each. Every workload is checked against the disk before any
  guest boots.

DEVICES (--devices, comma-separated; default: all, in this order)
  ramdisk  in-guest baseline: the guest copies the disk into its RAM and serves it with memcpy,
           no device and no exit (disks up to 1 GiB)
  ide      emulated IDE/ATA disk, polled PIO: every register access is an exit
  virtio   virtio-blk over virtio-mmio: ioeventfd notifications, irqfd interrupts, EVENT_IDX
  virtio-poll  virtio-blk with both ends polling: the worker with the driver's notifications
           suppressed, the driver with used-buffer interrupts suppressed while requests are out
  vmbus    synthetic SCSI (storvsc to storvsp) over VMBus rings, signals and SynIC interrupts
  vmbus-poll  VMBus SCSI with both ends polling: storvsp with the guest's signals masked,
           storvsc with the host's interrupts masked while requests are outstanding

VCPUS (--vcpus N, 1 to 4; default 1)
  The guest runs on N vCPUs. On vmbus and vmbus-poll the controller then has N channels (the
  primary and N-1 sub-channels, each interrupting its own vCPU) and every workload is split over
  the vCPUs: each runs it at the workload's own qd on its own channel and its own 1/N of the lba
  range (n I/Os each, random kinds at most one per block of the share), all at once between the
  BSP's two marks. Rows count the I/Os of all vCPUs, latency percentiles of the worst vCPU, QD
  summed, and host CPU of every vCPU thread. ramdisk, ide and virtio(-poll) have one queue: the
  BSP runs them alone (rows say ch 1). Rows carry vcpus and channels. Network rows use one vCPU.

NETWORK (--nics, comma-separated; default: all, in this order)
  loopback  in-guest baseline: the same traffic over a loopback inside the guest, against
           servers played by sockets in the guest; no NIC and no exit
  e1000    an emulated Intel e1000 (82540EM) on a TAP device, driven by register access as
           unenlightened guests do: every register access is an exit
  virtio-net  virtio-net over virtio-mmio on a TAP device: ioeventfd kicks, irqfd interrupts,
           EVENT_IDX, the driver with Linux's virtio_net discipline (batched kicks, NAPI-style
           interrupt suppression, batched receive refills)
  netvsc   the synthetic NIC (netvsc to netvsp) over VMBus, on a TAP device
  Each NIC's host side sits on a TAP in a network namespace the run makes (198.18.0.0/24, removed
  afterwards), with the host's servers there: this needs root. Without it, the network rows are
  skipped with one line (an error under CI=true). Workloads: udp64-flood (--net-flood 64-byte
  datagrams one way), tcp-stream-tx and tcp-stream-rx (--net-stream-mib MiB each way, every byte
  checked at both ends), udp-rr (--net-rr request/response round trips, latency p50/p99).
  Which rows run: by default every block device and every NIC; --devices, --workload or --image
  alone select block rows only, --nics alone network rows only, both together both; --no-net
  drops the network rows.

DISKS AND DATA
  Default: a RAM disk of --disk-mib MiB, pre-filled with a test pattern; every read is checked.
  --image FILE that exists: opened read-only unless a workload writes, and then only with
    --overwrite (the sectors the writes touch get test patterns). Reads are checked against what
    the host reads from the file itself; --disk-mib does not apply.
  --image FILE that does not exist: created sparse, --disk-mib MiB, and then used as above.

OUTPUT
  The table goes to standard output, progress to standard error. `--json -` or `--svg -` writes
  that document to standard output instead, and the table then goes to standard error.
  Log messages go to standard error: warnings by default, -v adds info, -vv debug; RUST_LOG
  (e.g. RUST_LOG=host_vsp=debug), when set, decides instead.
  Ctrl-C stops the running guest and still prints the table and writes --json/--svg for the
  workloads that finished; a second Ctrl-C exits at once.

EXIT STATUS
  0    every row measured and its data verified
  1    a device failed its data check or its run (FAILED rows); wins over 130
  2    usage or setup error: bad flag or workload, a workload that does not fit the disk, an image
       that may not be written, no usable KVM
  130  interrupted (SIGINT) after reporting what finished";

/// Compare block devices by mode transitions per I/O.
#[derive(Debug, Parser)]
#[command(
    name = "testbed",
    version,
    about,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Write the report as JSON to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a grouped bar chart of transitions per I/O as SVG to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Serve the devices from this raw image instead of a RAM disk (see DISKS AND DATA in --help).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Let workloads that write overwrite the sectors they touch on an existing --image.
    #[arg(long, requires = "image")]
    pub overwrite: bool,
    /// Size of the RAM disk, or of a new --image, in MiB [default: 64].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=MAX_DISK_MIB))]
    pub disk_mib: Option<u64>,
    /// A workload, NAME:key=value,... (see WORKLOADS in --help); repeatable.
    #[arg(long = "workload", value_name = "SPEC")]
    pub workloads: Vec<String>,
    /// Devices to run, comma-separated: ramdisk, ide, virtio, virtio-poll, vmbus, vmbus-poll (default:
    /// all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<String>,
    /// NICs to run, comma-separated: loopback, e1000, virtio-net, netvsc (default: all; see NETWORK in --help).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        conflicts_with = "no_net"
    )]
    pub nics: Vec<String>,
    /// No network rows.
    #[arg(long)]
    pub no_net: bool,
    /// vCPUs of the block guests, 1 to 4: the VMBus disks get a channel per vCPU and split every
    /// workload over them (see VCPUS in --help).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub vcpus: u32,
    /// Datagrams of the udp64-flood network workload.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub net_flood: u64,
    /// MiB of each TCP stream network workload.
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub net_stream_mib: u64,
    /// Round trips of the udp-rr network workload.
    #[arg(long, value_name = "N", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub net_rr: u64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// More log output on standard error: -v info, -vv debug (RUST_LOG, when set, decides instead).
    #[arg(long, short, action = ArgAction::Count)]
    pub verbose: u8,
    /// Echo the guest's serial console to standard error.
    #[arg(long)]
    pub echo: bool,
}

/// Whether an output path means standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Args {
    /// Bytes of the RAM disk or of a new image.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_mib.unwrap_or(DEFAULT_DISK_MIB) << 20
    }

    /// Whether block rows run (see NETWORK in --help).
    pub fn block_rows(&self) -> bool {
        self.selects_block() || self.nics.is_empty()
    }

    /// Whether network rows run.
    pub fn net_rows(&self) -> bool {
        !self.no_net && (!self.nics.is_empty() || !self.selects_block())
    }

    fn selects_block(&self) -> bool {
        !self.devices.is_empty() || !self.workloads.is_empty() || self.image.is_some()
    }

    /// Whether the table goes to standard error because a document goes to standard output.
    pub fn table_to_stderr(&self) -> bool {
        [&self.json, &self.svg]
            .into_iter()
            .flatten()
            .any(|p| is_stdout(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn long_help_documents_workload_keys_devices_and_exit_codes() {
        let help = Args::command().render_long_help().to_string();
        for key in ["k ", "bs ", "qd ", "n ", "ms ", "seed ", "lba ", "off "] {
            assert!(
                help.contains(&format!("    {key}")),
                "key {key} undocumented"
            );
        }
        for kit in testbed::bench::kits() {
            assert!(
                help.contains(&format!("  {}  ", kit.name())),
                "device {} undocumented",
                kit.name()
            );
        }
        for code in ["0 ", "1 ", "2 ", "130 "] {
            assert!(help.contains(&format!("  {code}")), "exit code {code}");
        }
        assert!(help.contains("--overwrite") && help.contains("`--json -`"));
    }

    #[test]
    fn a_dash_sends_the_table_to_stderr() {
        let args = Args::parse_from(["testbed", "--json", "-"]);
        assert!(args.table_to_stderr());
        assert!(!Args::parse_from(["testbed", "--json", "out.json"]).table_to_stderr());
        assert_eq!(Args::parse_from(["testbed"]).disk_bytes(), 64 << 20);
    }

    #[test]
    fn overwrite_needs_an_image_and_disk_mib_a_sane_size() {
        assert!(Args::try_parse_from(["testbed", "--overwrite"]).is_err());
        assert!(Args::try_parse_from(["testbed", "--disk-mib", "0"]).is_err());
        assert!(Args::try_parse_from(["testbed", "--disk-mib", "99999999999"]).is_err());
        let v = Args::parse_from(["testbed", "-vv"]);
        assert_eq!(v.verbose, 2);
        assert_eq!(v.vcpus, 1);
        assert_eq!(Args::parse_from(["testbed", "--vcpus", "4"]).vcpus, 4);
        for bad in ["0", "5", "x"] {
            assert!(
                Args::try_parse_from(["testbed", "--vcpus", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
