//! One vCPU: the context handed to device handlers ([`VcpuCtx`]), the run loop that dispatches every KVM_RUN
//! return (port I/O, MMIO, MSR exits) to registered handlers and counts it, the typed outcome a vCPU ends with
//! ([`VcpuOutcome`], carrying guest registers for faults), and the signal-based kick that stops a vCPU blocked
//! in KVM_RUN from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::DeviceMap;
use crate::error::{Error, Result};
use crate::irq::InterruptController;
use crate::memory::GuestRam;
use crate::stats::{ExitCounters, ExitReason};

/// Port a guest writes (any width) to end its vCPU with [`VcpuOutcome::Exited`] carrying the value written.
pub const EXIT_PORT: u16 = 0xF4;

/// What a device handler may do with the vCPU whose exit it is handling.
pub struct VcpuCtx<'a> {
    vp_index: u32,
    fd: &'a VcpuFd,
    ram: &'a GuestRam,
    irq: &'a InterruptController,
    exit_code: Option<u32>,
}

impl fmt::Debug for VcpuCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuCtx")
            .field("vp_index", &self.vp_index)
            .finish()
    }
}

impl<'a> VcpuCtx<'a> {
    pub(crate) fn new(
        vp_index: u32,
        fd: &'a VcpuFd,
        ram: &'a GuestRam,
        irq: &'a InterruptController,
    ) -> Self {
        Self {
            vp_index,
            fd,
            ram,
            irq,
            exit_code: None,
        }
    }

    /// The VP index of this vCPU (also its APIC id and KVM vCPU id).
    pub fn vp_index(&self) -> u32 {
        self.vp_index
    }

    /// General-purpose registers (KVM_GET_REGS).
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))
    }

    /// Sets the general-purpose registers (KVM_SET_REGS); they take effect when the vCPU resumes.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(Error::kvm("KVM_SET_REGS"))
    }

    /// Special registers (KVM_GET_SREGS).
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))
    }

    /// Sets the special registers (KVM_SET_SREGS).
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd
            .set_sregs(sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))
    }

    /// The vCPU fd itself, for ioctls not wrapped here (LAPIC state, MSRs, events).
    pub fn fd(&self) -> &VcpuFd {
        self.fd
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        self.ram
    }

    /// Interrupt injection (MSIs to any vCPU).
    pub fn interrupts(&self) -> &InterruptController {
        self.irq
    }

    /// Ends this vCPU after the current exit with [`VcpuOutcome::Exited`] carrying `code`.
    pub fn exit_vcpu(&mut self, code: u32) {
        self.exit_code = Some(code);
    }
}

/// Guest registers at the moment a vCPU stopped abnormally.
#[derive(Clone, Default)]
pub struct GuestState {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Special registers (segments, CR0/2/3/4, EFER, ...).
    pub sregs: kvm_sregs,
}

impl GuestState {
    fn capture(fd: &VcpuFd) -> Self {
        Self {
            regs: fd.get_regs().unwrap_or_default(),
            sregs: fd.get_sregs().unwrap_or_default(),
        }
    }
}

impl fmt::Debug for GuestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for GuestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, s) = (&self.regs, &self.sregs);
        write!(
            f,
            "RIP={:#x} RSP={:#x} RFLAGS={:#x} RAX={:#x} RCX={:#x} RDX={:#x} RDI={:#x} CS={:#x} \
             CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x} IDT={:#x}/{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rcx,
            r.rdx,
            r.rdi,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit
        )
    }
}

