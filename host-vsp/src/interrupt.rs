//! The interrupt a device model raises, without saying how it reaches the guest: [`Interrupt`] is
//! implemented by an [`EventFd`] (bound to an irqfd by the KVM glue, or read by a test) and by
//! whatever the glue chooses instead (an MSI injected by ioctl, a counter in a test).

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// One interrupt a device can assert; triggering it once delivers it once (edge semantics).
pub trait Interrupt: Send + Sync {
    /// Asserts the interrupt.
    fn trigger(&self) -> io::Result<()>;
}

impl Interrupt for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn an_eventfd_counts_triggers() {
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq: &dyn Interrupt = &efd;
        irq.trigger().unwrap();
        irq.trigger().unwrap();
        assert_eq!(efd.read().unwrap(), 2);
    }
}
