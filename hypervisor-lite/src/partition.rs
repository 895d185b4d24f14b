//! Partitions: [`PartitionConfig`] (RAM, vCPUs, boot mode, device handlers, CPUID overrides) builds a
//! [`Partition`] — a KVM VM with an in-kernel irqchip, guest RAM in memory slots, a COM1 console and one host
//! thread per vCPU — that loads a guest ELF, starts every vCPU at its entry point, and reports each vCPU's
//! [`VcpuOutcome`]. [`StopHandle`] stops a running partition from any thread.
//!
//! ```no_run
//! use hypervisor_lite::{PartitionConfig, BootMode};
//! let mut cfg = PartitionConfig::new(16 << 20, 2);
//! cfg.mode(BootMode::LongMode64).elf_file("guest.elf");
//! let mut partition = cfg.build()?;
//! let outcomes = partition.run_timeout(std::time::Duration::from_secs(10))?;
//! assert_eq!(outcomes[0].exit_code(), Some(0));
//! print!("{}", partition.serial_output().text());
//! # Ok::<(), hypervisor_lite::Error>(())
//! ```

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_mp_state, kvm_userspace_memory_region, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, BootMode, MAX_VCPUS, MIN_RAM_BYTES};
use crate::devices::{DeviceMap, MmioHandler, MsrHandler, PortHandler, RangeMap};
use crate::error::{Error, Result};
use crate::irq::{InterruptController, IoEventAddress, VmShared};
use crate::kvm_setup;
use crate::loader::{self, LoadedImage};
use crate::memory::GuestRam;
use crate::serial::{SerialConsole, SerialOutput, COM1_GSI, COM1_PORTS};
use crate::stats::{ExitCounters, KvmStatsFile, StatsProbe, StatsSnapshot, VcpuStatSources};
use crate::vcpu::{install_kick_handler, VcpuControl, VcpuOutcome, VcpuRunner};

/// Default KVM device node.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// How to build a partition. Setters chain on `&mut self`; [`PartitionConfig::build`] may be called repeatedly.
#[derive(Clone)]
pub struct PartitionConfig {
    ram_bytes: u64,
    vcpus: u32,
    mode: BootMode,
    kvm_path: PathBuf,
    ports: Vec<(Range<u16>, Arc<dyn PortHandler>)>,
    mmio: Vec<(Range<u64>, Arc<dyn MmioHandler>)>,
    msr: Option<Arc<dyn MsrHandler>>,
    extra_cpuid: Vec<kvm_cpuid_entry2>,
    hide_kvm_leaves: bool,
    serial: bool,
    serial_echo: bool,
    stop_on_fault: bool,
    stop_on_exit: bool,
    elf: Option<ElfSource>,
}

/// Where [`PartitionConfig::build`] takes the guest ELF from.
#[derive(Clone)]
enum ElfSource {
    /// Read from this file at build time.
    File(PathBuf),
    /// These bytes (e.g. an image embedded with `include_bytes!`).
    Bytes(Cow<'static, [u8]>),
}

impl std::fmt::Debug for ElfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Bytes(image) => write!(f, "Bytes({} bytes)", image.len()),
        }
    }
}

impl std::fmt::Debug for PartitionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionConfig")
            .field("ram_bytes", &self.ram_bytes)
            .field("vcpus", &self.vcpus)
            .field("mode", &self.mode)
            .field("kvm_path", &self.kvm_path)
            .field(
                "ports",
                &self
                    .ports
                    .iter()
                    .map(|(r, _)| r.clone())
                    .collect::<Vec<_>>(),
            )
            .field(
                "mmio",
                &self.mmio.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
            )
            .field("msr_handler", &self.msr.is_some())
            .field("extra_cpuid", &self.extra_cpuid.len())
            .field("elf", &self.elf)
            .finish()
    }
}

impl PartitionConfig {
    /// `ram_bytes` of RAM (multiple of 4 KiB, at least 2 MiB) and `vcpus` vCPUs (1..=16), long mode, COM1 on.
    pub fn new(ram_bytes: u64, vcpus: u32) -> Self {
        Self {
            ram_bytes,
            vcpus,
            mode: BootMode::LongMode64,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            ports: Vec::new(),
            mmio: Vec::new(),
            msr: None,
            extra_cpuid: Vec::new(),
            hide_kvm_leaves: false,
            serial: true,
            serial_echo: false,
            stop_on_fault: true,
            stop_on_exit: false,
            elf: None,
        }
    }

