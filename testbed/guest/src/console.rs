//! Console output to the host: COM1 (one user exit per byte, so keep messages short) and `println!`.

use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;

/// A zero-sized writer to COM1.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// Write a string to COM1.
pub fn write_str(s: &str) {
    for b in s.bytes() {
        crate::arch::outb(COM1, b);
    }
}

/// Print a formatted line to the host console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Serial, $($arg)*);
    }};
}
