//! Mode-transition accounting: user exits (every return of KVM_RUN to this process) counted per vCPU and per
//! exit reason, and KVM's own binary statistics (KVM_GET_STATS_FD, parsed by name from the header and
//! descriptors) for each vCPU and the VM. [`StatsSnapshot`] and [`StatsSnapshot::delta`] are what the testbed
//! measures with.
//!
//! Under KVM-PVM `exits` counts every VM exit (ioeventfd writes included), `halt_exits` and `insn_emulation`
//! work, while `io_exits` and `mmio_exits` stay 0: compare user exits with `exits`, not with those.
//! Guest code at CPL0 runs inside KVM's instruction emulator there, so an ioeventfd write from CPL0 adds no
//! `exits` at all (measured: 500 such writes, 0 exits), while the same write from CPL3 is one exit (~3 µs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vcpu::VcpuControl;

use kvm_bindings::{kvm_stats_header, KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_MASK};

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// Why KVM_RUN returned to user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitReason {
    /// Port I/O.
    Io,
    /// MMIO to an address no in-kernel device or RAM backs.
    Mmio,
    /// `rdmsr` routed to user space.
    MsrRead,
    /// `wrmsr` routed to user space.
    MsrWrite,
    /// HLT handled in user space (only without an in-kernel LAPIC).
    Hlt,
    /// Shutdown (triple fault).
    Shutdown,
    /// KVM internal error (e.g. emulation failure).
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// KVM_RUN returned EINTR/EAGAIN (a stop request or another signal).
    Interrupted,
    /// A system event (reset, shutdown request, crash).
    SystemEvent,
    /// Any other exit reason.
    Other,
}

impl ExitReason {
    /// All reasons, in counter order.
    pub const ALL: [ExitReason; 11] = [
        ExitReason::Io,
        ExitReason::Mmio,
        ExitReason::MsrRead,
        ExitReason::MsrWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::InternalError,
        ExitReason::FailEntry,
        ExitReason::Interrupted,
        ExitReason::SystemEvent,
        ExitReason::Other,
    ];
}

/// Live per-vCPU user-exit counters, shared between the vCPU thread and snapshotters.
#[derive(Debug, Default)]
pub(crate) struct ExitCounters {
    counts: [AtomicU64; ExitReason::ALL.len()],
}

impl ExitCounters {
    pub(crate) fn record(&self, reason: ExitReason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn load(&self) -> UserExits {
        let c = |r: ExitReason| self.counts[r as usize].load(Ordering::Relaxed);
        UserExits {
            io: c(ExitReason::Io),
            mmio: c(ExitReason::Mmio),
            msr_read: c(ExitReason::MsrRead),
            msr_write: c(ExitReason::MsrWrite),
            hlt: c(ExitReason::Hlt),
            shutdown: c(ExitReason::Shutdown),
            internal_error: c(ExitReason::InternalError),
            fail_entry: c(ExitReason::FailEntry),
            interrupted: c(ExitReason::Interrupted),
            system_event: c(ExitReason::SystemEvent),
            other: c(ExitReason::Other),
        }
    }
}

/// User exits of one vCPU by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UserExits {
    pub io: u64,
    pub mmio: u64,
    pub msr_read: u64,
    pub msr_write: u64,
    pub hlt: u64,
    pub shutdown: u64,
    pub internal_error: u64,
    pub fail_entry: u64,
    pub interrupted: u64,
    pub system_event: u64,
    pub other: u64,
}

impl UserExits {
    /// All user exits (every KVM_RUN return).
    pub fn total(&self) -> u64 {
        self.io
            + self.mmio
            + self.msr_read
            + self.msr_write
            + self.hlt
            + self.shutdown
            + self.internal_error
            + self.fail_entry
            + self.interrupted
            + self.system_event
            + self.other
    }

    fn delta(&self, before: &UserExits) -> UserExits {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        UserExits {
            io: d(self.io, before.io),
            mmio: d(self.mmio, before.mmio),
            msr_read: d(self.msr_read, before.msr_read),
            msr_write: d(self.msr_write, before.msr_write),
            hlt: d(self.hlt, before.hlt),
            shutdown: d(self.shutdown, before.shutdown),
            internal_error: d(self.internal_error, before.internal_error),
            fail_entry: d(self.fail_entry, before.fail_entry),
            interrupted: d(self.interrupted, before.interrupted),
            system_event: d(self.system_event, before.system_event),
            other: d(self.other, before.other),
        }
    }
}

