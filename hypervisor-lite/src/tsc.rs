//! The host's TSC rate, which a guest's TSC runs at here (KVM does not scale it): what a guest
//! kernel without a calibrated timer needs to turn TSC ticks into time.

use std::time::{Duration, Instant};

fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate (ticks per second) against the monotonic clock over about 20 ms: the
/// median of three 7 ms windows.
pub fn calibrate_tsc() -> u64 {
    let mut rates: Vec<u64> = (0..3)
        .map(|_| {
            let (t0, c0) = (Instant::now(), tsc());
            std::thread::sleep(Duration::from_millis(7));
            let (c1, t1) = (tsc(), Instant::now());
            (c1.wrapping_sub(c0) as f64 / (t1 - t0).as_secs_f64()) as u64
        })
        .collect();
    rates.sort_unstable();
    rates[1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rate_is_plausible() {
        let hz = super::calibrate_tsc();
        assert!((100_000_000..20_000_000_000).contains(&hz), "{hz} Hz");
    }
}
