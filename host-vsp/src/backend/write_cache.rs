//! [`VolatileCacheDisk`]: a RAM disk that models a volatile write cache, for durability tests. Writes
//! land in the cache (reads see them at once); a flush, or a FUA write, makes them durable; a
//! simulated power cut ([`VolatileCacheDisk::power_cut`]) throws away whatever was not. A variant that
//! acknowledges flushes without making anything durable ([`VolatileCacheDisk::dropping_flushes`])
//! proves a durability test can fail.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{check_range, BlockBackend, DiskError, IoBuffers, SECTOR_SIZE};

struct State {
    /// What reads see: durable contents plus the cache.
    current: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Cached (not yet durable) byte ranges: offset → end.
    dirty: BTreeMap<u64, u64>,
}

/// A disk with a volatile write cache in front of its durable contents.
pub struct VolatileCacheDisk {
    state: Mutex<State>,
    forward_flushes: bool,
}

impl std::fmt::Debug for VolatileCacheDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileCacheDisk")
            .field("forward_flushes", &self.forward_flushes)
            .field("dirty_ranges", &self.lock().dirty.len())
            .finish()
    }
}

impl VolatileCacheDisk {
    /// A zeroed disk of `bytes` (rounded down to whole sectors) whose flushes make writes durable.
    pub fn new(bytes: u64) -> Self {
        let len = (bytes - bytes % SECTOR_SIZE) as usize;
        Self {
            state: Mutex::new(State {
                current: vec![0; len],
                durable: vec![0; len],
                dirty: BTreeMap::new(),
            }),
            forward_flushes: true,
        }
    }

    /// The broken twin: flushes succeed but make nothing durable (FUA writes still are).
    pub fn dropping_flushes(bytes: u64) -> Self {
        Self {
            forward_flushes: false,
            ..Self::new(bytes)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes written but not yet durable.
    pub fn dirty_bytes(&self) -> u64 {
        self.lock().dirty.iter().map(|(s, e)| e - s).sum()
    }

    /// Cut the power: the cache is lost, the disk holds only what was durable.
    pub fn power_cut(&self) {
        let mut state = self.lock();
        let durable = state.durable.clone();
        state.current = durable;
        state.dirty.clear();
    }
}

impl State {
    fn persist(&mut self, start: u64, end: u64) {
        let (s, e) = (start as usize, end as usize);
        let (current, durable) = (&self.current, &mut self.durable);
        durable[s..e].copy_from_slice(&current[s..e]);
    }

    fn mark_dirty(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start, end);
        // Merge with every overlapping or touching range.
        let touching: Vec<(u64, u64)> = self
            .dirty
            .range(..=end)
            .filter(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.dirty.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.dirty.insert(start, end);
    }
}

impl BlockBackend for VolatileCacheDisk {
    fn capacity(&self) -> u64 {
        self.lock().current.len() as u64
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_vectored(&self, offset: u64, bufs: &IoBuffers<'_>) -> Result<(), DiskError> {
        let state = self.lock();
        check_range(offset, bufs.len(), state.current.len() as u64)?;
        let at = offset as usize;
        bufs.copy_from_host(0, &state.current[at..at + bufs.len() as usize])
    }

    fn write_vectored(
        &self,
        offset: u64,
        bufs: &IoBuffers<'_>,
        fua: bool,
    ) -> Result<(), DiskError> {
        let mut state = self.lock();
        check_range(offset, bufs.len(), state.current.len() as u64)?;
        let (at, end) = (offset, offset + bufs.len());
        bufs.copy_to_host(0, &mut state.current[at as usize..end as usize])?;
        if fua {
            state.persist(at, end);
        } else {
            state.mark_dirty(at, end);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.forward_flushes {
            let mut state = self.lock();
            let dirty = std::mem::take(&mut state.dirty);
            for (start, end) in dirty {
                state.persist(start, end);
            }
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let mut state = self.lock();
        check_range(offset, len, state.current.len() as u64)?;
        let (s, e) = (offset as usize, (offset + len) as usize);
        state.current[s..e].fill(0);
        state.mark_dirty(offset, offset + len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushed_and_fua_writes_survive_a_power_cut() {
        let disk = VolatileCacheDisk::new(1 << 20);
        super::super::tests::exercise(&disk);
        disk.write_at(0, &[1; 4096], false).unwrap();
        disk.flush().unwrap();
        disk.write_at(4096, &[2; 4096], false).unwrap();
        disk.write_at(8192, &[3; 512], true).unwrap();
        disk.write_at(512, &[4; 512], false).unwrap();
        assert_eq!(disk.dirty_bytes(), 4096 + 512);
        let mut buf = [0u8; 512];
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [2; 512], "reads see the cache");
        disk.power_cut();
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1; 512], "flushed");
        disk.read_at(512, &mut buf).unwrap();
        assert_eq!(buf, [1; 512], "the unflushed overwrite is lost");
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [0; 512], "unflushed write lost");
        disk.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, [3; 512], "FUA survives");
    }

    #[test]
    fn a_disk_that_drops_flushes_loses_everything_but_fua() {
        let disk = VolatileCacheDisk::dropping_flushes(1 << 20);
        disk.write_at(0, &[1; 512], false).unwrap();
        disk.flush().unwrap();
        disk.write_at(512, &[2; 512], true).unwrap();
        disk.power_cut();
        let mut buf = [0u8; 1024];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..512], &[0; 512]);
        assert_eq!(&buf[512..], &[2; 512]);
    }

    #[test]
    fn dirty_ranges_merge() {
        let disk = VolatileCacheDisk::new(1 << 20);
        disk.write_at(0, &[1; 512], false).unwrap();
        disk.write_at(1024, &[1; 512], false).unwrap();
        disk.write_at(512, &[1; 512], false).unwrap();
        assert_eq!(disk.lock().dirty.len(), 1);
        assert_eq!(disk.dirty_bytes(), 1536);
    }
}