/// Errors reading KVM's binary statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// KVM_GET_STATS_FD failed (capability 203 missing?).
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Open(std::io::Error),
    /// Reading the stats file failed.
    #[error("reading KVM stats: {0}")]
    Read(std::io::Error),
    /// The header or descriptors are malformed.
    #[error("malformed KVM stats data: {0}")]
    Malformed(&'static str),
}

struct Descriptor {
    name: String,
    offset: u64,
    size: u64,
}

/// One KVM binary stats file (VM or vCPU), with its descriptors parsed once.
pub(crate) struct KvmStatsFile {
    file: File,
    data_offset: u64,
    data_len: usize,
    descriptors: Vec<Descriptor>,
    non_cumulative: Arc<BTreeSet<String>>,
}

impl std::fmt::Debug for KvmStatsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmStatsFile")
            .field("stats", &self.descriptors.len())
            .finish()
    }
}

impl KvmStatsFile {
    /// Opens the stats fd of a VM or vCPU fd.
    pub(crate) fn open(fd: &impl AsRawFd) -> Result<Self, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `fd` is a live KVM fd.
        let raw = unsafe { vmm_sys_util::ioctl::ioctl(fd, KVM_GET_STATS_FD()) };
        if raw < 0 {
            return Err(StatsError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd returned by the kernel that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        Self::parse(file)
    }

    fn parse(file: File) -> Result<Self, StatsError> {
        let mut hdr = [0u8; std::mem::size_of::<kvm_stats_header>()];
        file.read_exact_at(&mut hdr, 0).map_err(StatsError::Read)?;
        let word = |i: usize| {
            u32::from_le_bytes([hdr[4 * i], hdr[4 * i + 1], hdr[4 * i + 2], hdr[4 * i + 3]])
        };
        let h = kvm_stats_header {
            flags: word(0),
            name_size: word(1),
            num_desc: word(2),
            id_offset: word(3),
            desc_offset: word(4),
            data_offset: word(5),
        };
        if h.num_desc > 4096 || h.name_size == 0 || h.name_size > 4096 {
            return Err(StatsError::Malformed("descriptor count or name size"));
        }
        let desc_len = 16 + h.name_size as usize;
        let mut block = vec![0u8; desc_len * h.num_desc as usize];
        file.read_exact_at(&mut block, u64::from(h.desc_offset))
            .map_err(StatsError::Read)?;
        let mut descriptors = Vec::with_capacity(h.num_desc as usize);
        let mut non_cumulative = BTreeSet::new();
        for d in block.chunks_exact(desc_len) {
            let flags = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let name_bytes = &d[16..];
            let name_end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(&name_bytes[..name_end]).into_owned();
            let kind = flags & KVM_STATS_TYPE_MASK;
            // Histograms are summed into one sample count, which only grows.
            let cumulative = kind == KVM_STATS_TYPE_CUMULATIVE || kind >= 3;
            if !cumulative {
                non_cumulative.insert(name.clone());
            }
            descriptors.push(Descriptor {
                name,
                offset: offset.into(),
                size: size.into(),
            });
        }
        let data_len = descriptors
            .iter()
            .map(|d| d.offset + 8 * d.size)
            .max()
            .unwrap_or(0);
        let data_len = usize::try_from(data_len)
            .ok()
            .filter(|&l| l <= 1 << 20)
            .ok_or(StatsError::Malformed("data"))?;
        Ok(Self {
            file,
            data_offset: h.data_offset.into(),
            data_len,
            descriptors,
            non_cumulative: Arc::new(non_cumulative),
        })
    }

    /// Reads all statistics (histograms summed) by name.
    pub(crate) fn read(&self) -> Result<KvmStats, StatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(StatsError::Read)?;
        let mut values = BTreeMap::new();
        for d in &self.descriptors {
            let sum = (0..d.size)
                .map(|i| {
                    let at = (d.offset + 8 * i) as usize;
                    u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default())
                })
                .fold(0u64, u64::wrapping_add);
            values.insert(d.name.clone(), sum);
        }
        Ok(KvmStats {
            values,
            non_cumulative: self.non_cumulative.clone(),
        })
    }

    #[cfg(test)]
    fn cumulative(&self, name: &str) -> Option<bool> {
        self.descriptors
            .iter()
            .any(|d| d.name == name)
            .then(|| !self.non_cumulative.contains(name))
    }
}