    /// The CPU mode vCPUs start in.
    pub fn mode(&mut self, mode: BootMode) -> &mut Self {
        self.mode = mode;
        self
    }

    /// The KVM device node (default `/dev/kvm`).
    pub fn kvm_path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.kvm_path = path.into();
        self
    }

    /// Routes port I/O to `ports` (must not overlap other handlers, COM1 or [`crate::EXIT_PORT`]).
    pub fn add_port_handler(
        &mut self,
        ports: Range<u16>,
        handler: Arc<dyn PortHandler>,
    ) -> &mut Self {
        self.ports.push((ports, handler));
        self
    }

    /// Routes MMIO exits in `gpas` (not RAM, not the LAPIC/IOAPIC pages) to `handler`.
    pub fn add_mmio_handler(
        &mut self,
        gpas: Range<u64>,
        handler: Arc<dyn MmioHandler>,
    ) -> &mut Self {
        self.mmio.push((gpas, handler));
        self
    }

    /// Routes `rdmsr`/`wrmsr` of the handler's ranges to it (replacing any previous MSR handler). MSRs KVM does
    /// not know at all also exit to user space and raise #GP unless the handler owns them.
    pub fn set_msr_handler(&mut self, handler: Arc<dyn MsrHandler>) -> &mut Self {
        self.msr = Some(handler);
        self
    }

    /// CPUID entries overriding (same leaf and, where significant, subleaf) or adding to the host-supported
    /// table. Supplying any leaf in 0x40000000..=0x400000FF removes all of KVM's hypervisor leaves first.
    /// KVM's leaf 1 already has ECX bit 31 (hypervisor present).
    pub fn extra_cpuid(&mut self, entries: Vec<kvm_cpuid_entry2>) -> &mut Self {
        self.extra_cpuid.extend(entries);
        self
    }

    /// Removes KVM's hypervisor leaves (0x40000000..=0x400000FF, "KVMKVMKVM") even without replacements.
    pub fn hide_kvm_cpuid_leaves(&mut self) -> &mut Self {
        self.hide_kvm_leaves = true;
        self
    }

    /// Whether COM1 output is also copied to stderr (default off; the output is always captured).
    pub fn serial_echo(&mut self, echo: bool) -> &mut Self {
        self.serial_echo = echo;
        self
    }

    /// Leaves ports 0x3F8–0x3FF unclaimed (no COM1), e.g. for a custom UART handler.
    pub fn without_serial(&mut self) -> &mut Self {
        self.serial = false;
        self
    }

    /// Whether one vCPU faulting (shutdown, internal error, ...) stops the others (default true).
    pub fn stop_on_fault(&mut self, stop: bool) -> &mut Self {
        self.stop_on_fault = stop;
        self
    }

    /// Whether one vCPU exiting through the exit port ends the whole partition, as a power-off would: the
    /// other vCPUs end with [`VcpuOutcome::Stopped`] (default false: each vCPU exits on its own).
    pub fn stop_on_exit(&mut self, stop: bool) -> &mut Self {
        self.stop_on_exit = stop;
        self
    }

    /// The guest ELF loaded by [`PartitionConfig::build`], read from `path` at build time.
    pub fn elf_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.elf = Some(ElfSource::File(path.into()));
        self
    }

    /// The guest ELF loaded by [`PartitionConfig::build`], from memory: a binary that embeds its guest
    /// (`include_bytes!`) needs no file at run time. Replaces an earlier [`PartitionConfig::elf_file`].
    pub fn elf_bytes(&mut self, image: impl Into<Cow<'static, [u8]>>) -> &mut Self {
        self.elf = Some(ElfSource::Bytes(image.into()));
        self
    }

    fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::InvalidConfig(format!(
                "{} vCPUs (supported: 1..={MAX_VCPUS})",
                self.vcpus
            )));
        }
        if self.ram_bytes < MIN_RAM_BYTES {
            return Err(Error::InvalidConfig(format!(
                "{:#x} bytes of RAM (minimum {MIN_RAM_BYTES:#x})",
                self.ram_bytes
            )));
        }
        Ok(())
    }

    fn device_map(&self, serial: Option<Arc<SerialConsole>>) -> Result<DeviceMap> {
        let mut ports: RangeMap<u16, dyn PortHandler> = RangeMap::new();
        let exit = crate::vcpu::EXIT_PORT;
        if let Some(serial) = serial {
            ports
                .insert(COM1_PORTS, serial)
                .map_err(Error::InvalidConfig)?;
        }
        for (range, h) in &self.ports {
            if range.contains(&exit) {
                return Err(Error::InvalidConfig(format!(
                    "port range {range:?} includes the exit port {exit:#x}"
                )));
            }
            ports
                .insert(range.clone(), h.clone())
                .map_err(|e| Error::InvalidConfig(format!("port handler: {e}")))?;
        }
        let mut mmio: RangeMap<u64, dyn MmioHandler> = RangeMap::new();
        for (range, h) in &self.mmio {
            mmio.insert(range.clone(), h.clone())
                .map_err(|e| Error::InvalidConfig(format!("MMIO handler: {e}")))?;
        }
        let msr_ranges = self
            .msr
            .as_ref()
            .map(|h| h.msr_ranges())
            .unwrap_or_default();
        Ok(DeviceMap {
            ports,
            mmio,
            msr: self.msr.clone(),
            msr_ranges,
        })
    }

    /// Creates the VM, its RAM, irqchip, devices and vCPUs, and loads the ELF if one was configured.
    pub fn build(&self) -> Result<Partition> {
        self.validate()?;
        install_kick_handler()?;
        let (kvm, vm) = kvm_setup::open_kvm(&self.kvm_path)?;
        let ram = GuestRam::new(self.ram_bytes)?;
        for (slot, region) in ram.regions().iter().enumerate() {
            let mem = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.gpa,
                memory_size: region.len,
                userspace_addr: region.host_addr,
            };
            // SAFETY: the host range is a live mapping owned by `ram`; a clone of `ram` is stored next to the VM
            // fd in `VmShared` and dropped after it, so the mapping outlives every use by this VM.
            unsafe { vm.set_user_memory_region(mem) }
                .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        vm.create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        if let Some(msr) = &self.msr {
            kvm_setup::route_msrs_to_user_space(&vm, &msr.msr_ranges())?;
        }
        let vm_stats = KvmStatsFile::open(&vm)
            .map_err(|e| tracing::warn!("VM stats unavailable: {e}"))
            .ok();
        let irq = InterruptController::new(Arc::new(VmShared {
            vm,
            _ram: ram.clone(),
        }));
        let serial = if self.serial {
            let line = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Os {
                op: "eventfd",
                source,
            })?;
            irq.irqfd_gsi(&line, COM1_GSI)?;
            Some(Arc::new(SerialConsole::new(line, self.serial_echo)))
        } else {
            None
        };
        let devices = Arc::new(self.device_map(serial.clone())?);
        boot::write_boot_area(&ram, self.mode, self.vcpus)?;

        let cpuid = kvm_setup::merge_cpuid(
            &kvm_setup::host_cpuid(&kvm)?,
            &self.extra_cpuid,
            self.hide_kvm_leaves,
        );
        let mut pending = Vec::new();
        let mut stat_sources = Vec::new();
        let mut controls = Vec::new();
        for vp in 0..self.vcpus {
            let fd = create_vcpu(irq.vm(), vp, &cpuid, self.mode)?;
            let kvm_stats = KvmStatsFile::open(&fd)
                .map_err(|e| tracing::warn!("vCPU {vp} stats: {e}"))
                .ok();
            let counters = Arc::new(ExitCounters::default());
            let control = Arc::new(VcpuControl::default());
            stat_sources.push(VcpuStatSources {
                vp_index: vp,
                exits: counters.clone(),
                kvm: kvm_stats,
                control: control.clone(),
            });
            controls.push(control.clone());
            pending.push(VcpuRunner {
                vp_index: vp,
                fd,
                ram: ram.clone(),
                devices: devices.clone(),
                irq: irq.clone(),
                counters,
                control,
            });
        }
        let (done_tx, done_rx) = mpsc::channel();
        let mut partition = Partition {
            handles: Vec::new(),
            pending,
            stop: StopHandle {
                requested: Arc::new(AtomicBool::new(false)),
                controls: controls.into(),
            },
            done_tx,
            done_rx,
            stats: StatsProbe::new(vm_stats, stat_sources),
            serial,
            image: None,
            mode: self.mode,
            vcpus: self.vcpus,
            stop_on_fault: self.stop_on_fault,
            stop_on_exit: self.stop_on_exit,
            irq,
            ram,
            _kvm: kvm,
        };
        match &self.elf {
            Some(ElfSource::File(path)) => {
                partition.load_elf_file(path)?;
            }
            Some(ElfSource::Bytes(image)) => {
                partition.load_elf(image)?;
            }
            None => {}
        }
        Ok(partition)
    }
}

