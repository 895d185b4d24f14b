//! One guest as the service runs it: the KVM partition with the Hyper-V enlightenments, its VMBus
//! service offering the configured disks (one synthetic SCSI controller per `controller`, its disks
//! as LUNs) and integration components (heartbeat, shutdown, time sync, KVP), the boot contract
//! with the guest kernel, and [`Shared`] — the handle every other thread (the API, signal handling,
//! the console reader) uses to look at the guest and to stop it, while the main thread waits in
//! [`Machine::join`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use host_kvm::fault_port::FaultLog;
use host_vsp::backend::{BlockBackend, FileDisk, FileDiskOptions};
use host_vsp::net::TapNet;
use host_vsp::synthetic::ic::link::Published;
use host_vsp::synthetic::ic::{IcControl, IcVsp, KvpHandle, KvpVsp, TimeSyncState, TimeSyncVsp};
use host_vsp::synthetic::netvsp::{NetvspConfig, NetvspDevice, NetvspStatsHandle};
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice, StorvspDeviceStats};
use host_vsp::vmbus_service::VmbusService;
use hypervisor_lite::hv::{HvConfig, HvPartition};
use hypervisor_lite::{GuestRam, Partition, PartitionConfig, StatsProbe, StopHandle, VcpuOutcome};
use vmbus::protocol::Guid;

use crate::config::{Config, DiskConfig};

/// How the guest's run ended, as the process reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest powered off with exit code 0.
    PoweredOff,
    /// The guest powered off reporting failure (its exit code).
    GuestFailed(u32),
    /// The guest crashed: a triple fault, a CPU exception it reported, or a vCPU KVM could not run.
    Crashed(String),
    /// The host stopped it (`ctl stop`, or a graceful shutdown that timed out: `graceful` false).
    Stopped {
        /// Whether the stop followed a graceful shutdown the guest did not finish in time.
        after_timeout: bool,
    },
}

/// Where the guest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Built, vCPUs not started.
    Created,
    /// Running.
    Running,
    /// A graceful shutdown was asked of the guest.
    ShuttingDown,
    /// The vCPUs have stopped.
    Ended,
}

impl RunState {
    /// The name status reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Ended => "ended",
        }
    }
}

/// One synthetic SCSI controller and the disks on it.
pub struct Controller {
    /// Its index in the config.
    pub index: u32,
    /// Its VMBus channel.
    pub relid: u32,
    /// Its disks: (name, LUN, image, read-only).
    pub disks: Vec<(String, u8, PathBuf, bool)>,
    /// Its backends, flushed at exit.
    pub backends: Vec<Arc<dyn BlockBackend>>,
    /// Its channel's counters.
    pub stats: Arc<Mutex<StorvspDeviceStats>>,
}

/// One synthetic NIC on a TAP interface.
pub struct NetAdapter {
    /// Its name in the config.
    pub name: String,
    /// The TAP interface.
    pub tap: String,
    /// Its MAC address.
    pub mac: String,
    /// Its VMBus channel.
    pub relid: u32,
    /// Its counters.
    pub stats: NetvspStatsHandle,
}

/// What other threads share with the guest's run.
pub struct Shared {
    /// When the guest was started.
    pub started: Mutex<Option<Instant>>,
    state: Mutex<RunState>,
    changed: Condvar,
    /// Exit accounting of the vCPUs.
    pub probe: StatsProbe,
    /// Stops the vCPUs.
    pub stop: StopHandle,
    /// The VMBus service.
    pub vmbus: Arc<VmbusService>,
    /// The SCSI controllers.
    pub controllers: Mutex<Vec<Controller>>,
    /// The network adapters.
    pub nets: Vec<NetAdapter>,
    /// The heartbeat IC, if offered.
    pub heartbeat: Option<Arc<IcControl>>,
    /// The shutdown IC, if offered.
    pub shutdown: Option<Arc<IcControl>>,
    /// The time-sync IC, if offered.
    pub timesync: Option<Arc<Published<TimeSyncState>>>,
    /// The KVP exchange IC, if offered.
    pub kvp: Option<Arc<KvpHandle>>,
    /// Heartbeat interval (health is judged against it).
    pub heartbeat_interval: Duration,
    /// How long a graceful shutdown waits.
    pub shutdown_timeout: Duration,
    /// Whether the stop was requested after a graceful shutdown timed out.
    stopped_after_timeout: Mutex<bool>,
    /// Guest RAM (the console log is read from it).
    pub ram: GuestRam,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the guest stands.
    pub fn state(&self) -> RunState {
        *self.lock_state()
    }

