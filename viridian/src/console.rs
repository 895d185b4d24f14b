//! The guest's console, forwarded to the service's log: the guest kernel appends its `println!`
//! output to a log area in guest memory (`guest_abi::LOG_GPA`, no exit per byte) and panics to its
//! serial port; [`Console`] polls both and logs each complete line with target `guest`. Everything
//! read from guest memory is bounded by the log area, and a line longer than [`MAX_LINE`] is cut, so
//! a guest cannot make the host log without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypervisor_lite::serial::SerialOutput;
use hypervisor_lite::GuestRam;

use crate::confine::{Confinement, Kind};

/// Longest line forwarded (the rest is cut).
pub const MAX_LINE: usize = 1024;
/// Lines forwarded per poll at most (the rest wait for the next poll).
const MAX_LINES_PER_POLL: usize = 256;

/// Reads new console text and forwards whole lines.
#[derive(Debug, Default)]
struct Reader {
    log_seen: u64,
    serial_seen: usize,
    pending: Vec<u8>,
}

impl Reader {
    /// New bytes of the log area (bounded by it) and of the serial capture.
    fn poll(&mut self, ram: &GuestRam, serial: &SerialOutput) -> Vec<String> {
        let capacity = guest_abi::LOG_LEN - 16;
        let written = ram.read_u64(guest_abi::LOG_GPA).unwrap_or(0).min(capacity);
        if written > self.log_seen {
            let mut text = vec![0u8; (written - self.log_seen) as usize];
            if ram
                .read(guest_abi::LOG_GPA + 16 + self.log_seen, &mut text)
                .is_ok()
            {
                self.pending.extend_from_slice(&text);
                self.log_seen = written;
            }
        }
        let bytes = serial.bytes();
        if bytes.len() > self.serial_seen {
            self.pending.extend_from_slice(&bytes[self.serial_seen..]);
            self.serial_seen = bytes.len();
        }
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            if lines.len() == MAX_LINES_PER_POLL {
                break;
            }
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = &line[..(line.len() - 1).min(MAX_LINE)];
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
        if self.pending.len() > MAX_LINE {
            let cut: Vec<u8> = self.pending.drain(..).take(MAX_LINE).collect();
            lines.push(String::from_utf8_lossy(&cut).into_owned());
        }
        lines
    }
}

/// The console forwarder's thread; dropping it forwards what is left and stops it.
pub struct Console {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    /// Starts forwarding, confined as [`Kind::Console`].
    pub fn start(
        ram: GuestRam,
        serial: SerialOutput,
        confine: Confinement,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("viridian-console".into())
                .spawn(move || {
                    if let Err(e) = confine.confine(Kind::Console) {
                        tracing::error!("{e}: the guest console is not forwarded");
                        return;
                    }
                    let mut reader = Reader::default();
                    loop {
                        let last = stop.load(Ordering::Acquire);
                        loop {
                            let lines = reader.poll(&ram, &serial);
                            let more = lines.len() == MAX_LINES_PER_POLL;
                            for line in lines {
                                tracing::info!(target: "guest", "{line}");
                            }
                            if !more {
                                break;
                            }
                        }
                        if last {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
