//! The COM1 console (16550A UART at ports 0x3F8–0x3FF, IRQ 4) backed by vm-superio's `Serial`. Guest output
//! is captured into a shared buffer that tests read ([`SerialOutput`]) and optionally echoed to stderr.
//! Each guest `out` to the UART is one user exit (~25 KB/s here): bulk output belongs in shared memory.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::PortHandler;
use crate::vcpu::VcpuCtx;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3F8;
/// Ports decoded by the UART.
pub const COM1_PORTS: std::ops::Range<u16> = COM1_BASE..COM1_BASE + 8;
/// ISA IRQ (= GSI) of COM1.
pub const COM1_GSI: u32 = 4;
/// Captured output beyond this many bytes is counted but dropped.
pub const CAPTURE_LIMIT: usize = 16 << 20;

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

/// A handle on the console's captured output; clones share it.
#[derive(Clone, Default)]
pub struct SerialOutput {
    inner: Arc<Mutex<Captured>>,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput")
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl SerialOutput {
    /// Everything the guest wrote so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            .clone()
    }

    /// The output as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Bytes dropped after [`CAPTURE_LIMIT`] was reached.
    pub fn dropped(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }
}

/// The UART's output sink.
struct Sink {
    out: SerialOutput,
    echo: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut c = self
            .out
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len()).min(buf.len());
        c.bytes.extend_from_slice(&buf[..room]);
        c.dropped += (buf.len() - room) as u64;
        drop(c);
        if self.echo {
            // Echo is best-effort diagnostics: a closed stderr must not stop the guest.
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Raises the UART interrupt by signalling an eventfd registered as irqfd on GSI 4.
struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 device.
pub struct SerialConsole {
    uart: Mutex<Serial<IrqLine, NoEvents, Sink>>,
    output: SerialOutput,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole")
            .field("output", &self.output)
            .finish()
    }
}

impl SerialConsole {
    /// A UART whose interrupt line is `irq` (an eventfd the partition registered as irqfd for GSI 4).
    pub(crate) fn new(irq: EventFd, echo: bool) -> Self {
        let output = SerialOutput::default();
        let sink = Sink {
            out: output.clone(),
            echo,
        };
        Self {
            uart: Mutex::new(Serial::new(IrqLine(irq), sink)),
            output,
        }
    }

    /// The captured output.
    pub fn output(&self) -> SerialOutput {
        self.output.clone()
    }

    /// Queues bytes for the guest to read from the receive register.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        self.uart
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enqueue_raw_bytes(bytes)
            .unwrap_or(0)
    }
}

impl PortHandler for SerialConsole {
    fn read(&self, _vcpu: &mut VcpuCtx, port: u16, data: &mut [u8]) {
        let offset = port.wrapping_sub(COM1_BASE) as u8;
        let value = self
            .uart
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&self, _vcpu: &mut VcpuCtx, port: u16, data: &[u8]) {
        let offset = port.wrapping_sub(COM1_BASE) as u8;
        if let Some(&value) = data.first() {
            if let Err(e) = self
                .uart
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(offset, value)
            {
                tracing::warn!("COM1 write at offset {offset}: {e:?}");
            }
        }
    }
}
