//! Booting the guest kernel: partition + enlightenments + boot info, then run to the guest's exit.
//!
//! The boot contract with the guest kernel is `guest-abi` (one definition for both ends): the host
//! writes a [`BootInfo`] at [`BOOT_INFO_GPA`] and the command line (scenario tokens separated by
//! spaces) at [`CMDLINE_GPA`]. The guest reports CPU exceptions on [`FAULT_PORT`] (vector, then RIP
//! low and high halves) and exits through hypervisor-lite's exit port.
//!
//! Every write to [`MARK_PORT`] snapshots the counters and the CPU clocks ([`CpuSnapshot`]) of the vCPUs
//! and of the partition's device threads: the threads host-vsp starts while the guest is built join the
//! config's [`DeviceThreads`] registry ([`GuestVmConfig::device_threads`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use host_kvm::fault_port::FaultLog;
use host_vsp::device_threads::DeviceThreads;
use host_vsp::vmbus_service::{VmbusDevice, VmbusService};
use hypervisor_lite::hv::{HvConfig, HvPartition};
use hypervisor_lite::{
    Partition, PartitionConfig, PortHandler, StatsProbe, StatsSnapshot, VcpuCtx, VcpuOutcome,
};
use vmbus::protocol::Version;

use crate::cpu::{CpuSnapshot, CpuWindow};

pub use guest_abi::{
    BootInfo, BOOT_INFO_GPA, CMDLINE_GPA, FAULT_PORT, LOG_GPA, LOG_LEN, MARK_PORT, MAX_CMDLINE,
};

/// Adds device handlers to the partition before it is built.
pub type ConfigureHook = Box<dyn FnOnce(&mut PartitionConfig) -> Result<()> + Send>;
/// Wires devices to the built partition (ioeventfds, irqfds, guest RAM) before the guest starts.
pub type AttachHook = Box<dyn FnOnce(&Partition, &Arc<HvPartition>) -> Result<()> + Send>;

/// How to boot the guest.
pub struct GuestVmConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// vCPUs (default 1). The guest kernel runs on up to four; the BSP's exit ends them all.
    pub vcpus: u32,
    /// Scenario command line.
    pub cmdline: String,
    /// Echo the guest console to stderr as it arrives.
    pub echo: bool,
    configure: Vec<ConfigureHook>,
    attach: Vec<AttachHook>,
    vmbus_devices: Vec<Arc<dyn VmbusDevice>>,
    vmbus_versions: Vec<Version>,
    device_threads: DeviceThreads,
}

impl std::fmt::Debug for GuestVmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestVmConfig")
            .field("ram_bytes", &self.ram_bytes)
            .field("vcpus", &self.vcpus)
            .field("cmdline", &self.cmdline)
            .field("devices", &self.configure.len())
            .field("vmbus_devices", &self.vmbus_devices.len())
            .finish()
    }
}

impl GuestVmConfig {
    /// 64 MiB of RAM running `cmdline`.
    pub fn new(cmdline: impl Into<String>) -> Self {
        Self {
            ram_bytes: 64 << 20,
            vcpus: 1,
            cmdline: cmdline.into(),
            echo: false,
            configure: Vec::new(),
            attach: Vec::new(),
            vmbus_devices: Vec::new(),
            vmbus_versions: Vec::new(),
            device_threads: DeviceThreads::new(),
        }
    }

    /// The registry of this guest's device threads: current while [`GuestVm::new`] builds the guest
    /// (hooks included), so every thread host-vsp starts for its devices then — or later from a service
    /// started then — joins it.
    pub fn device_threads(&self) -> &DeviceThreads {
        &self.device_threads
    }

    /// Offer `device` on the partition's VMBus service (every VMBus device of the guest shares it).
    pub fn vmbus_device(&mut self, device: Arc<dyn VmbusDevice>) -> &mut Self {
        self.vmbus_devices.push(device);
        self
    }

    /// The VMBus versions the host accepts (default: all it knows).
    pub fn vmbus_versions(&mut self, versions: &[Version]) -> &mut Self {
        self.vmbus_versions = versions.to_vec();
        self
    }

    /// Add device handlers to the partition configuration.
    pub fn configure(
        &mut self,
        hook: impl FnOnce(&mut PartitionConfig) -> Result<()> + Send + 'static,
    ) -> &mut Self {
        self.configure.push(Box::new(hook));
        self
    }

    /// Wire devices to the built partition before the guest starts.
    pub fn attach(
        &mut self,
        hook: impl FnOnce(&Partition, &Arc<HvPartition>) -> Result<()> + Send + 'static,
    ) -> &mut Self {
        self.attach.push(Box::new(hook));
        self
    }
}

/// Counter and CPU snapshots taken when the guest wrote to [`MARK_PORT`].
#[derive(Debug, Default)]
struct MarkLog {
    probe: std::sync::OnceLock<StatsProbe>,
    device_threads: DeviceThreads,
    marks: Mutex<Vec<(u32, StatsSnapshot, CpuSnapshot)>>,
}