    fn set_state(&self, state: RunState) {
        *self.lock_state() = state;
        self.changed.notify_all();
    }

    /// Waits until the vCPUs stopped, at most `timeout`; whether they did.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock_state();
        while *state != RunState::Ended {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Stops the guest hard.
    pub fn stop_hard(&self) {
        self.stop.stop();
    }

    /// Asks the guest to shut down through the shutdown IC and waits for it (the configured
    /// timeout); stops it hard if it does not. Returns whether the guest shut down by itself.
    pub fn shutdown_gracefully(&self) -> bool {
        match self.state() {
            RunState::Ended => return true,
            RunState::Created => {
                self.stop_hard();
                return false;
            }
            _ => {}
        }
        let Some(ic) = &self.shutdown else {
            tracing::warn!("no shutdown IC is offered to the guest: stopping it hard");
            self.stop_hard();
            return false;
        };
        self.set_state(RunState::ShuttingDown);
        ic.request_shutdown();
        if self.wait_ended(self.shutdown_timeout) {
            return true;
        }
        tracing::warn!(
            timeout_s = self.shutdown_timeout.as_secs(),
            "the guest did not shut down in time: stopping it hard"
        );
        *self
            .stopped_after_timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.stop_hard();
        false
    }

    /// The controllers (locked).
    pub fn controllers(&self) -> MutexGuard<'_, Vec<Controller>> {
        self.controllers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The guest, built and ready to start.
pub struct Machine {
    partition: Partition,
    shared: Arc<Shared>,
    faults: Arc<FaultLog>,
    _hv: Arc<HvPartition>,
}

/// The instance GUID of controller `index` (stable across runs, so a guest sees the same controller).
fn controller_instance(index: u32) -> Guid {
    let i = index.to_le_bytes();
    Guid::new(
        0x5649_5249,
        0x4449,
        0x414e,
        [b'S', b'C', b'S', b'I', i[0], i[1], i[2], i[3]],
    )
}

/// The instance GUID of network adapter `index`.
fn nic_instance(index: u32) -> Guid {
    let i = index.to_le_bytes();
    Guid::new(
        0x5649_5249,
        0x4449,
        0x414e,
        [b'N', b'I', b'C', b'0', i[0], i[1], i[2], i[3]],
    )
}

const HEARTBEAT_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"HEARTBT\0");
const SHUTDOWN_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"SHUTDWN\0");
const TIMESYNC_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"TIMESYN\0");
const KVP_INSTANCE: Guid = Guid::new(0x5649_5249, 0x4449, 0x414e, *b"KVPEXCH\0");

/// A configured disk and its opened backend.
pub type OpenDisk<'a> = (&'a DiskConfig, Arc<dyn BlockBackend>);

/// Opens (or creates) one configured disk.
pub fn open_disk(disk: &DiskConfig) -> Result<Arc<dyn BlockBackend>> {
    let name = Config::disk_name(disk);
    if let (Some(mib), false) = (disk.create_size_mib, disk.path.exists()) {
        // Sparse: blocks are allocated as the guest writes them.
        FileDisk::create(&disk.path, mib << 20)
            .with_context(|| format!("disk `{name}`: creating {}", disk.path.display()))?;
        tracing::info!(disk = name, path = %disk.path.display(), mib, "created a sparse image");
    }
    let options = FileDiskOptions {
        read_only: disk.read_only,
        direct: disk.direct,
    };
    let file = FileDisk::open(&disk.path, options)
        .with_context(|| format!("disk `{name}`: opening {}", disk.path.display()))?;
    Ok(crate::inject::wrap(name, Arc::new(file)))
}

