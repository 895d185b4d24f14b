//! The `ramdisk` kit: the in-guest baseline. Not a device: the guest copies the disk image into its own
//! RAM when it opens the "device" and serves every request with a memcpy, so a workload's window holds no
//! exit at all — the floor each real device is compared with.
//!
//! Host side of the image transfer: the guest writes the GPA of a command block
//! `{u64 cmd, u64 gpa, u64 len, u64 status, u64 capacity}` to [`RAMDISK_PORT`] (one exit, outside the
//! measured window); `cmd` 1 asks for the capacity, 2 loads the backend into `[gpa, gpa + len)`, 3 stores
//! that guest memory back to the backend. `status` 0 is success. The guest side is
//! `testbed/guest/src/scenario/bench.rs`.
//!
//! A store writes only the [`STORE_GRAIN`]-byte pieces that differ from the backend: a read-only
//! workload stores nothing (so a read-only image works), and a sparse image stays sparse where the
//! guest wrote nothing.

use std::sync::Arc;

use anyhow::{bail, Result};
use hypervisor_lite::{GuestRam, PortHandler, VcpuCtx};

use super::{Backend, DeviceKit};
use crate::GuestVmConfig;

pub use guest_abi::RAMDISK_PORT;
/// Largest image the baseline copies into guest RAM.
pub const MAX_RAMDISK_BYTES: u64 = 1 << 30;

const CMD_QUERY: u64 = 1;
const CMD_LOAD: u64 = 2;
const CMD_STORE: u64 = 3;
const STATUS_OK: u64 = 0;
const STATUS_BAD_COMMAND: u64 = 1;
const STATUS_BAD_RANGE: u64 = 2;
const STATUS_IO_ERROR: u64 = 3;
/// Bytes copied per step between the backend and guest RAM.
const CHUNK: usize = 1 << 20;
/// A store compares guest memory with the backend in pieces of this many bytes and writes only the
/// pieces that differ.
pub const STORE_GRAIN: usize = 64 << 10;

/// The in-guest baseline (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct RamdiskKit;

impl DeviceKit for RamdiskKit {
    fn name(&self) -> &str {
        "ramdisk"
    }

    fn guest_name(&self) -> &str {
        "ramdisk"
    }

    fn baseline(&self) -> bool {
        true
    }

    fn check_disk(&self, capacity: u64) -> Result<()> {
        if capacity > MAX_RAMDISK_BYTES {
            bail!(
                "the in-guest baseline copies the disk into guest RAM: {capacity} bytes exceed {MAX_RAMDISK_BYTES}"
            );
        }
        Ok(())
    }

    fn configure(&self, config: &mut GuestVmConfig, backend: Backend) -> Result<()> {
        let capacity = backend.capacity();
        self.check_disk(capacity)?;
        // The image, plus room for the kernel, buffers and latency samples.
        let want = (capacity + (128 << 20)).next_multiple_of(2 << 20);
        config.ram_bytes = config.ram_bytes.max(want);
        let port = Arc::new(RamdiskPort { backend });
        config.configure(move |pc| {
            pc.add_port_handler(RAMDISK_PORT..RAMDISK_PORT + 1, port);
            Ok(())
        });
        Ok(())
    }
}

/// Serves the guest's image transfers.
struct RamdiskPort {
    backend: Backend,
}

impl RamdiskPort {
    fn transfer(&self, ram: &GuestRam, cmd: u64, gpa: u64, len: u64) -> u64 {
        let capacity = self.backend.capacity();
        if len > capacity || !ram.contains(gpa, len) {
            return STATUS_BAD_RANGE;
        }
        let mut chunk = vec![0u8; CHUNK];
        let mut stored = if cmd == CMD_STORE {
            vec![0u8; CHUNK]
        } else {
            Vec::new()
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let buf = &mut chunk[..n];
            let ok = if cmd == CMD_LOAD {
                self.backend.read_at(done, buf).is_ok() && ram.write(gpa + done, buf).is_ok()
            } else {
                let on_disk = &mut stored[..n];
                ram.read(gpa + done, buf).is_ok()
                    && self.backend.read_at(done, on_disk).is_ok()
                    && self.store_changed(done, buf, on_disk)
            };
            if !ok {
                return STATUS_IO_ERROR;
            }
            done += n as u64;
        }
        if cmd == CMD_STORE && self.backend.flush().is_err() {
            return STATUS_IO_ERROR;
        }
        STATUS_OK
    }

    /// Write the [`STORE_GRAIN`] pieces of `data` (at `offset`) that differ from `on_disk`.
    fn store_changed(&self, offset: u64, data: &[u8], on_disk: &[u8]) -> bool {
        data.chunks(STORE_GRAIN)
            .zip(on_disk.chunks(STORE_GRAIN))
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .all(|(i, (new, _))| {
                let at = offset + (i * STORE_GRAIN) as u64;
                self.backend.write_at(at, new, false).is_ok()
            })
    }
}

impl PortHandler for RamdiskPort {
    fn read(&self, _vcpu: &mut VcpuCtx, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&self, vcpu: &mut VcpuCtx, _port: u16, data: &[u8]) {
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let block = u64::from(u32::from_le_bytes(word));
        let ram = vcpu.ram();
        if !block.is_multiple_of(8) || !ram.contains(block, 40) {
            tracing::warn!(block, "ramdisk: command block outside guest RAM");
            return;
        }
        let word_at = |i: u64| ram.read_u64(block + 8 * i).unwrap_or(0);
        let (cmd, gpa, len) = (word_at(0), word_at(1), word_at(2));
        let status = match cmd {
            CMD_QUERY => STATUS_OK,
            CMD_LOAD | CMD_STORE => self.transfer(ram, cmd, gpa, len),
            _ => STATUS_BAD_COMMAND,
        };
        let _ = ram.write_u64(block + 32, self.backend.capacity());
        let _ = ram.write_u64(block + 24, status);
    }
}
