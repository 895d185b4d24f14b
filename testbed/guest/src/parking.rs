//! A parking spot for a driver opened once and used by many bench tokens: each bench device takes the
//! driver out when it opens and parks it again when it is dropped.

/// One parked value.
pub struct Parking<T>(spin::Mutex<Option<T>>);

// SAFETY: the drivers parked here hold pointers to identity-mapped kernel memory and MMIO valid for the
// kernel's lifetime; Rust runs on one vCPU and the mutex serialises every access.
unsafe impl<T> Sync for Parking<T> {}

impl<T> Parking<T> {
    /// An empty spot.
    pub const fn new() -> Self {
        Self(spin::Mutex::new(None))
    }

    /// The parked value, if any.
    pub fn take(&self) -> Option<T> {
        self.0.lock().take()
    }

    /// Park `value` (replacing whatever was parked).
    pub fn park(&self, value: T) {
        *self.0.lock() = Some(value);
    }
}