/// KVM statistics of one VM or vCPU, by the kernel's names.
#[derive(Debug, Clone, Default)]
pub struct KvmStats {
    /// Every statistic the kernel exposes (histograms summed).
    pub values: BTreeMap<String, u64>,
    non_cumulative: Arc<BTreeSet<String>>,
}

impl KvmStats {
    /// The value of `name`, 0 if the kernel has no such statistic.
    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// Cumulative counters subtract; instant and peak values keep `self`'s value.
    pub fn delta(&self, before: &KvmStats) -> KvmStats {
        let values = self
            .values
            .iter()
            .map(|(k, &v)| {
                let d = if self.non_cumulative.contains(k) {
                    v
                } else {
                    v.saturating_sub(before.get(k))
                };
                (k.clone(), d)
            })
            .collect();
        KvmStats {
            values,
            non_cumulative: self.non_cumulative.clone(),
        }
    }
}

/// Accounting of one vCPU.
#[derive(Debug, Clone, Default)]
pub struct VcpuStats {
    /// VP index.
    pub vp_index: u32,
    /// User exits by reason.
    pub user_exits: UserExits,
    /// KVM `exits`: every VM exit, kernel-handled ones included.
    pub kvm_exits: u64,
    /// KVM `halt_exits`.
    pub halt_exits: u64,
    /// KVM `io_exits` (0 under PVM).
    pub io_exits: u64,
    /// KVM `mmio_exits` (0 under PVM).
    pub mmio_exits: u64,
    /// KVM `irq_exits`.
    pub irq_exits: u64,
    /// KVM `irq_injections`.
    pub irq_injections: u64,
    /// KVM `insn_emulation`.
    pub insn_emulation: u64,
    /// KVM `signal_exits`.
    pub signal_exits: u64,
    /// Every KVM statistic of this vCPU by name.
    pub kvm: KvmStats,
    /// CPU time of the vCPU's host thread (guest mode, KVM's exits and the user-space handlers run on
    /// it): so far while it runs, all of it once it ended, zero before it started.
    pub cpu_time: Duration,
}

impl VcpuStats {
    fn from_parts(vp_index: u32, user_exits: UserExits, kvm: KvmStats, cpu_time: Duration) -> Self {
        Self {
            vp_index,
            user_exits,
            cpu_time,
            kvm_exits: kvm.get("exits"),
            halt_exits: kvm.get("halt_exits"),
            io_exits: kvm.get("io_exits"),
            mmio_exits: kvm.get("mmio_exits"),
            irq_exits: kvm.get("irq_exits"),
            irq_injections: kvm.get("irq_injections"),
            insn_emulation: kvm.get("insn_emulation"),
            signal_exits: kvm.get("signal_exits"),
            kvm,
        }
    }
}

/// Accounting of a whole partition at one instant.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    /// When it was taken.
    pub taken: Instant,
    /// Per vCPU, in VP-index order.
    pub vcpus: Vec<VcpuStats>,
    /// VM-wide KVM statistics by name.
    pub vm: KvmStats,
}

impl StatsSnapshot {
    /// User exits of all vCPUs.
    pub fn user_exits(&self) -> u64 {
        self.vcpus.iter().map(|v| v.user_exits.total()).sum()
    }

    /// KVM `exits` of all vCPUs.
    pub fn kvm_exits(&self) -> u64 {
        self.vcpus.iter().map(|v| v.kvm_exits).sum()
    }

    /// CPU time of all vCPU threads ([`VcpuStats::cpu_time`]).
    pub fn vcpu_cpu_time(&self) -> Duration {
        self.vcpus.iter().map(|v| v.cpu_time).sum()
    }

    /// Sum of a per-vCPU KVM statistic over all vCPUs.
    pub fn vcpu_sum(&self, name: &str) -> u64 {
        self.vcpus.iter().map(|v| v.kvm.get(name)).sum()
    }

    /// What happened between `before` and `self` (cumulative counters subtracted).
    pub fn delta(&self, before: &StatsSnapshot) -> StatsSnapshot {
        let vcpus = self
            .vcpus
            .iter()
            .map(|v| {
                let b = before
                    .vcpus
                    .iter()
                    .find(|b| b.vp_index == v.vp_index)
                    .cloned()
                    .unwrap_or_default();
                VcpuStats::from_parts(
                    v.vp_index,
                    v.user_exits.delta(&b.user_exits),
                    v.kvm.delta(&b.kvm),
                    v.cpu_time.saturating_sub(b.cpu_time),
                )
            })
            .collect();
        StatsSnapshot {
            taken: self.taken,
            vcpus,
            vm: self.vm.delta(&before.vm),
        }
    }

