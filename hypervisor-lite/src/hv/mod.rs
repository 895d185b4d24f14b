//! Hyper-V enlightenment surface emulated in user space, for a KVM without Hyper-V support.
//!
//! [`HvPartition`] is the partition-level object: it owns the synthetic MSR state (partition-wide hypercall MSRs,
//! per-VP VP assist page and SynIC), the connection table (HvPostMessage handlers and HvSignalEvent event fds per
//! connection id) and the host-side API to post SynIC messages and signal events. It reaches KVM only through
//! [`HvPlatform`] (MSI injection, ioeventfd doorbells), which the partition glue provides.
//!
//! Both x86 calling conventions are served by the same hypercall page: 64-bit callers pass RCX/RDX/R8 and get RAX,
//! 32-bit callers (protected or compatibility mode) pass EDX:EAX control, EBX:ECX input GPA (or fast argument) and
//! EDI:ESI output GPA, and get the result in EDX:EAX. The convention is decided per call from the vCPU's EFER.LMA
//! and CS.L at the trap ([`abi`]), so a guest may switch modes at any time.
//!
//! Modules: [`cpuid`] (synthetic CPUID leaves), [`devices`] (MSR/port handlers, platform glue), [`msr`] (MSR
//! numbers, hypercall MSRs), [`hypercall`] (page code, dispatch), [`abi`] (register conventions, result value),
//! [`synic`] (per-VP SynIC).

pub mod abi;
pub mod cpuid;
pub mod devices;
pub mod hypercall;
pub mod msr;
pub mod synic;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use kvm_bindings::kvm_cpuid_entry2;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestRam;

use self::cpuid::HvCpuidConfig;
use self::hypercall::{
    HvStatus, HypercallPorts, HypercallRegs, HypercallTarget, CONNECTION_ID_MASK,
};
use self::msr::{HypercallMsrs, MsrError, SyntheticMsr, PAGE_GPA_MASK};
use self::synic::{Delivery, EventDelivery, SynicError, SynicVp};

/// Handler of HvPostMessage for one connection id: `(vp, message_type, payload) -> status`. Runs on the posting
/// vCPU's thread: it must not block on the guest. Return [`HvStatus::INSUFFICIENT_BUFFERS`] when full.
pub type PostMessageHandler = Arc<dyn Fn(u32, u32, &[u8]) -> HvStatus + Send + Sync>;

/// What the enlightenments need from the KVM partition.
pub trait HvPlatform: Send + Sync {
    /// Injects a fixed, edge-triggered MSI with `vector` to the local APIC `apic_id`.
    fn signal_msi(&self, apic_id: u32, vector: u8) -> std::io::Result<()>;
    /// Registers a 4-byte KVM_IOEVENTFD on `port` matching `datamatch` and returns its event fd.
    fn register_doorbell(&self, port: u16, datamatch: u32) -> std::io::Result<EventFd>;
}

/// Partition-level configuration of the enlightenments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvConfig {
    /// Number of VPs; VP index = APIC id = 0..vp_count.
    pub vp_count: u32,
    /// Ports of the hypercall page.
    pub ports: HypercallPorts,
    /// Bound of each VP×SINT message queue.
    pub queue_depth: usize,
}

