//! The kernel's one VMBus connection, made on first use (detect, hypercall page, SynIC, connect, offers)
//! and shared by every scenario and device that needs it — a guest connects once.

use alloc::string::{String, ToString};

use guest_drivers::vmbus_client::VmbusConnection;

use crate::platform::Kernel;

/// The vector the VMBus SINT is delivered on (Linux uses the same).
pub const VMBUS_VECTOR: u8 = 0xF3;

/// The platform every driver of this kernel runs on.
pub static KERNEL: Kernel = Kernel;

struct Slot(Option<VmbusConnection<'static, Kernel>>);

// SAFETY: the connection holds raw pointers to its own DMA pages, which are identity-mapped kernel
// memory valid for the kernel's lifetime; this kernel runs Rust on one vCPU only, and the mutex
// serialises every access anyway.
unsafe impl Send for Slot {}

static CONNECTION: spin::Mutex<Slot> = spin::Mutex::new(Slot(None));

/// Run `f` on the connection, connecting (newest version first) and collecting offers on first use.
pub fn with_connection<R>(
    f: impl FnOnce(&mut VmbusConnection<'static, Kernel>) -> R,
) -> Result<R, String> {
    let mut slot = CONNECTION.lock();
    if slot.0.is_none() {
        let mut conn =
            VmbusConnection::new(&KERNEL, &[], VMBUS_VECTOR).map_err(|e| e.to_string())?;
        conn.connect().map_err(|e| e.to_string())?;
        conn.request_offers().map_err(|e| e.to_string())?;
        slot.0 = Some(conn);
    }
    match slot.0.as_mut() {
        Some(conn) => Ok(f(conn)),
        None => Err("no VMBus connection".to_string()),
    }
}
