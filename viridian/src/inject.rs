//! Fault injection for the service's own tests, in debug builds only: `VIRIDIAN_INJECT=KIND:DISK`
//! makes disk `DISK` misbehave on the device thread serving it —
//! - `panic`: the controller's device thread panics when the guest closes its channel (a device
//!   failure the VMBus service must contain: report it and rescind the channel);
//! - `io-panic`: the backend panics on its first write (a request failure storvsp must contain:
//!   the request fails with HARDWARE ERROR, the device goes on);
//! - `forbidden-syscall`: the backend's first write makes an `openat`, which the device filter
//!   must refuse.
//!
//! Release builds ignore the variable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use host_vsp::backend::{BlockBackend, DiskError, IoBuffers};
use host_vsp::vmbus_service::{HostChannel, VmbusDevice};
use vmbus::server::OfferConfig;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    DevicePanic,
    IoPanic,
    ForbiddenSyscall,
}

/// The fault asked for `disk`, if any (always none in release builds).
fn fault_for(disk: &str) -> Option<Fault> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("VIRIDIAN_INJECT").ok()?;
    let (kind, name) = spec.split_once(':')?;
    if name != disk {
        return None;
    }
    match kind {
        "panic" => Some(Fault::DevicePanic),
        "io-panic" => Some(Fault::IoPanic),
        "forbidden-syscall" => Some(Fault::ForbiddenSyscall),
        _ => None,
    }
}

/// `backend`, wrapped if a backend fault is injected into `disk`.
pub fn wrap(disk: &str, backend: Arc<dyn BlockBackend>) -> Arc<dyn BlockBackend> {
    match fault_for(disk) {
        Some(fault @ (Fault::IoPanic | Fault::ForbiddenSyscall)) => {
            tracing::warn!(disk, ?fault, "fault injection armed");
            Arc::new(Faulty {
                inner: backend,
                fault,
                fired: AtomicBool::new(false),
            })
        }
        _ => backend,
    }
}

/// `device` (the controller of `disks`), wrapped if a device panic is injected into one of them.
pub fn wrap_device(disks: &[String], device: Arc<dyn VmbusDevice>) -> Arc<dyn VmbusDevice> {
    if disks
        .iter()
        .any(|d| fault_for(d) == Some(Fault::DevicePanic))
    {
        tracing::warn!(?disks, "fault injection armed: device panic on close");
        Arc::new(PanicOnClose(device))
    } else {
        device
    }
}

/// A device whose thread panics once the guest closed its channel.
struct PanicOnClose(Arc<dyn VmbusDevice>);

impl VmbusDevice for PanicOnClose {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn offer(&self) -> OfferConfig {
        self.0.offer()
    }

    fn serve(&self, channel: HostChannel) {
        self.0.serve(channel);
        panic!("injected device-thread panic");
    }
}

struct Faulty {
    inner: Arc<dyn BlockBackend>,
    fault: Fault,
    fired: AtomicBool,
}

impl BlockBackend for Faulty {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        self.inner.read_vectored(offset, bufs)
    }

    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        if !self.fired.swap(true, Ordering::AcqRel) {
            match self.fault {
                Fault::IoPanic | Fault::DevicePanic => panic!("injected I/O panic"),
                Fault::ForbiddenSyscall => {
                    let refused = std::fs::File::open("/etc/hostname")
                        .err()
                        .and_then(|e| e.raw_os_error());
                    tracing::error!(
                        thread = std::thread::current().name().unwrap_or("?"),
                        errno = refused,
                        "injected forbidden syscall: openat {}",
                        if refused == Some(libc::EPERM) {
                            "was refused"
                        } else {
                            "was NOT refused"
                        }
                    );
                    return Err(DiskError::Io(std::io::Error::from_raw_os_error(
                        refused.unwrap_or(0),
                    )));
                }
            }
        }
        self.inner.write_vectored(offset, bufs, fua)
    }

    fn flush(&self) -> Result<(), DiskError> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.inner.discard(offset, len)
    }
}
