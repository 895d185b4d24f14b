//! Device extension points and exit dispatch: the [`PortHandler`], [`MmioHandler`] and [`MsrHandler`] traits
//! that user-space devices (and the Hyper-V enlightenment surface) implement, and the range maps a vCPU uses to
//! route port-I/O, MMIO and MSR exits to them.

use std::ops::Range;
use std::sync::Arc;

use crate::vcpu::VcpuCtx;

/// A device on the I/O-port bus. `port` is the absolute port; `data.len()` is the access size (1, 2 or 4).
/// Reads must fill all of `data`.
pub trait PortHandler: Send + Sync {
    /// The guest executed `in` on `port`.
    fn read(&self, vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]);
    /// The guest executed `out` on `port`.
    fn write(&self, vcpu: &mut VcpuCtx, port: u16, data: &[u8]);
}

/// A device on the MMIO bus (guest physical addresses that are neither RAM nor an in-kernel device).
pub trait MmioHandler: Send + Sync {
    /// The guest read `data.len()` bytes at `gpa`.
    fn read(&self, vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]);
    /// The guest wrote `data` at `gpa`.
    fn write(&self, vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]);
}

/// Model-specific registers emulated in user space. The partition installs a KVM MSR filter so that
/// accesses to [`MsrHandler::msr_ranges`] exit to user space (at most 16 ranges).
pub trait MsrHandler: Send + Sync {
    /// The MSR index ranges this handler owns.
    fn msr_ranges(&self) -> Vec<Range<u32>>;
    /// `rdmsr`: `None` injects #GP.
    fn rdmsr(&self, vcpu: &mut VcpuCtx, msr: u32) -> Option<u64>;
    /// `wrmsr`: `false` injects #GP.
    fn wrmsr(&self, vcpu: &mut VcpuCtx, msr: u32, value: u64) -> bool;
}

/// Non-overlapping address ranges mapped to handlers, looked up per exit.
pub(crate) struct RangeMap<K, H: ?Sized> {
    entries: Vec<(Range<K>, Arc<H>)>,
}

impl<K: Ord + Copy + std::fmt::Debug, H: ?Sized> RangeMap<K, H> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Adds a range; fails (returning a description) if it is empty or overlaps an existing one.
    pub(crate) fn insert(&mut self, range: Range<K>, handler: Arc<H>) -> Result<(), String> {
        if range.start >= range.end {
            return Err(format!("empty range {range:?}"));
        }
        if let Some((r, _)) = self
            .entries
            .iter()
            .find(|(r, _)| r.start < range.end && range.start < r.end)
        {
            return Err(format!("range {range:?} overlaps {r:?}"));
        }
        let pos = self.entries.partition_point(|(r, _)| r.start < range.start);
        self.entries.insert(pos, (range, handler));
        Ok(())
    }

    /// The handler whose range contains `key`.
    pub(crate) fn get(&self, key: K) -> Option<&Arc<H>> {
        let pos = self.entries.partition_point(|(r, _)| r.start <= key);
        let (r, h) = self.entries.get(pos.checked_sub(1)?)?;
        (key < r.end).then_some(h)
    }
}

/// Everything a vCPU thread dispatches exits to.
pub(crate) struct DeviceMap {
    pub(crate) ports: RangeMap<u16, dyn PortHandler>,
    pub(crate) mmio: RangeMap<u64, dyn MmioHandler>,
    pub(crate) msr: Option<Arc<dyn MsrHandler>>,
    pub(crate) msr_ranges: Vec<Range<u32>>,
}

impl DeviceMap {
    pub(crate) fn msr_owned(&self, msr: u32) -> bool {
        self.msr_ranges.iter().any(|r| r.contains(&msr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_map_finds_and_rejects_overlaps() {
        let mut m: RangeMap<u16, str> = RangeMap::new();
        m.insert(0x3F8..0x400, Arc::from("com1")).unwrap();
        m.insert(0x10..0x11, Arc::from("a")).unwrap();
        m.insert(0x11..0x20, Arc::from("b")).unwrap();
        assert!(m.insert(0x3FF..0x401, Arc::from("x")).is_err());
        assert!(m.insert(0x20..0x20, Arc::from("x")).is_err());
        assert_eq!(m.get(0x3F8).map(|h| &**h), Some("com1"));
        assert_eq!(m.get(0x3FF).map(|h| &**h), Some("com1"));
        assert_eq!(m.get(0x400), None);
        assert_eq!(m.get(0x10).map(|h| &**h), Some("a"));
        assert_eq!(m.get(0x11).map(|h| &**h), Some("b"));
        assert_eq!(m.get(0x0F), None);
        assert!(m.get(0x20).is_none());
    }
}
