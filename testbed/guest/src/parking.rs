//! A parking spot for a driver opened once and used by many bench tokens: a bench device leases the
//! driver (opening it the first time) and the lease parks it again when dropped.

use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

/// One parked value.
pub struct Parking<T>(spin::Mutex<Option<T>>);

// SAFETY: the drivers parked here hold pointers to identity-mapped kernel memory and MMIO valid for the
// kernel's lifetime and mapped the same on every CPU (one set of page tables), so any CPU may use them;
// the mutex serialises every access, and a lease moves the value out (one user at a time).
unsafe impl<T> Sync for Parking<T> {}

impl<T> Parking<T> {
    /// An empty spot.
    pub const fn new() -> Self {
        Self(spin::Mutex::new(None))
    }

    /// Take the parked value out for good if `pred` holds for it.
    pub fn take_if(&self, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut slot = self.0.lock();
        if slot.as_ref().is_some_and(pred) {
            slot.take()
        } else {
            None
        }
    }

    /// Take the parked value, or `open` one if none is parked; it returns here when the lease drops.
    pub fn lease<E>(&'static self, open: impl FnOnce() -> Result<T, E>) -> Result<Lease<T>, E> {
        let parked = self.0.lock().take();
        let value = match parked {
            Some(value) => value,
            None => open()?,
        };
        Ok(Lease {
            spot: self,
            value: ManuallyDrop::new(value),
        })
    }
}

/// A value taken from a [`Parking`]; parked again on drop.
pub struct Lease<T: 'static> {
    spot: &'static Parking<T>,
    value: ManuallyDrop<T>,
}

impl<T> Deref for Lease<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        // SAFETY: `value` is taken exactly once, here, and never used again (the lease is being dropped).
        let value = unsafe { ManuallyDrop::take(&mut self.value) };
        *self.spot.0.lock() = Some(value);
    }
}
