//! Helpers shared by the core KVM tests: a recording port/MMIO device that answers reads from a reply table,
//! and host memory measurements.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hypervisor_lite::{MmioHandler, PortHandler, VcpuCtx};

/// One access seen by a [`Recorder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub vp: u32,
    pub addr: u64,
    pub write: bool,
    pub data: Vec<u8>,
    pub at: Instant,
}

impl Access {
    /// The written bytes as a little-endian integer.
    pub fn value(&self) -> u64 {
        let mut b = [0u8; 8];
        b[..self.data.len()].copy_from_slice(&self.data);
        u64::from_le_bytes(b)
    }
}

/// Records every access; reads return the reply registered for the address (little-endian, truncated to the
/// access size), or 0.
#[derive(Debug, Default)]
pub struct Recorder {
    pub log: Mutex<Vec<Access>>,
    pub replies: Mutex<HashMap<u64, u64>>,
}

impl Recorder {
    pub fn with_replies(replies: &[(u64, u64)]) -> Self {
        Self {
            log: Mutex::default(),
            replies: Mutex::new(replies.iter().copied().collect()),
        }
    }

    pub fn accesses(&self) -> Vec<Access> {
        self.log.lock().unwrap().clone()
    }

    /// Values written to `addr`, in order.
    pub fn writes_to(&self, addr: u64) -> Vec<u64> {
        self.accesses()
            .iter()
            .filter(|a| a.write && a.addr == addr)
            .map(Access::value)
            .collect()
    }

    /// Values `vp` wrote to `addr`, in order.
    pub fn writes_by(&self, vp: u32, addr: u64) -> Vec<u64> {
        self.accesses()
            .iter()
            .filter(|a| a.write && a.vp == vp && a.addr == addr)
            .map(Access::value)
            .collect()
    }

    fn read(&self, vp: u32, addr: u64, data: &mut [u8]) {
        let reply = self
            .replies
            .lock()
            .unwrap()
            .get(&addr)
            .copied()
            .unwrap_or(0);
        let n = data.len().min(8);
        data[..n].copy_from_slice(&reply.to_le_bytes()[..n]);
        self.log.lock().unwrap().push(Access {
            vp,
            addr,
            write: false,
            data: data.to_vec(),
            at: Instant::now(),
        });
    }

    fn write(&self, vp: u32, addr: u64, data: &[u8]) {
        self.log.lock().unwrap().push(Access {
            vp,
            addr,
            write: true,
            data: data.to_vec(),
            at: Instant::now(),
        });
    }
}

impl PortHandler for Recorder {
    fn read(&self, vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]) {
        Recorder::read(self, vcpu.vp_index(), port.into(), data)
    }
    fn write(&self, vcpu: &mut VcpuCtx, port: u16, data: &[u8]) {
        Recorder::write(self, vcpu.vp_index(), port.into(), data)
    }
}

impl MmioHandler for Recorder {
    fn read(&self, vcpu: &mut VcpuCtx, gpa: u64, data: &mut [u8]) {
        Recorder::read(self, vcpu.vp_index(), gpa, data)
    }
    fn write(&self, vcpu: &mut VcpuCtx, gpa: u64, data: &[u8]) {
        Recorder::write(self, vcpu.vp_index(), gpa, data)
    }
}

/// Resident bytes of the host mappings starting at `starts` (from /proc/self/smaps).
pub fn mapping_rss(starts: &[u64]) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut total = 0;
    let mut current = false;
    for line in smaps.lines() {
        if let Some(range) = line
            .split_whitespace()
            .next()
            .filter(|f| f.contains('-') && !f.ends_with(':'))
        {
            let start =
                u64::from_str_radix(range.split('-').next().unwrap_or(""), 16).unwrap_or(u64::MAX);
            current = starts.contains(&start);
        } else if current && line.starts_with("Rss:") {
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            total += kb * 1024;
        }
    }
    total
}

/// The process's resident set size in bytes (VmRSS).
pub fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}
