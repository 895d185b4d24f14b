//! How the driver reaches the NIC's registers: [`Registers`] (one aligned dword per access), with
//! [`MmioRegisters`] the real window — the only unsafe code of the driver — and scripted register
//! files in the tests.
#![allow(unsafe_code)]

use core::ptr::NonNull;

/// The NIC's register file, one 32-bit access at a time (each one a VM exit).
pub trait Registers {
    /// Reads the register at `offset`.
    fn read(&mut self, offset: u32) -> u32;
    /// Writes `value` to the register at `offset`.
    fn write(&mut self, offset: u32, value: u32);
}

/// The 82540EM's memory-mapped register window.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u32>,
}

impl MmioRegisters {
    /// The window of [`e1000_protocol::MMIO_SIZE`] bytes at virtual address `base`.
    ///
    /// # Safety
    /// `base..base + MMIO_SIZE` must be the NIC's register window, mapped (uncached) for as long as
    /// this value lives and accessed through nothing else.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base: base.cast() }
    }
}

impl Registers for MmioRegisters {
    fn read(&mut self, offset: u32) -> u32 {
        let index = (offset as usize % e1000_protocol::MMIO_SIZE as usize) / 4;
        // SAFETY: `index` is a dword inside the window (reduced modulo its size), which the
        // contract of `new` makes mapped and ours. Volatile: a device register.
        u32::from_le(unsafe { self.base.as_ptr().add(index).read_volatile() })
    }

    fn write(&mut self, offset: u32, value: u32) {
        let index = (offset as usize % e1000_protocol::MMIO_SIZE as usize) / 4;
        // SAFETY: as for `read`.
        unsafe { self.base.as_ptr().add(index).write_volatile(value.to_le()) }
    }
}
