//! Console output to the host. `println!` appends to a log in shared memory that the host reads
//! (no exit at all); COM1 (one user exit per byte) is kept for panics and for the moment before the
//! log is known.
//!
//! Log layout at the GPA the boot info names: `u64 written` (bytes appended so far, published with
//! release ordering after the bytes), `u64 dropped` (bytes that did not fit), then the text.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const COM1: u16 = 0x3f8;
const LOG_HEADER: usize = 16;

static LOG_BASE: AtomicUsize = AtomicUsize::new(0);
/// Serialises appends from the kernel's CPUs.
static LOG_LOCK: spin::Mutex<()> = spin::Mutex::new(());
static LOG_LEN: AtomicUsize = AtomicUsize::new(0);

/// Send `println!` output to the shared log of `len` bytes at `gpa` (identity mapped).
pub fn init_log(gpa: u64, len: u64) {
    if len as usize > LOG_HEADER {
        LOG_LEN.store(len as usize, Ordering::Relaxed);
        LOG_BASE.store(gpa as usize, Ordering::Release);
    }
}

fn log_word(index: usize) -> Option<&'static AtomicU64> {
    let base = LOG_BASE.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    // SAFETY: `init_log` was given an 8-aligned, identity-mapped region of at least LOG_HEADER bytes
    // that the host set aside for the log; its header words are only accessed atomically.
    Some(unsafe { AtomicU64::from_ptr((base + 8 * index) as *mut u64) })
}

fn append(s: &str) -> bool {
    let (Some(written), Some(dropped)) = (log_word(0), log_word(1)) else {
        return false;
    };
    let _appending = LOG_LOCK.lock();
    let base = LOG_BASE.load(Ordering::Acquire);
    let capacity = LOG_LEN.load(Ordering::Relaxed) - LOG_HEADER;
    let at = written.load(Ordering::Relaxed) as usize;
    let n = s.len().min(capacity.saturating_sub(at));
    // SAFETY: [at, at + n) lies within the log's text area (n is clamped to the capacity left);
    // appends are serialised by LOG_LOCK, and the host reads only bytes below `written`.
    unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), (base + LOG_HEADER + at) as *mut u8, n) };
    written.store((at + n) as u64, Ordering::Release);
    dropped.fetch_add((s.len() - n) as u64, Ordering::Relaxed);
    true
}

/// A zero-sized writer to COM1.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// The shared-memory log (falls back to COM1 before the log exists).
pub struct Log;

impl Write for Log {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !append(s) {
            write_str(s);
        }
        Ok(())
    }
}

/// Write a string to COM1.
pub fn write_str(s: &str) {
    for b in s.bytes() {
        crate::arch::outb(COM1, b);
    }
}

/// Print a formatted line to the host's log.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Log, $($arg)*);
    }};
}
