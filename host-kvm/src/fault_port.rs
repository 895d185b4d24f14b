//! The fault port a guest kernel reports CPU exceptions on (viridian's guest kernel writes the
//! vector, then RIP's low and high halves, each as a 32-bit word): [`FaultLog`] collects them,
//! bounded whatever the guest writes.

use std::sync::Mutex;

use hypervisor_lite::{PortHandler, VcpuCtx};

/// Most exceptions kept (the rest are dropped).
const MAX_FAULTS: usize = 16;

/// CPU exceptions a guest reported: (vector, RIP) triples of 32-bit words.
#[derive(Debug, Default)]
pub struct FaultLog {
    words: Mutex<Vec<u32>>,
}

impl PortHandler for FaultLog {
    fn read(&self, _vcpu: &mut VcpuCtx, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&self, _vcpu: &mut VcpuCtx, _port: u16, data: &[u8]) {
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let mut words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        if words.len() < 3 * MAX_FAULTS {
            words.push(u32::from_le_bytes(word));
        }
    }
}

impl FaultLog {
    /// The exceptions reported so far: (vector, RIP).
    pub fn faults(&self) -> Vec<(u32, u64)> {
        let words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        words
            .chunks_exact(3)
            .map(|w| (w[0], u64::from(w[1]) | (u64::from(w[2]) << 32)))
            .collect()
    }
}