    /// Seconds between `before` and `self`.
    pub fn seconds_since(&self, before: &StatsSnapshot) -> f64 {
        self.taken
            .saturating_duration_since(before.taken)
            .as_secs_f64()
    }
}

/// The per-vCPU sources of a snapshot.
#[derive(Debug)]
pub(crate) struct VcpuStatSources {
    pub(crate) vp_index: u32,
    pub(crate) exits: Arc<ExitCounters>,
    pub(crate) kvm: Option<KvmStatsFile>,
    pub(crate) control: Arc<VcpuControl>,
}

/// Takes accounting snapshots of one partition from any thread (cheap to clone).
#[derive(Debug, Clone)]
pub struct StatsProbe(Arc<(Option<KvmStatsFile>, Vec<VcpuStatSources>)>);

impl StatsProbe {
    pub(crate) fn new(vm: Option<KvmStatsFile>, vcpus: Vec<VcpuStatSources>) -> Self {
        Self(Arc::new((vm, vcpus)))
    }

    /// Accounting now: user exits per vCPU and reason, KVM statistics per vCPU and VM.
    pub fn snapshot(&self) -> StatsSnapshot {
        snapshot(self.0 .0.as_ref(), &self.0 .1)
    }
}

/// Takes a snapshot from live sources. KVM stats that cannot be read are reported as empty maps
/// (the user-exit counters are always exact).
pub(crate) fn snapshot(vm: Option<&KvmStatsFile>, vcpus: &[VcpuStatSources]) -> StatsSnapshot {
    let read = |f: Option<&KvmStatsFile>| {
        f.and_then(|f| f.read().map_err(|e| tracing::warn!("{e}")).ok())
            .unwrap_or_default()
    };
    StatsSnapshot {
        taken: Instant::now(),
        vcpus: vcpus
            .iter()
            .map(|s| {
                VcpuStats::from_parts(
                    s.vp_index,
                    s.exits.load(),
                    read(s.kvm.as_ref()),
                    s.control.cpu_time(),
                )
            })
            .collect(),
        vm: read(vm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a stats file image with the kernel's layout: header, id, descriptors, data.
    fn stats_image(stats: &[(&str, u32, u16, &[u64])]) -> File {
        const NAME: usize = 48;
        let desc_offset = 24 + 16;
        let data_offset = desc_offset + stats.len() * (16 + NAME);
        let mut v = Vec::new();
        for x in [
            0u32,
            NAME as u32,
            stats.len() as u32,
            24,
            desc_offset as u32,
            data_offset as u32,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&[b'v'; 16]);
        let mut data = Vec::new();
        for (name, flags, size, values) in stats {
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&0i16.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME, 0);
            v.extend_from_slice(&n);
            for x in *values {
                data.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.extend_from_slice(&data);
        let mut f = tempfile();
        f.write_all(&v).unwrap();
        f
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!(
            "hvl-stats-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn parses_stats_by_name_and_deltas_by_kind() {
        let f = stats_image(&[
            ("exits", 0, 1, &[10]),
            ("pages", 1, 1, &[7]),
            ("hist", 4, 3, &[1, 2, 3]),
        ]);
        let s = KvmStatsFile::parse(f).unwrap();
        assert_eq!(s.cumulative("exits"), Some(true));
        assert_eq!(s.cumulative("pages"), Some(false));
        let before = s.read().unwrap();
        assert_eq!(before.get("exits"), 10);
        assert_eq!(before.get("hist"), 6);
        assert_eq!(before.get("missing"), 0);
        let mut after = before.clone();
        after.values.insert("exits".into(), 25);
        after.values.insert("pages".into(), 3);
        let d = after.delta(&before);
        assert_eq!(d.get("exits"), 15);
        assert_eq!(d.get("pages"), 3);
    }

    #[test]
    fn rejects_truncated_stats() {
        let mut f = tempfile();
        f.write_all(&[0u8; 10]).unwrap();
        assert!(KvmStatsFile::parse(f).is_err());
    }

    #[test]
    fn user_exit_totals_and_deltas() {
        let c = ExitCounters::default();
        c.record(ExitReason::Io);
        let before = c.load();
        c.record(ExitReason::Io);
        c.record(ExitReason::MsrRead);
        let d = c.load().delta(&before);
        assert_eq!((d.io, d.msr_read, d.total()), (1, 1, 2));
    }
}