/// The storvsp device of one controller with its disks.
pub fn controller_device(
    index: u32,
    disks: &[OpenDisk<'_>],
) -> (StorvspDevice, Vec<(String, u8, PathBuf, bool)>) {
    let mut luns = LunMap::new();
    let mut names = Vec::new();
    for (disk, backend) in disks {
        luns = luns.with_backend(disk.lun, backend.clone());
        names.push((
            Config::disk_name(disk).to_string(),
            disk.lun,
            disk.path.clone(),
            disk.read_only,
        ));
    }
    let device = StorvspDevice::new(controller_instance(index), luns, StorvspConfig::default());
    (device, names)
}

impl Machine {
    /// Builds the partition, opens every disk and offers the devices. Nothing runs yet.
    pub fn build(config: &Config) -> Result<Self> {
        let kernel: std::borrow::Cow<'static, [u8]> = match config.guest.kernel.as_str() {
            "builtin" => guest_image::GUEST_ELF.into(),
            "sdk-example" => guest_image::SDK_EXAMPLE_ELF.into(),
            path => std::fs::read(path)
                .with_context(|| format!("reading the guest kernel {path}"))?
                .into(),
        };
        let ram_bytes = config.guest.memory_mib << 20;
        let hv = HvPartition::new(HvConfig::new(config.guest.vcpus));
        let faults = Arc::new(FaultLog::default());
        let mut pc = PartitionConfig::new(ram_bytes, config.guest.vcpus);
        // The guest's power-off (its exit-port write, from whichever vCPU) ends every vCPU, as a
        // crash of any vCPU does (stop_on_fault).
        pc.elf_bytes(kernel).serial_echo(false).stop_on_exit(true);
        pc.add_port_handler(
            guest_abi::FAULT_PORT..guest_abi::FAULT_PORT + 1,
            faults.clone(),
        );
        hv.install(&mut pc);
        let partition = pc.build().context("building the guest partition")?;
        hv.attach_to(&partition)
            .context("attaching the enlightenments")?;
        let vmbus = host_kvm::vmbus::start_vmbus(&hv, partition.ram(), &[], Vec::new())
            .context("starting the VMBus service")?;

        let mut by_controller: BTreeMap<u32, Vec<OpenDisk<'_>>> = BTreeMap::new();
        for disk in &config.disks {
            let backend = open_disk(disk)?;
            by_controller
                .entry(disk.controller.unwrap_or(0))
                .or_default()
                .push((disk, backend));
        }
        let mut controllers = Vec::new();
        for (index, disks) in by_controller {
            let (device, names) = controller_device(index, &disks);
            let stats = device.stats();
            let relid = vmbus
                .add_device(crate::inject::wrap_device(
                    &names.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
                    Arc::new(device),
                ))
                .with_context(|| format!("offering SCSI controller {index}"))?;
            controllers.push(Controller {
                index,
                relid,
                disks: names,
                backends: disks.into_iter().map(|(_, b)| b).collect(),
                stats,
            });
        }
        let mut nets = Vec::new();
        for (i, net) in config.nets.iter().enumerate() {
            let name = net.name.clone().unwrap_or_default();
            let tap = TapNet::open(&net.tap)
                .with_context(|| format!("network adapter `{name}`: TAP interface {}", net.tap))?;
            let device = NetvspDevice::new(
                nic_instance(i as u32),
                Box::new(tap),
                NetvspConfig::new(net.mac_bytes()),
            )
            .with_context(|| format!("network adapter `{name}`"))?;
            let stats = device.stats();
            let relid = vmbus
                .add_device(Arc::new(device))
                .with_context(|| format!("offering network adapter `{name}`"))?;
            nets.push(NetAdapter {
                name,
                tap: net.tap.clone(),
                mac: net.mac.clone().unwrap_or_default(),
                relid,
                stats,
            });
        }
        let heartbeat_interval = Duration::from_millis(config.ic.heartbeat_interval_ms);
        let heartbeat = if config.ic.heartbeat {
            let ic = IcVsp::heartbeat_every(HEARTBEAT_INSTANCE, heartbeat_interval);
            let control = ic.control();
            vmbus
                .add_device(Arc::new(ic))
                .context("offering the heartbeat IC")?;
            Some(control)
        } else {
            None
        };
        let shutdown = if config.ic.shutdown {
            let ic = IcVsp::shutdown(SHUTDOWN_INSTANCE);
            let control = ic.control();
            vmbus
                .add_device(Arc::new(ic))
                .context("offering the shutdown IC")?;
            Some(control)
        } else {
            None
        };
        let timesync = if config.ic.timesync {
            // The guest's reference counter is the partition's: read by the device as it samples.
            let partition_hv = hv.clone();
            let ic = TimeSyncVsp::new(
                TIMESYNC_INSTANCE,
                Duration::from_millis(config.ic.timesync_interval_ms),
                Arc::new(move || Some(partition_hv.reference_time())),
            );
            let state = ic.state();
            vmbus
                .add_device(Arc::new(ic))
                .context("offering the time-sync IC")?;
            Some(state)
        } else {
            None
        };
        let kvp = if config.ic.kvp {
            let ic = KvpVsp::new(KVP_INSTANCE).context("the KVP IC")?;
            let handle = ic.handle();
            vmbus
                .add_device(Arc::new(ic))
                .context("offering the KVP IC")?;
            Some(handle)
        } else {
            None
        };

        // The builtin kernel has no timer of its own: tell it the TSC rate (its clock).
        let cmdline = if config.guest.kernel == "builtin" {
            format!(
                "bench-tsc:{} {}",
                hypervisor_lite::tsc::calibrate_tsc(),
                config.guest.cmdline
            )
        } else {
            config.guest.cmdline.clone()
        };
        if cmdline.len() > guest_abi::MAX_CMDLINE {
            bail!("the guest command line is too long once the TSC rate is added");
        }
        let ram = partition.ram();
        let regions: Vec<(u64, u64)> = ram.regions().iter().map(|r| (r.gpa, r.len)).collect();
        let info = guest_abi::BootInfo::new(&regions, cmdline.len() as u64);
        ram.write_obj(guest_abi::BOOT_INFO_GPA, &info)?;
        ram.write(guest_abi::CMDLINE_GPA, cmdline.as_bytes())?;
        let shared = Arc::new(Shared {
            started: Mutex::new(None),
            state: Mutex::new(RunState::Created),
            changed: Condvar::new(),
            probe: partition.stats_probe(),
            stop: partition.stop_handle(),
            vmbus,
            controllers: Mutex::new(controllers),
            nets,
            heartbeat,
            shutdown,
            timesync,
            kvp,
            heartbeat_interval,
            shutdown_timeout: Duration::from_secs(config.ic.shutdown_timeout_s),
            stopped_after_timeout: Mutex::new(false),
            ram: ram.clone(),
        });
        Ok(Self {
            partition,
            shared,
            faults,
            _hv: hv,
        })
    }

    /// What other threads share with the run.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Starts the vCPUs.
    pub fn start(&mut self) -> Result<()> {
        *self
            .shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.shared.set_state(RunState::Running);
        self.partition.start().context("starting the guest")
    }

    /// Waits for the guest to end, then stops every device and makes every disk durable (each
    /// write the guest saw acknowledged reaches the images before this returns).
    pub fn join(mut self) -> Result<Ending> {
        let mut outcomes = self.partition.join();
        self.shared.set_state(RunState::Ended);
        self.shared.vmbus.shutdown();
        let mut flush_failed = Vec::new();
        for controller in self.shared.controllers().iter() {
            for (backend, (name, ..)) in controller.backends.iter().zip(&controller.disks) {
                if let Err(e) = backend.flush() {
                    flush_failed.push(format!("disk `{name}`: {e}"));
                }
            }
        }
        if !flush_failed.is_empty() {
            bail!(
                "flushing the disks at exit failed: {}",
                flush_failed.join("; ")
            );
        }
        // What ended the guest: the first vCPU that did not merely stop because another ended it.
        let Some(outcome) = outcomes
            .iter()
            .position(|o| !matches!(o, VcpuOutcome::Stopped))
            .or((!outcomes.is_empty()).then_some(0))
            .map(|i| outcomes.swap_remove(i))
        else {
            bail!("the partition has no vCPU");
        };
        let faults = self.faults.faults();
        Ok(self.ending(outcome, &faults))
    }

    fn ending(&self, outcome: VcpuOutcome, faults: &[(u32, u64)]) -> Ending {
        if let Some((vector, rip)) = faults.first() {
            return Ending::Crashed(format!("the guest took CPU exception {vector} at {rip:#x}"));
        }
        match outcome {
            VcpuOutcome::Exited { code: 0 } => Ending::PoweredOff,
            VcpuOutcome::Exited { code } => Ending::GuestFailed(code),
            VcpuOutcome::Stopped => Ending::Stopped {
                after_timeout: *self
                    .shared
                    .stopped_after_timeout
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            },
            VcpuOutcome::Shutdown(state) => {
                Ending::Crashed(format!("the guest triple-faulted at {:#x}", state.regs.rip))
            }
            other => Ending::Crashed(format!("the vCPU could not go on: {other:?}")),
        }
    }

    /// A live handle on the guest's serial console.
    pub fn serial(&self) -> hypervisor_lite::serial::SerialOutput {
        self.partition.serial_output()
    }
}
