//! Rate limits for the log lines a guest can trigger. A hostile guest can send malformed packets, bad
//! GPAs or invalid requests as fast as it likes; if every one of them logged a warning, the guest
//! would control how fast the host writes its logs (and how much disk and CPU that costs). Every
//! `warn`/`error` a guest can trigger repeatedly therefore goes through [`guest_warn!`] or
//! [`guest_error!`] instead of `tracing::warn!`/`tracing::error!`.
//!
//! Each call site of those macros has its own [`RateLimit`] (a `static` the macro declares): the first
//! [`BURST`] messages of an [`INTERVAL`] are logged, later ones in the same interval are only counted,
//! and the first message logged after them is preceded by one summary line at the same level saying
//! how many were suppressed ("rate limit: 1234 messages from this call site suppressed"). A site that
//! falls silent never prints its summary: the count is in no other place, which is the price of
//! needing no timer thread.
//!
//! [`RateLimit::admit_at`] takes the time explicitly, so the policy is tested with an injected clock;
//! [`RateLimit::admit`] reads the monotonic clock.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Messages a call site logs per [`INTERVAL`] before it is suppressed.
pub const BURST: u32 = 10;
/// The window of a call site's [`BURST`].
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Where one call site is in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the window started (time since the clock's origin), or `None` before the first message.
    start: Option<Duration>,
    /// Messages logged in this window.
    logged: u32,
    /// Messages suppressed since the last one logged.
    suppressed: u64,
}

/// The rate limit of one call site: at most `burst` messages per `interval`.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
}

impl RateLimit {
    /// A limit of `burst` messages per `interval` (a `burst` of 0 behaves as 1).
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst: if burst == 0 { 1 } else { burst },
            interval,
            window: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// The limit every [`guest_warn!`]/[`guest_error!`] site has: [`BURST`] per [`INTERVAL`].
    pub const fn per_site() -> Self {
        Self::new(BURST, INTERVAL)
    }

    /// [`admit_at`](Self::admit_at) the current time of the monotonic clock.
    pub fn admit(&self) -> Option<u64> {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        self.admit_at(ORIGIN.get_or_init(Instant::now).elapsed())
    }

    /// Whether a message at time `now` (since any fixed origin; never decreasing) may be logged:
    /// `Some(k)` to log it, `k` being how many messages were suppressed since the last one logged
    /// (log a summary first when `k > 0`); `None` to suppress it.
    pub fn admit_at(&self, now: Duration) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|start| now.saturating_sub(start) >= self.interval);
        if expired {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.burst {
            w.suppressed = w.suppressed.saturating_add(1);
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// Messages suppressed since the last one logged (not yet reported by a summary).
    pub fn suppressed(&self) -> u64 {
        self.window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suppressed
    }
}

/// `tracing::warn!` behind its call site's [`RateLimit`](crate::log_limit::RateLimit): for every
/// warning a guest can trigger repeatedly. Same arguments as `tracing::warn!`.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::__guest_log!(warn, $($arg)+) };
}

/// `tracing::error!` behind its call site's [`RateLimit`](crate::log_limit::RateLimit): for every
/// error a guest can trigger repeatedly. Same arguments as `tracing::error!`.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::__guest_log!(error, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __guest_log {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::RateLimit = $crate::log_limit::RateLimit::per_site();
        if let ::core::option::Option::Some(suppressed) = LIMIT.admit() {
            if suppressed > 0 {
                ::tracing::$level!(
                    suppressed,
                    "rate limit: {suppressed} messages from this call site suppressed"
                );
            }
            ::tracing::$level!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_per_interval_then_a_count_reported_with_the_next_message() {
        let limit = RateLimit::new(3, MS * 1000);
        let t0 = Duration::from_secs(50);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 3 logged, 7 suppressed in the first window.
        let first: Vec<Option<u64>> = (0..10).map(|i| limit.admit_at(at(i))).collect();
        assert_eq!(
            first,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(limit.suppressed(), 7);
        // Still inside the window (999 ms after its start).
        assert_eq!(limit.admit_at(at(999)), None);
        assert_eq!(limit.suppressed(), 8);
        // A new window: the first message carries the count, the count starts again.
        assert_eq!(limit.admit_at(at(1000)), Some(8));
        assert_eq!(limit.suppressed(), 0);
        assert_eq!(limit.admit_at(at(1001)), Some(0));
        assert_eq!(limit.admit_at(at(1002)), Some(0));
        assert_eq!(limit.admit_at(at(1003)), None);
        // A long silence: one window, not many.
        assert_eq!(limit.admit_at(at(60_000)), Some(1));
    }

    #[test]
    fn a_zero_burst_still_logs_one_message_per_interval() {
        let limit = RateLimit::new(0, MS * 10);
        assert_eq!(limit.admit_at(Duration::ZERO), Some(0));
        assert_eq!(limit.admit_at(MS * 5), None);
        assert_eq!(limit.admit_at(MS * 10), Some(1));
    }

    #[test]
    fn a_clock_going_backwards_never_panics_or_reopens_the_window() {
        let limit = RateLimit::new(1, MS * 10);
        assert_eq!(limit.admit_at(MS * 100), Some(0));
        assert_eq!(limit.admit_at(MS * 50), None);
        assert_eq!(limit.admit_at(MS * 110), Some(1));
    }

    /// Counts the events it sees, and the summaries among them.
    #[derive(Default)]
    struct Counter {
        events: AtomicU64,
        summaries: AtomicU64,
    }

    struct Subscriber(Arc<Counter>);

    impl tracing::Subscriber for Subscriber {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            self.0.events.fetch_add(1, Ordering::Relaxed);
            if event.metadata().fields().field("suppressed").is_some() {
                self.0.summaries.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_flooded_call_site_logs_its_burst_and_other_sites_are_not_affected() {
        let counter = Arc::new(Counter::default());
        tracing::subscriber::with_default(Subscriber(counter.clone()), || {
            for i in 0..10_000u32 {
                crate::guest_warn!(i, "flooded site");
            }
            crate::guest_error!("another site");
        });
        // One interval (the loop takes far less than INTERVAL): BURST lines of the flooded site and
        // the other site's one line; no summary yet (nothing was logged after the suppression).
        assert_eq!(counter.events.load(Ordering::Relaxed), u64::from(BURST) + 1);
        assert_eq!(counter.summaries.load(Ordering::Relaxed), 0);
    }
}