fn create_vcpu(vm: &VmFd, vp: u32, cpuid: &[kvm_cpuid_entry2], mode: BootMode) -> Result<VcpuFd> {
    let fd = vm
        .create_vcpu(u64::from(vp))
        .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    // CPUID first: KVM validates EFER.LME against the guest's CPUID when the special registers are set.
    fd.set_cpuid2(&kvm_setup::cpuid_for_vcpu(cpuid, vp)?)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    let mut sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    boot::setup_sregs(&mut sregs, mode, vp);
    fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    // Application processors would otherwise wait for INIT/SIPI.
    fd.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    Ok(fd)
}

/// Stops a running partition from any thread. Clones share the partition.
#[derive(Debug, Clone)]
pub struct StopHandle {
    requested: Arc<AtomicBool>,
    controls: Arc<[Arc<VcpuControl>]>,
}

impl StopHandle {
    /// Asks every vCPU to stop and kicks it out of KVM_RUN; vCPUs end with [`VcpuOutcome::Stopped`].
    pub fn stop(&self) {
        self.requested.store(true, Ordering::Release);
        for c in self.controls.iter() {
            c.stop.store(true, Ordering::Release);
            c.kick();
        }
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// A KVM partition. Dropping it stops and joins its vCPU threads.
pub struct Partition {
    handles: Vec<JoinHandle<VcpuOutcome>>,
    pending: Vec<VcpuRunner>,
    stop: StopHandle,
    done_tx: Sender<u32>,
    done_rx: Receiver<u32>,
    stats: StatsProbe,
    serial: Option<Arc<SerialConsole>>,
    image: Option<LoadedImage>,
    mode: BootMode,
    vcpus: u32,
    stop_on_fault: bool,
    stop_on_exit: bool,
    irq: InterruptController,
    ram: GuestRam,
    _kvm: Kvm,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("vcpus", &self.vcpus)
            .field("mode", &self.mode)
            .field("ram", &self.ram)
            .field("image", &self.image)
            .field("running", &self.handles.len())
            .finish()
    }
}

impl Partition {
    /// Guest RAM (cheap clones share it).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> u32 {
        self.vcpus
    }