impl HvConfig {
    /// Default ports and queue depth for `vp_count` VPs.
    pub fn new(vp_count: u32) -> Self {
        Self {
            vp_count,
            ports: hypercall::DEFAULT_PORTS,
            queue_depth: synic::DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// Errors of the host-side API.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// A SynIC argument error or a full queue.
    #[error(transparent)]
    Synic(#[from] SynicError),
    /// The connection id has reserved bits (24–31) set.
    #[error("connection id {0:#x} has reserved bits set")]
    InvalidConnectionId(u32),
    /// A handler or event is already registered for the connection id.
    #[error("connection id {0:#x} already has a registration")]
    ConnectionInUse(u32),
    /// [`HvPartition::attach`] was not called yet (or was called twice).
    #[error("the enlightenments are not attached to a partition (or were attached twice)")]
    NotAttached,
    /// A platform call failed.
    #[error("platform operation failed")]
    Io(#[from] std::io::Error),
}

/// Counters of the enlightenment surface (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvStats {
    /// Hypercalls trapped on the hypercall port.
    pub hypercall_exits: u64,
    /// Doorbell writes that reached user space (connection id without an ioeventfd).
    pub doorbell_exits: u64,
    /// Guest HvPostMessage calls that reached a handler.
    pub guest_messages: u64,
    /// Guest HvSignalEvent calls completed in user space (slow form or unregistered doorbell).
    pub guest_signals: u64,
    /// SINT interrupts injected.
    pub interrupts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hypercall_exits: AtomicU64,
    doorbell_exits: AtomicU64,
    guest_messages: AtomicU64,
    guest_signals: AtomicU64,
    interrupts: AtomicU64,
}

#[derive(Debug)]
struct VpState {
    vp_assist_page: u64,
    synic: SynicVp,
}

/// The connection table, the target of guest hypercalls.
#[derive(Default)]
struct Connections {
    post: RwLock<HashMap<u32, PostMessageHandler>>,
    events: RwLock<HashMap<u32, EventFd>>,
}

/// What [`HvPartition::attach`] supplies once the KVM partition exists.
struct Attachment {
    ram: GuestRam,
    platform: Arc<dyn HvPlatform>,
}

/// The Hyper-V enlightenments of one partition. Thread-safe: vCPU threads call the MSR and hypercall entry points
/// while host worker threads post messages and signal events.
///
/// Lifecycle: [`HvPartition::new`] before the partition is built (it is the partition's MSR and port handler),
/// then [`HvPartition::attach`] with the partition's RAM and interrupt controller before the vCPUs start.
pub struct HvPartition {
    config: HvConfig,
    attached: OnceLock<Attachment>,
    msrs: Mutex<HypercallMsrs>,
    vps: Vec<Mutex<VpState>>,
    connections: Connections,
    counters: Counters,
    created: std::time::Instant,
}

impl fmt::Debug for HvPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HvPartition")
            .field("config", &self.config)
            .field("attached", &self.attached.get().is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the state half-updated in a way later calls rely on
    // (every update is a single assignment or queue operation), so recover from poisoning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HvPartition {
    /// Enlightenments for a partition with `config.vp_count` VPs; [`HvPartition::attach`] before running it.
    pub fn new(config: HvConfig) -> Arc<Self> {
        let vps = (0..config.vp_count)
            .map(|vp| {
                Mutex::new(VpState {
                    vp_assist_page: 0,
                    synic: SynicVp::new(vp, config.queue_depth),
                })
            })
            .collect();
        Arc::new(Self {
            config,
            attached: OnceLock::new(),
            msrs: Mutex::new(HypercallMsrs::default()),
            vps,
            connections: Connections::default(),
            counters: Counters::default(),
            created: std::time::Instant::now(),
        })
    }

    /// The partition reference counter (what the guest reads from TIME_REF_COUNT): 100 ns units since the
    /// partition was created, monotonic.
    pub fn reference_time(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos() / 100).unwrap_or(u64::MAX)
    }

    /// The configuration.
    pub fn config(&self) -> &HvConfig {
        &self.config
    }

    /// Connects the enlightenments to the KVM partition's RAM and interrupt controller (once, after the partition
    /// is built and before its vCPUs run).
    pub fn attach(&self, ram: GuestRam, platform: Arc<dyn HvPlatform>) -> Result<(), HvError> {
        self.attached
            .set(Attachment { ram, platform })
            .map_err(|_| HvError::NotAttached)
    }

    fn ram(&self) -> Option<&GuestRam> {
        self.attached.get().map(|a| &a.ram)
    }

    /// The synthetic CPUID leaves 0x40000000–0x40000005 for this partition.
    pub fn cpuid_leaves(&self) -> Vec<kvm_cpuid_entry2> {
        cpuid::hv_cpuid_leaves(&self.cpuid_config())
    }

    /// Parameters for [`cpuid::apply_hv_cpuid`].
    pub fn cpuid_config(&self) -> HvCpuidConfig {
        HvCpuidConfig {
            vp_count: self.config.vp_count,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HvStats {
        let c = &self.counters;
        HvStats {
            hypercall_exits: c.hypercall_exits.load(Ordering::Relaxed),
            doorbell_exits: c.doorbell_exits.load(Ordering::Relaxed),
            guest_messages: c.guest_messages.load(Ordering::Relaxed),
            guest_signals: c.guest_signals.load(Ordering::Relaxed),
            interrupts: c.interrupts.load(Ordering::Relaxed),
        }
    }

    /// Whether the guest has enabled the hypercall page.
    pub fn hypercall_page_enabled(&self) -> bool {
        lock(&self.msrs).hypercall_enabled()
    }

    fn vp(&self, vp: u32) -> Option<&Mutex<VpState>> {
        self.vps.get(vp as usize)
    }

    fn inject(&self, vp: u32, vector: u8) {
        let Some(attached) = self.attached.get() else {
            tracing::error!(vp, vector, "SINT interrupt lost: not attached");
            return;
        };
        match attached.platform.signal_msi(vp, vector) {
            Ok(()) => {
                self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(vp, vector, error = %e, "SINT interrupt injection failed"),
        }
    }

    /// Guest RDMSR of a synthetic MSR on `vp`. `Err` = #GP.
    pub fn rdmsr(&self, vp: u32, msr: u32) -> Result<u64, MsrError> {
        let state = self.vp(vp).ok_or(MsrError::InvalidVp(vp))?;
        let decoded = SyntheticMsr::from_index(msr).ok_or_else(|| {
            tracing::debug!(vp, msr, "RDMSR of an unimplemented synthetic MSR");
            MsrError::Unknown(msr)
        })?;
        Ok(match decoded {
            SyntheticMsr::GuestOsId => lock(&self.msrs).guest_os_id(),
            SyntheticMsr::Hypercall => lock(&self.msrs).hypercall(),
            SyntheticMsr::VpIndex => u64::from(vp),
            SyntheticMsr::TimeRefCount => self.reference_time(),
            SyntheticMsr::VpAssistPage => lock(state).vp_assist_page,
            other => lock(state)
                .synic
                .read_msr(other)
                .ok_or(MsrError::Unknown(msr))?,
        })
    }

    /// Guest WRMSR of a synthetic MSR on `vp`. `Err` = #GP. May inject SINT interrupts (EOM redelivery).
    pub fn wrmsr(&self, vp: u32, msr: u32, value: u64) -> Result<(), MsrError> {
        let state = self.vp(vp).ok_or(MsrError::InvalidVp(vp))?;
        let decoded = SyntheticMsr::from_index(msr).ok_or_else(|| {
            tracing::debug!(vp, msr, value, "WRMSR of an unimplemented synthetic MSR");
            MsrError::Unknown(msr)
        })?;
        let ram = self.ram().ok_or(MsrError::NotAttached)?;
        let vectors = match decoded {
            SyntheticMsr::GuestOsId => {
                lock(&self.msrs).write_guest_os_id(value);
                Vec::new()
            }
            SyntheticMsr::Hypercall => {
                lock(&self.msrs).write_hypercall(ram, self.config.ports, value)?;
                Vec::new()
            }
            SyntheticMsr::VpIndex | SyntheticMsr::TimeRefCount => {
                return Err(MsrError::ReadOnly(msr))
            }
            SyntheticMsr::VpAssistPage => {
                // Accepted and read back; with no enlightenment using it there is nothing to map.
                lock(state).vp_assist_page = value & (PAGE_GPA_MASK | 1);
                Vec::new()
            }
            other => lock(state).synic.write_msr(ram, other, value)?,
        };
        for vector in vectors {
            self.inject(vp, vector);
        }
        Ok(())
    }

    /// A hypercall trapped on the hypercall port of `vp` (control, input and output as [`abi`] decodes them from
    /// the caller's registers). Returns the status of the result value.
    pub fn hypercall(&self, vp: u32, regs: HypercallRegs) -> HvStatus {
        self.counters
            .hypercall_exits
            .fetch_add(1, Ordering::Relaxed);
        let Some(ram) = self.ram() else {
            tracing::error!(vp, "hypercall before the enlightenments were attached");
            return HvStatus::INVALID_HYPERCALL_CODE;
        };
        if !self.hypercall_page_enabled() {
            // The port is only reachable through our page; a guest poking it directly gets what Hyper-V gives a
            // partition without hypercalls enabled: no such call.
            tracing::warn!(
                vp,
                "hypercall port used while the hypercall page is disabled"
            );
            return HvStatus::INVALID_HYPERCALL_CODE;
        }
        hypercall::dispatch(ram, vp, regs, self)
    }

    /// A doorbell write that reached user space (its connection id has no ioeventfd). Returns the status for the
    /// page's status register (R11 or ECX).
    pub fn doorbell(&self, vp: u32, connection_id: u32) -> HvStatus {
        self.counters.doorbell_exits.fetch_add(1, Ordering::Relaxed);
        hypercall::signal_event_arg(vp, u64::from(connection_id), self)
    }

    fn check_connection_id(connection_id: u32) -> Result<(), HvError> {
        if connection_id & !CONNECTION_ID_MASK != 0 {
            return Err(HvError::InvalidConnectionId(connection_id));
        }
        Ok(())
    }

    /// Registers the HvPostMessage handler of `connection_id`.
    pub fn register_post_message(
        &self,
        connection_id: u32,
        handler: PostMessageHandler,
    ) -> Result<(), HvError> {
        Self::check_connection_id(connection_id)?;
        let mut post = self
            .connections
            .post
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if post.contains_key(&connection_id) {
            return Err(HvError::ConnectionInUse(connection_id));
        }
        post.insert(connection_id, handler);
        Ok(())
    }

    /// Removes the HvPostMessage handler of `connection_id`; later posts fail with 0x12. Returns whether one was
    /// registered.
    pub fn unregister_post_message(&self, connection_id: u32) -> bool {
        self.connections
            .post
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&connection_id)
            .is_some()
    }

    /// Registers `connection_id` for HvSignalEvent and returns the event fd signalled by every HvSignalEvent on it:
    /// fast calls through the doorbell's KVM_IOEVENTFD (no user exit), slow calls by the hypercall handler.
    pub fn register_event(&self, connection_id: u32) -> Result<EventFd, HvError> {
        Self::check_connection_id(connection_id)?;
        let platform = &self.attached.get().ok_or(HvError::NotAttached)?.platform;
        let mut events = self
            .connections
            .events
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if events.contains_key(&connection_id) {
            return Err(HvError::ConnectionInUse(connection_id));
        }
        let fd = platform.register_doorbell(self.config.ports.doorbell, connection_id)?;
        let for_caller = fd.try_clone()?;
        events.insert(connection_id, fd);
        Ok(for_caller)
    }

    /// Posts a SynIC message from the host to `sint` of `vp` with sender 0; see [`HvPartition::post_message_from`].
    pub fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<Delivery, HvError> {
        self.post_message_from(vp, sint, message_type, 0, payload)
    }

    /// Posts a SynIC message to `sint` of `vp`: delivered into the SIMP slot if free (and the SINT's vector
    /// injected unless masked), else queued until the guest's EOM. [`SynicError::QueueFull`] when the bounded
    /// queue is full. An injection failure is logged, not returned: the message itself is in place.
    pub fn post_message_from(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        sender: u64,
        payload: &[u8],
    ) -> Result<Delivery, HvError> {
        let state = self.vp(vp).ok_or(SynicError::InvalidVp(vp))?;
        let ram = self.ram().ok_or(HvError::NotAttached)?;
        let (delivery, vector) =
            lock(state)
                .synic
                .post_message(ram, sint, message_type, sender, payload)?;
        if let Some(vector) = vector {
            self.inject(vp, vector);
        }
        Ok(delivery)
    }

    /// Sets event flag `flag` of `sint` on `vp` and injects the SINT's vector if the flag was newly set and the
    /// SINT is unmasked.
    pub fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<EventDelivery, HvError> {
        let state = self.vp(vp).ok_or(SynicError::InvalidVp(vp))?;
        let ram = self.ram().ok_or(HvError::NotAttached)?;
        let (delivery, vector) = lock(state).synic.signal_event(ram, sint, flag)?;
        if let Some(vector) = vector {
            self.inject(vp, vector);
        }
        Ok(delivery)
    }

    /// Messages queued (not yet in the slot) for `sint` of `vp`.
    pub fn queued_messages(&self, vp: u32, sint: u8) -> usize {
        self.vp(vp).map_or(0, |s| lock(s).synic.queued(sint))
    }
}

impl HypercallTarget for HvPartition {
    fn post_message(
        &self,
        vp: u32,
        connection_id: u32,
        message_type: u32,
        payload: &[u8],
    ) -> HvStatus {
        let handler = self
            .connections
            .post
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&connection_id)
            .cloned();
        let Some(handler) = handler else {
            tracing::warn!(
                vp,
                connection_id,
                "HvPostMessage to an unknown connection id"
            );
            return HvStatus::INVALID_CONNECTION_ID;
        };
        self.counters.guest_messages.fetch_add(1, Ordering::Relaxed);
        handler(vp, message_type, payload)
    }

    fn signal_event(&self, vp: u32, connection_id: u32) -> HvStatus {
        let events = self
            .connections
            .events
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(fd) = events.get(&connection_id) else {
            tracing::warn!(
                vp,
                connection_id,
                "HvSignalEvent to an unknown connection id"
            );
            return HvStatus::INVALID_CONNECTION_ID;
        };
        self.counters.guest_signals.fetch_add(1, Ordering::Relaxed);
        match fd.write(1) {
            Ok(()) => HvStatus::SUCCESS,
            Err(e) => {
                // Only an overflowing counter (2^64 - 2 pending signals) can fail a non-blocking eventfd write.
                tracing::error!(vp, connection_id, error = %e, "event fd write failed");
                HvStatus::INSUFFICIENT_BUFFERS
            }
        }
    }
}

/// Creates a non-blocking event fd (for platforms and tests).
pub fn new_event_fd() -> std::io::Result<EventFd> {
    EventFd::new(EFD_NONBLOCK)
}

#[cfg(test)]
mod tests;