impl PortHandler for MarkLog {
    fn read(&self, _vcpu: &mut VcpuCtx, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, vcpu: &mut VcpuCtx, _port: u16, data: &[u8]) {
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        if let Some(probe) = self.probe.get() {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded whatever the guest does.
            if marks.len() < 4096 {
                // The vCPU's clock is read first and last: the bookkeeping stays outside the windows.
                let (stats, cpu) = CpuSnapshot::around(&self.device_threads, || probe.snapshot());
                let cpu = cpu.with_other_vcpus(&stats, vcpu.vp_index());
                marks.push((u32::from_le_bytes(word), stats, cpu));
            }
        }
    }
}

/// A booted (not yet started) guest.
pub struct GuestVm {
    partition: Partition,
    hv: Arc<HvPartition>,
    vmbus: Arc<VmbusService>,
    faults: Arc<FaultLog>,
    marks: Arc<MarkLog>,
    started: Option<StatsSnapshot>,
}

impl std::fmt::Debug for GuestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestVm").finish_non_exhaustive()
    }
}

/// How a guest run ended.
#[derive(Debug)]
pub struct GuestRun {
    /// The guest's exit code (0 = every scenario passed).
    pub exit_code: Option<u32>,
    /// Everything the guest printed.
    pub console: String,
    /// The outcome of the vCPU that ended the guest (the first that exited; else VP 0's).
    pub outcome: VcpuOutcome,
    /// The VP index of that vCPU.
    pub ended_by: usize,
    /// CPU exceptions the guest reported: (vector, RIP).
    pub faults: Vec<(u32, u64)>,
    /// Counters over the whole run.
    pub stats: StatsSnapshot,
    /// Snapshots at the guest's marks, in order.
    pub marks: Vec<(u32, StatsSnapshot)>,
    /// CPU clocks at the same marks, in order.
    pub cpu_marks: Vec<(u32, CpuSnapshot)>,
    /// Names of the device threads running when the guest stopped (before the devices were stopped).
    pub device_threads: Vec<String>,
    /// The partition's VMBus service (its devices stopped).
    pub vmbus: Arc<VmbusService>,
    /// How long stopping the VMBus devices took once the vCPUs had stopped.
    pub vmbus_shutdown: Duration,
}

impl GuestRun {
    /// Counters between the first marks `start` and `end` (the end marker's own exit removed).
    pub fn window(&self, start: u32, end: u32) -> Option<StatsSnapshot> {
        let a = self.marks.iter().find(|(m, _)| *m == start)?;
        let b = self.marks.iter().find(|(m, _)| *m == end)?;
        let mut delta = b.1.delta(&a.1);
        if let Some(v) = delta.vcpus.first_mut() {
            v.user_exits.io = v.user_exits.io.saturating_sub(1);
        }
        Some(delta)
    }

    /// CPU time between the first marks `start` and `end` ([`CpuWindow::between`]).
    pub fn cpu_window(&self, start: u32, end: u32) -> Option<CpuWindow> {
        let a = self.cpu_marks.iter().find(|(m, _)| *m == start)?;
        let b = self.cpu_marks.iter().find(|(m, _)| *m == end)?;
        CpuWindow::between(&a.1, &b.1)
    }
}

impl GuestRun {
    /// The text after the first `key=` the guest printed, up to the next whitespace.
    pub fn console_value(&self, key: &str) -> Option<&str> {
        let pattern = format!("{key}=");
        let at = self.console.find(&pattern)? + pattern.len();
        self.console[at..].split_whitespace().next()
    }

    /// The number after the first `key=` the guest printed (its leading digits); panics with the
    /// console when there is none — for tests.
    pub fn console_number(&self, key: &str) -> u64 {
        self.console_value(key)
            .and_then(|v| {
                let digits = v.len() - v.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                v[..digits].parse().ok()
            })
            .unwrap_or_else(|| panic!("no number `{key}=` in the console:\n{}", self.console))
    }

    /// Fail with the console and faults unless the guest exited with 0.
    pub fn expect_success(&self) -> Result<()> {
        if self.exit_code != Some(0) {
            bail!(
                "guest did not succeed: outcome {:?}, faults {:x?}\nuser exits {:?}\n--- console ---\n{}",
                self.outcome,
                self.faults,
                self.stats.vcpus.first().map(|v| &v.user_exits),
                self.console
            );
        }
        Ok(())
    }
}