    /// The VM fd, for ioctls not wrapped here.
    pub fn vm_fd(&self) -> &VmFd {
        self.irq.vm()
    }

    /// Interrupt injection and fast-path registration, usable from any thread.
    pub fn interrupts(&self) -> InterruptController {
        self.irq.clone()
    }

    /// See [`InterruptController::register_ioeventfd`].
    pub fn register_ioeventfd(
        &self,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<EventFd> {
        self.irq.register_ioeventfd(addr, len, datamatch)
    }

    /// See [`InterruptController::signal_msi`].
    pub fn signal_msi(&self, apic_id: u32, vector: u8) -> Result<bool> {
        self.irq.signal_msi(apic_id, vector)
    }

    /// See [`InterruptController::irqfd_msi`].
    pub fn irqfd_msi(&self, apic_id: u32, vector: u8) -> Result<EventFd> {
        self.irq.irqfd_msi(apic_id, vector)
    }

    /// COM1's captured output (empty handle if the partition has no COM1).
    pub fn serial_output(&self) -> SerialOutput {
        self.serial.as_ref().map(|s| s.output()).unwrap_or_default()
    }

    /// The COM1 device, e.g. to queue input.
    pub fn serial(&self) -> Option<&Arc<SerialConsole>> {
        self.serial.as_ref()
    }

    /// A handle that stops this partition from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Stops all vCPUs (they end with [`VcpuOutcome::Stopped`]); [`Partition::join`] collects them.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// The guest image loaded so far.
    pub fn image(&self) -> Option<&LoadedImage> {
        self.image.as_ref()
    }

    /// Loads a guest ELF (PT_LOAD segments at their physical addresses, .bss zeroed); its entry point is where
    /// every vCPU starts.
    pub fn load_elf(&mut self, image: &[u8]) -> Result<LoadedImage> {
        let li = loader::load_elf(&self.ram, image)?;
        self.image = Some(li.clone());
        Ok(li)
    }

    /// Reads and loads a guest ELF file.
    pub fn load_elf_file(&mut self, path: impl AsRef<Path>) -> Result<LoadedImage> {
        let li = loader::load_elf_file(&self.ram, path.as_ref())?;
        self.image = Some(li.clone());
        Ok(li)
    }

    /// Accounting now: user exits per vCPU and reason, KVM statistics per vCPU and VM.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// A cloneable handle that takes [`Partition::stats`] snapshots from any thread — e.g. from a port
    /// handler, to delimit a measured window at an exact point of the guest's execution.
    pub fn stats_probe(&self) -> StatsProbe {
        self.stats.clone()
    }

    /// Starts one host thread per vCPU at the image's entry point.
    pub fn start(&mut self) -> Result<()> {
        let entry = self
            .image
            .as_ref()
            .map(|i| i.entry)
            .ok_or(Error::State("no guest image loaded"))?;
        if self.pending.is_empty() {
            return Err(Error::State("partition already started"));
        }
        let ram_bytes = self.ram.size();
        for runner in self.pending.drain(..) {
            let vp = runner.vp_index;
            let regs = boot::initial_regs(entry, vp, self.vcpus, ram_bytes, self.mode);
            if let Err(source) = runner.fd.set_regs(&regs) {
                self.stop.stop();
                return Err(Error::Kvm {
                    op: "KVM_SET_REGS",
                    source,
                });
            }
            let done = self.done_tx.clone();
            let stop = self.stop.clone();
            let (stop_on_fault, stop_on_exit) = (self.stop_on_fault, self.stop_on_exit);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{vp}"))
                .spawn(move || {
                    let outcome = runner.run();
                    let exited = matches!(outcome, VcpuOutcome::Exited { .. });
                    let normal = exited || matches!(outcome, VcpuOutcome::Stopped);
                    if (stop_on_fault && !normal) || (stop_on_exit && exited) {
                        stop.stop();
                    }
                    // The receiver lives in the partition, which joins this thread before dropping it.
                    let _ = done.send(vp);
                    outcome
                });
            match spawned {
                Ok(h) => self.handles.push(h),
                Err(source) => {
                    self.stop.stop();
                    return Err(Error::Os {
                        op: "spawning a vCPU thread",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Waits for every vCPU to end and returns their outcomes in VP-index order.
    pub fn join(&mut self) -> Vec<VcpuOutcome> {
        self.join_deadline(None)
    }

    /// Like [`Partition::join`], but stops the partition once `timeout` has passed.
    pub fn join_timeout(&mut self, timeout: Duration) -> Vec<VcpuOutcome> {
        self.join_deadline(Some(Instant::now() + timeout))
    }

    /// [`Partition::start`] then [`Partition::join`].
    pub fn run(&mut self) -> Result<Vec<VcpuOutcome>> {
        self.start()?;
        Ok(self.join())
    }

    /// [`Partition::start`] then [`Partition::join_timeout`].
    pub fn run_timeout(&mut self, timeout: Duration) -> Result<Vec<VcpuOutcome>> {
        self.start()?;
        Ok(self.join_timeout(timeout))
    }

    fn join_deadline(&mut self, deadline: Option<Instant>) -> Vec<VcpuOutcome> {
        loop {
            if self.handles.iter().all(|h| h.is_finished()) {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) && !self.stop.is_stopped() {
                tracing::debug!("join deadline passed: stopping the partition");
                self.stop.stop();
            }
            if self.stop.is_stopped() {
                // Re-kick: a kick that lands between a vCPU's stop check and its KVM_RUN is otherwise lost.
                for c in self.stop.controls.iter() {
                    c.kick();
                }
            }
            let wait = if self.stop.is_stopped() {
                Duration::from_millis(2)
            } else {
                Duration::from_millis(20)
            };
            let _ = self.done_rx.recv_timeout(wait);
        }
        std::mem::take(&mut self.handles)
            .into_iter()
            .map(|h| match h.join() {
                Ok(outcome) => outcome,
                Err(_) => VcpuOutcome::Failed {
                    error: Error::State("vCPU thread panicked"),
                },
            })
            .collect()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.stop.stop();
            self.join();
        }
    }
}
