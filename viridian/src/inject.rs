//! Fault injection for the service's own tests, in debug builds only: `VIRIDIAN_INJECT=KIND:DISK`
//! wraps disk `DISK`'s backend so that its first write does `KIND` on the device thread serving it —
//! `panic` (a device-thread panic, which the VMBus service must contain) or `forbidden-syscall`
//! (an `openat`, which the device filter must refuse). Release builds ignore the variable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use host_vsp::backend::{BlockBackend, DiskError, IoBuffers};

/// What the first write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic,
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
        "panic" => Some(Fault::Panic),
        "forbidden-syscall" => Some(Fault::ForbiddenSyscall),
        _ => None,
    }
}

/// `backend`, wrapped if a fault is injected into `disk`.
pub fn wrap(disk: &str, backend: Arc<dyn BlockBackend>) -> Arc<dyn BlockBackend> {
    match fault_for(disk) {
        Some(fault) => {
            tracing::warn!(disk, ?fault, "fault injection armed");
            Arc::new(Faulty {
                inner: backend,
                fault,
                fired: AtomicBool::new(false),
            })
        }
        None => backend,
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
                Fault::Panic => panic!("injected device-thread panic"),
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