impl GuestVm {
    /// Build the partition, load the guest kernel and write its boot info.
    pub fn new(mut config: GuestVmConfig) -> Result<Self> {
        if config.cmdline.len() > MAX_CMDLINE {
            bail!(
                "command line of {} bytes exceeds {MAX_CMDLINE}",
                config.cmdline.len()
            );
        }
        // Device threads started from here on (hooks included) are this guest's.
        let device_threads = config.device_threads.clone();
        let _current = device_threads.enter();
        let hv = HvPartition::new(HvConfig::new(config.vcpus));
        let faults = Arc::new(FaultLog::default());
        let mut pc = PartitionConfig::new(config.ram_bytes, config.vcpus);
        // The guest powers off from its BSP (or from whichever CPU panics): that ends every vCPU.
        pc.elf_bytes(crate::GUEST_ELF)
            .serial_echo(config.echo)
            .stop_on_exit(true);
        pc.add_port_handler(FAULT_PORT..FAULT_PORT + 1, faults.clone());
        let marks = Arc::new(MarkLog {
            device_threads: device_threads.clone(),
            ..MarkLog::default()
        });
        pc.add_port_handler(MARK_PORT..MARK_PORT + 1, marks.clone());
        hv.install(&mut pc);
        for hook in config.configure.drain(..) {
            hook(&mut pc)?;
        }
        let partition = pc.build().context("building the guest partition")?;
        let _ = marks.probe.set(partition.stats_probe());
        hv.attach_to(&partition)
            .context("attaching the enlightenments")?;
        for hook in config.attach.drain(..) {
            hook(&partition, &hv)?;
        }
        let vmbus = host_kvm::vmbus::start_vmbus(
            &hv,
            partition.ram(),
            &config.vmbus_versions,
            std::mem::take(&mut config.vmbus_devices),
        )
        .context("starting the VMBus service")?;
        let ram = partition.ram();
        let regions: Vec<(u64, u64)> = ram.regions().iter().map(|r| (r.gpa, r.len)).collect();
        let info = BootInfo::new(&regions, config.cmdline.len() as u64);
        ram.write_obj(BOOT_INFO_GPA, &info)?;
        ram.write(CMDLINE_GPA, config.cmdline.as_bytes())?;
        Ok(Self {
            partition,
            hv,
            vmbus,
            faults,
            marks,
            started: None,
        })
    }

    /// What the guest wrote to its shared-memory log so far (bounded by the log area; a guest that
    /// writes garbage into the header only gets its text truncated).
    pub fn log(&self) -> String {
        let ram = self.partition.ram();
        let written = ram.read_u64(LOG_GPA).unwrap_or(0).min(LOG_LEN - 16);
        let mut text = vec![0u8; written as usize];
        if ram.read(LOG_GPA + 16, &mut text).is_err() {
            return String::new();
        }
        let dropped = ram.read_u64(LOG_GPA + 8).unwrap_or(0);
        let mut log = String::from_utf8_lossy(&text).into_owned();
        if dropped > 0 {
            log.push_str(&format!("\n[{dropped} log bytes dropped]\n"));
        }
        log
    }

    /// The enlightenments (to register VMBus connections before the guest starts).
    pub fn hv(&self) -> &Arc<HvPartition> {
        &self.hv
    }

    /// The partition's VMBus service (to add or remove devices at run time).
    pub fn vmbus(&self) -> &Arc<VmbusService> {
        &self.vmbus
    }

    /// The registry of the guest's device threads.
    pub fn device_threads(&self) -> &DeviceThreads {
        &self.marks.device_threads
    }

    /// The partition.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// A counter snapshot.
    pub fn stats(&self) -> StatsSnapshot {
        self.partition.stats()
    }

    /// Run the guest until it exits (or `timeout`).
    pub fn run(mut self, timeout: Duration) -> Result<GuestRun> {
        self.start()?;
        self.wait(timeout)
    }

    /// Start the guest's vCPUs (counters of [`GuestRun::stats`] start here).
    pub fn start(&mut self) -> Result<()> {
        self.started = Some(self.partition.stats());
        self.partition.start().context("starting the guest")
    }

    /// Wait for a started guest to exit (or `timeout`, after which it is stopped).
    pub fn wait(mut self, timeout: Duration) -> Result<GuestRun> {
        let before = self.started.take().context("the guest was not started")?;
        let mut outcomes = self.partition.join_timeout(timeout);
        if outcomes.is_empty() {
            bail!("the partition has no vCPU");
        }
        let first = outcomes
            .iter()
            .position(|o| matches!(o, VcpuOutcome::Exited { .. }))
            .unwrap_or(0);
        let outcome = outcomes.swap_remove(first);
        let device_threads = self.marks.device_threads.names();
        // No device thread may outlive the guest's run.
        let stopping = std::time::Instant::now();
        self.vmbus.shutdown();
        let vmbus_shutdown = stopping.elapsed();
        let faults = self.faults.faults();
        let marks =
            std::mem::take(&mut *self.marks.marks.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(GuestRun {
            exit_code: outcome.exit_code(),
            console: format!("{}{}", self.partition.serial_output().text(), self.log()),
            outcome,
            ended_by: first,
            faults,
            stats: self.partition.stats().delta(&before),
            cpu_marks: marks.iter().map(|(m, _, cpu)| (*m, *cpu)).collect(),
            marks: marks.into_iter().map(|(m, stats, _)| (m, stats)).collect(),
            device_threads,
            vmbus: self.vmbus.clone(),
            vmbus_shutdown,
        })
    }
}