/// How a vCPU ended.
#[derive(Debug)]
pub enum VcpuOutcome {
    /// The guest wrote `code` to [`EXIT_PORT`] (or a handler called [`VcpuCtx::exit_vcpu`]).
    Exited {
        /// The value written.
        code: u32,
    },
    /// The partition was stopped (stop request or join timeout).
    Stopped,
    /// The vCPU halted in user space (only possible without an in-kernel LAPIC).
    Halted(GuestState),
    /// Shutdown: a triple fault.
    Shutdown(GuestState),
    /// KVM could not continue, e.g. the instruction emulator failed.
    InternalError {
        /// KVM_INTERNAL_ERROR_* sub-error.
        suberror: u32,
        /// Extra data KVM supplied.
        data: Vec<u64>,
        /// Registers at the error.
        state: GuestState,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Registers at the failure.
        state: GuestState,
    },
    /// A system event (reset, shutdown, crash) was requested.
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
        /// Event data.
        data: Vec<u64>,
        /// Registers at the event.
        state: GuestState,
    },
    /// An exit this layer does not handle.
    Unexpected {
        /// The exit, as debug text.
        exit: String,
        /// Registers at the exit.
        state: GuestState,
    },
    /// KVM_RUN (or thread setup) failed.
    Failed {
        /// The error.
        error: Error,
    },
}

impl VcpuOutcome {
    /// The exit code if the guest exited through [`EXIT_PORT`].
    pub fn exit_code(&self) -> Option<u32> {
        match self {
            Self::Exited { code } => Some(*code),
            _ => None,
        }
    }

    /// Guest registers, for outcomes that carry them.
    pub fn state(&self) -> Option<&GuestState> {
        match self {
            Self::Halted(s) | Self::Shutdown(s) => Some(s),
            Self::InternalError { state, .. }
            | Self::FailEntry { state, .. }
            | Self::SystemEvent { state, .. }
            | Self::Unexpected { state, .. } => Some(state),
            _ => None,
        }
    }
}

/// Cross-thread control of one vCPU thread.
#[derive(Debug, Default)]
pub(crate) struct VcpuControl {
    pub(crate) stop: AtomicBool,
    /// The thread running the vCPU, while it runs. Cleared (under the lock) before the thread ends, so a kicker
    /// holding the lock never signals a dead thread.
    thread: Mutex<Option<libc::pthread_t>>,
    /// The thread's CPU clock while it runs, else the CPU time it had used when it ended (zero before it
    /// started). Replaced under the lock by the ending thread itself, so a reader never reads a dead
    /// thread's clock.
    cpu: Mutex<ThreadCpu>,
}

/// [`VcpuControl::cpu_time`]'s source.
#[derive(Debug, Clone, Copy)]
enum ThreadCpu {
    Running(libc::clockid_t),
    Ended(Duration),
}

impl Default for ThreadCpu {
    fn default() -> Self {
        Self::Ended(Duration::ZERO)
    }
}

/// CPU time of the clock `clock` (`None` if it cannot be read).
fn read_cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and clock_gettime writes nothing else.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

impl VcpuControl {
    /// CPU time the vCPU's thread has used: so far while it runs, all of it once it ended, zero before
    /// it started (`CLOCK_THREAD_CPUTIME_ID` of that thread, through `pthread_getcpuclockid`).
    pub(crate) fn cpu_time(&self) -> Duration {
        match *self.cpu.lock().unwrap_or_else(PoisonError::into_inner) {
            ThreadCpu::Running(clock) => read_cpu_clock(clock).unwrap_or_default(),
            ThreadCpu::Ended(total) => total,
        }
    }

    /// Interrupts KVM_RUN on the vCPU thread (if it is running) with the kick signal.
    pub(crate) fn kick(&self) {
        let guard = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = *guard {
            // SAFETY: `thread` is alive: the vCPU thread clears this slot under the same lock before it exits.
            // The kick signal has a no-op handler installed by `install_kick_handler`.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}

/// Registers/unregisters the current thread in a [`VcpuControl`] for its lifetime.
struct ThreadRegistration<'a>(&'a VcpuControl);

impl<'a> ThreadRegistration<'a> {
    fn new(control: &'a VcpuControl) -> Self {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *control
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(me);
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `me` is the calling thread's valid handle and `clock` a valid out-pointer the call
        // writes only on success.
        if unsafe { libc::pthread_getcpuclockid(me, &mut clock) } == 0 {
            *control.cpu.lock().unwrap_or_else(PoisonError::into_inner) = ThreadCpu::Running(clock);
        }
        Self(control)
    }
}

impl Drop for ThreadRegistration<'_> {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let mut cpu = self.0.cpu.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock, so no reader saw more than this.
        *cpu = ThreadCpu::Ended(read_cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default());
    }
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (no-op) kick handler once per process; KVM_RUN then returns EINTR when kicked.
pub(crate) fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    static FAILED: Mutex<Option<i32>> = Mutex::new(None);
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            *FAILED.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.errno());
        }
    });
    match *FAILED.lock().unwrap_or_else(PoisonError::into_inner) {
        Some(errno) => Err(Error::Os {
            op: "installing the vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(errno),
        }),
        None => Ok(()),
    }
}

