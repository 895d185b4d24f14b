//! The kernel's one VMBus connection, made on first use (detect, hypercall page, SynIC, connect, offers)
//! and shared by every scenario and device that needs it — a guest connects once. The connection lives
//! on the BSP (VP 0): the host posts channel messages to VP 0's SynIC and EOMs are per VP, so only the
//! BSP may use it. Connecting also enables every AP's own SynIC (its message and event-flag pages and
//! the VMBus SINT), whose event flags [`event_flags`] hands to drivers of channels targeting that VP.

use alloc::string::{String, ToString};

use guest_drivers::hv::synic::{EventFlags, Synic};
use guest_drivers::vmbus_client::VmbusConnection;
use vmbus::protocol::MESSAGE_SINT;

use crate::arch::MAX_CPUS;
use crate::platform::Kernel;
use crate::smp;

/// The vector the VMBus SINT is delivered on (Linux uses the same).
pub const VMBUS_VECTOR: u8 = 0xF3;

/// The platform every driver of this kernel runs on.
pub static KERNEL: Kernel = Kernel;

struct Slot(Option<VmbusConnection<'static, Kernel>>);

// SAFETY: the connection holds raw pointers to its own DMA pages, which are identity-mapped kernel
// memory valid for the kernel's lifetime and mapped the same on every CPU; the mutex serialises every
// access, and `with_connection` lets only the BSP in (the connection's SynIC is VP 0's).
unsafe impl Send for Slot {}

static CONNECTION: spin::Mutex<Slot> = spin::Mutex::new(Slot(None));

/// Each VP's SynIC event-flag page, once its SynIC is enabled.
struct VpEvents([spin::Mutex<Option<EventFlags>>; MAX_CPUS]);

// SAFETY: an `EventFlags` points at a SIEFP page that stays allocated and enabled for the kernel's
// lifetime (the SynIC is never disabled) and is mapped the same on every CPU; all access to the page is
// atomic, and the mutexes serialise access to the handles.
unsafe impl Sync for VpEvents {}

static VP_EVENTS: VpEvents = VpEvents([const { spin::Mutex::new(None) }; MAX_CPUS]);

/// The event flags of VP `vp`'s SynIC (`None` before the VMBus connection enabled it).
pub fn event_flags(vp: usize) -> Option<EventFlags> {
    *VP_EVENTS.0.get(vp)?.lock()
}

/// Enable the calling AP's SynIC (VMBus SINT on [`VMBUS_VECTOR`]) for good and record its event flags.
fn enable_ap_synic() {
    let vp = smp::current();
    match Synic::enable(&KERNEL, MESSAGE_SINT, VMBUS_VECTOR) {
        Ok(synic) => {
            if let Some(slot) = VP_EVENTS.0.get(vp) {
                *slot.lock() = Some(synic.event_flags());
            }
            // `Synic` has no `Drop`: letting it go here leaves the SynIC enabled and its pages
            // allocated, for the kernel's lifetime.
        }
        Err(e) => crate::println!("vp{vp}: SynIC not enabled: {e}"),
    }
}

/// Run `f` on the connection (BSP only), connecting (newest version first), collecting offers and
/// enabling every AP's SynIC on first use.
pub fn with_connection<R>(
    f: impl FnOnce(&mut VmbusConnection<'static, Kernel>) -> R,
) -> Result<R, String> {
    if smp::current() != 0 {
        return Err("the VMBus connection is the BSP's".to_string());
    }
    let mut slot = CONNECTION.lock();
    if slot.0.is_none() {
        let mut conn =
            VmbusConnection::new(&KERNEL, &[], VMBUS_VECTOR).map_err(|e| e.to_string())?;
        *VP_EVENTS.0[0].lock() = Some(conn.synic().event_flags());
        for vp in 1..smp::count() {
            smp::run_on(vp, enable_ap_synic).map_err(|e| e.to_string())?;
        }
        for vp in 1..smp::count() {
            smp::wait_idle(vp);
        }
        conn.connect().map_err(|e| e.to_string())?;
        conn.request_offers().map_err(|e| e.to_string())?;
        slot.0 = Some(conn);
    }
    match slot.0.as_mut() {
        Some(conn) => Ok(f(conn)),
        None => Err("no VMBus connection".to_string()),
    }
}