/// Largest port-I/O transfer (string I/O fills at most one page of kvm_run).
const MAX_IO: usize = 4096;

/// Everything a vCPU thread owns.
pub(crate) struct VcpuRunner {
    pub(crate) vp_index: u32,
    pub(crate) fd: VcpuFd,
    pub(crate) ram: GuestRam,
    pub(crate) devices: Arc<DeviceMap>,
    pub(crate) irq: InterruptController,
    pub(crate) counters: Arc<ExitCounters>,
    pub(crate) control: Arc<VcpuControl>,
}

enum Step {
    Continue,
    Done(Box<VcpuOutcome>),
}

impl VcpuRunner {
    /// Runs the vCPU until it exits, faults or is stopped.
    pub(crate) fn run(mut self) -> VcpuOutcome {
        let control = self.control.clone();
        let _registration = ThreadRegistration::new(&control);
        loop {
            if control.stop.load(Ordering::Acquire) {
                return VcpuOutcome::Stopped;
            }
            if let Step::Done(outcome) = self.step() {
                return *outcome;
            }
        }
    }

    fn ctx(&self) -> VcpuCtx<'_> {
        VcpuCtx::new(self.vp_index, &self.fd, &self.ram, &self.irq)
    }

    fn finish(ctx: VcpuCtx<'_>) -> Step {
        match ctx.exit_code {
            Some(code) => Step::Done(Box::new(VcpuOutcome::Exited { code })),
            None => Step::Continue,
        }
    }

    /// One KVM_RUN and the handling of its exit.
    fn step(&mut self) -> Step {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.counters.record(ExitReason::Interrupted);
                return Step::Continue;
            }
            Err(e) => {
                self.counters.record(ExitReason::Other);
                return Step::Done(Box::new(VcpuOutcome::Failed {
                    error: Error::Kvm {
                        op: "KVM_RUN",
                        source: e,
                    },
                }));
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                self.counters.record(ExitReason::Io);
                let mut buf = [0u8; MAX_IO];
                let len = data.len().min(MAX_IO);
                buf[..len].copy_from_slice(&data[..len]);
                if port == EXIT_PORT {
                    let mut code = [0u8; 4];
                    let n = len.min(4);
                    code[..n].copy_from_slice(&buf[..n]);
                    return Step::Done(Box::new(VcpuOutcome::Exited {
                        code: u32::from_le_bytes(code),
                    }));
                }
                let mut ctx = self.ctx();
                match self.devices.ports.get(port) {
                    Some(h) => h.write(&mut ctx, port, &buf[..len]),
                    None => tracing::trace!(vp = self.vp_index, port, "write to unclaimed port"),
                }
                Self::finish(ctx)
            }
            VcpuExit::IoIn(port, data) => {
                self.counters.record(ExitReason::Io);
                let (ptr, len) = (data.as_mut_ptr(), data.len().min(MAX_IO));
                let mut buf = [0xFFu8; MAX_IO];
                let mut ctx = self.ctx();
                if let Some(h) = self.devices.ports.get(port) {
                    h.read(&mut ctx, port, &mut buf[..len]);
                }
                // SAFETY: `ptr` points at the I/O data area inside this vCPU's kvm_run mapping, which lives as long
                // as `self.fd`; `len` is at most the length KVM reported. No Rust reference to that area exists
                // now (the exit borrow ended), and the area is only read by KVM on the next KVM_RUN.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr, len) };
                Self::finish(ctx)
            }
            VcpuExit::MmioWrite(gpa, data) => {
                self.counters.record(ExitReason::Mmio);
                let mut buf = [0u8; 8];
                let len = data.len().min(8);
                buf[..len].copy_from_slice(&data[..len]);
                let mut ctx = self.ctx();
                match self.devices.mmio.get(gpa) {
                    Some(h) => h.write(&mut ctx, gpa, &buf[..len]),
                    None => tracing::trace!(vp = self.vp_index, gpa, "write to unclaimed MMIO"),
                }
                Self::finish(ctx)
            }
            VcpuExit::MmioRead(gpa, data) => {
                self.counters.record(ExitReason::Mmio);
                let (ptr, len) = (data.as_mut_ptr(), data.len().min(8));
                let mut buf = [0xFFu8; 8];
                let mut ctx = self.ctx();
                if let Some(h) = self.devices.mmio.get(gpa) {
                    h.read(&mut ctx, gpa, &mut buf[..len]);
                }
                // SAFETY: `ptr` is the `mmio.data` array (8 bytes) in this vCPU's kvm_run mapping, alive with
                // `self.fd`; `len <= 8`; no reference to it exists after the exit borrow ended.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr, len) };
                Self::finish(ctx)
            }
            VcpuExit::X86Rdmsr(exit) => {
                self.counters.record(ExitReason::MsrRead);
                let (msr, data, error) = (exit.index, exit.data as *mut u64, exit.error as *mut u8);
                let mut ctx = self.ctx();
                let value = match &self.devices.msr {
                    Some(h) if self.devices.msr_owned(msr) => h.rdmsr(&mut ctx, msr),
                    _ => None,
                };
                // SAFETY: `data`/`error` point into the `msr` member of this vCPU's kvm_run mapping (alive with
                // `self.fd`), properly aligned as KVM laid them out; no reference to them is live any more.
                unsafe {
                    data.write(value.unwrap_or(0));
                    error.write(u8::from(value.is_none()));
                }
                Self::finish(ctx)
            }
            VcpuExit::X86Wrmsr(exit) => {
                self.counters.record(ExitReason::MsrWrite);
                let (msr, value, error) = (exit.index, exit.data, exit.error as *mut u8);
                let mut ctx = self.ctx();
                let ok = match &self.devices.msr {
                    Some(h) if self.devices.msr_owned(msr) => h.wrmsr(&mut ctx, msr, value),
                    _ => false,
                };
                // SAFETY: as for rdmsr: `error` points into this vCPU's live kvm_run mapping, no reference is live.
                unsafe { error.write(u8::from(!ok)) };
                Self::finish(ctx)
            }
            VcpuExit::Hlt => {
                self.counters.record(ExitReason::Hlt);
                Step::Done(Box::new(VcpuOutcome::Halted(GuestState::capture(&self.fd))))
            }
            VcpuExit::Shutdown => {
                self.counters.record(ExitReason::Shutdown);
                Step::Done(Box::new(VcpuOutcome::Shutdown(GuestState::capture(
                    &self.fd,
                ))))
            }
            VcpuExit::FailEntry(reason, _cpu) => {
                self.counters.record(ExitReason::FailEntry);
                Step::Done(Box::new(VcpuOutcome::FailEntry {
                    reason,
                    state: GuestState::capture(&self.fd),
                }))
            }
            VcpuExit::InternalError => {
                self.counters.record(ExitReason::InternalError);
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the `internal` member.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                let data = internal.data[..n].to_vec();
                let state = GuestState::capture(&self.fd);
                Step::Done(Box::new(VcpuOutcome::InternalError {
                    suberror: internal.suberror,
                    data,
                    state,
                }))
            }
            VcpuExit::SystemEvent(kind, data) => {
                self.counters.record(ExitReason::SystemEvent);
                let data = data.to_vec();
                Step::Done(Box::new(VcpuOutcome::SystemEvent {
                    kind,
                    data,
                    state: GuestState::capture(&self.fd),
                }))
            }
            VcpuExit::Intr => {
                self.counters.record(ExitReason::Interrupted);
                Step::Continue
            }
            other => {
                let exit = format!("{other:?}");
                self.counters.record(ExitReason::Other);
                Step::Done(Box::new(VcpuOutcome::Unexpected {
                    exit,
                    state: GuestState::capture(&self.fd),
                }))
            }
        }
    }
}
