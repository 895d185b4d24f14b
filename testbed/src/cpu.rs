//! Host CPU time of a measured window, split between the vCPU threads and the device threads.
//!
//! At every mark the handler, running on the vCPU thread that wrote the mark, takes a [`CpuSnapshot`]
//! ([`CpuSnapshot::around`]): its own thread CPU clock when it starts and when it ends, and in between
//! the CPU total of the partition's [`DeviceThreads`] (every VMBus, storvsp and virtio-blk thread, see
//! `host_vsp::device_threads`) and the CPU clock of every other vCPU thread (hypervisor-lite's
//! `VcpuStats::cpu_time`: each vCPU thread's `CLOCK_THREAD_CPUTIME_ID`, read from the marking thread
//! through `pthread_getcpuclockid`; [`CpuSnapshot::with_other_vcpus`]). A window
//! ([`CpuWindow::between`]) charges
//! - the **vCPUs** with the marking thread's clock from the end of the start mark's handler to the
//!   start of the end mark's, so the handler's own bookkeeping stays outside, plus the other vCPU
//!   threads' clocks from one handler to the other (their few µs inside the handlers included). This is
//!   everything the vCPU threads ran: the guest's code (its drivers and workload engine run on these
//!   threads, in guest mode), KVM's in-kernel exits and halt polling, user exits and the device models
//!   run inside them — the emulated IDE disk is one, so its cost is here;
//! - the **devices** with the difference of their total: threads that start or exit inside the window
//!   are covered (an exiting thread leaves its CPU time behind), up to the few µs of a thread's teardown.
//!
//! Limit: a window whose two marks were written on different threads (different vCPUs) has no figure
//! ([`CpuWindow::between`] is `None`); the testbed's guest writes every mark on its BSP.

use std::thread::ThreadId;
use std::time::Duration;

use host_vsp::device_threads::{thread_cpu_time, DeviceCpu, DeviceThreads};
use hypervisor_lite::StatsSnapshot;

/// CPU clocks read at one mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// The thread that wrote the mark (the vCPU's).
    pub vcpu_thread: ThreadId,
    /// Its CPU time when the mark's handler began.
    pub vcpu_entry: Duration,
    /// Its CPU time when the handler ended.
    pub vcpu_exit: Duration,
    /// The device threads' CPU total, read inside the handler.
    pub devices: DeviceCpu,
    /// The other vCPU threads' CPU total, read inside the handler (zero with one vCPU).
    pub other_vcpus: Duration,
}

impl CpuSnapshot {
    /// Run `f` (the rest of the mark's bookkeeping) between the calling thread's two clock reads,
    /// reading `devices` after it.
    pub fn around<T>(devices: &DeviceThreads, f: impl FnOnce() -> T) -> (T, Self) {
        let vcpu_entry = thread_cpu_time();
        let out = f();
        let devices = devices.cpu();
        let vcpu_exit = thread_cpu_time();
        let snapshot = Self {
            vcpu_thread: std::thread::current().id(),
            vcpu_entry,
            vcpu_exit,
            devices,
            other_vcpus: Duration::ZERO,
        };
        (out, snapshot)
    }

    /// This snapshot with the other vCPU threads' CPU total from `stats` (taken inside the handler of
    /// the mark VP `vp` wrote): every vCPU's [`VcpuStats::cpu_time`] but `vp`'s.
    ///
    /// [`VcpuStats::cpu_time`]: hypervisor_lite::stats::VcpuStats::cpu_time
    pub fn with_other_vcpus(self, stats: &StatsSnapshot, vp: u32) -> Self {
        Self {
            other_vcpus: stats
                .vcpus
                .iter()
                .filter(|v| v.vp_index != vp)
                .map(|v| v.cpu_time)
                .sum(),
            ..self
        }
    }
}

/// CPU time spent between two marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuWindow {
    /// The vCPU threads' (all of them).
    pub vcpu: Duration,
    /// The device threads'.
    pub device: Duration,
}

impl CpuWindow {
    /// The window from `start` to `end` (see the module docs); `None` if another thread wrote them.
    pub fn between(start: &CpuSnapshot, end: &CpuSnapshot) -> Option<Self> {
        (start.vcpu_thread == end.vcpu_thread).then(|| Self {
            vcpu: end.vcpu_entry.saturating_sub(start.vcpu_exit)
                + end.other_vcpus.saturating_sub(start.other_vcpus),
            device: end.devices.total.saturating_sub(start.devices.total),
        })
    }

    /// Both together.
    pub fn host(&self) -> Duration {
        self.vcpu + self.device
    }

    /// Host, vCPU and device µs per I/O (zeros when no I/O completed).
    pub fn us_per_io(&self, ios: u64) -> CpuPerIo {
        CpuPerIo {
            host: us_per_io(self.host(), ios),
            vcpu: us_per_io(self.vcpu, ios),
            device: us_per_io(self.device, ios),
        }
    }
}

/// CPU µs per I/O of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuPerIo {
    /// vCPU and devices together.
    pub host: f64,
    /// The vCPU thread's.
    pub vcpu: f64,
    /// The device threads'.
    pub device: f64,
}

/// `cpu` in µs divided by `ios` (0 when none).
pub fn us_per_io(cpu: Duration, ios: u64) -> f64 {
    if ios == 0 {
        0.0
    } else {
        cpu.as_nanos() as f64 / 1e3 / ios as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entry_us: u64, exit_us: u64, devices_us: u64) -> CpuSnapshot {
        CpuSnapshot {
            vcpu_thread: std::thread::current().id(),
            vcpu_entry: Duration::from_micros(entry_us),
            vcpu_exit: Duration::from_micros(exit_us),
            devices: DeviceCpu {
                total: Duration::from_micros(devices_us),
                live: 2,
                exited: 0,
            },
            other_vcpus: Duration::ZERO,
        }
    }

    #[test]
    fn the_other_vcpus_threads_are_charged_from_handler_to_handler() {
        let with = |s: CpuSnapshot, others_us| CpuSnapshot {
            other_vcpus: Duration::from_micros(others_us),
            ..s
        };
        let w = CpuWindow::between(
            &with(snap(100, 130, 0), 7_000),
            &with(snap(2_130, 2_160, 0), 10_500),
        )
        .unwrap();
        assert_eq!(w.vcpu, Duration::from_micros(2_000 + 3_500));
        let stats = |times: &[(u32, u64)]| StatsSnapshot {
            taken: std::time::Instant::now(),
            vcpus: times
                .iter()
                .map(|&(vp, us)| hypervisor_lite::stats::VcpuStats {
                    vp_index: vp,
                    cpu_time: Duration::from_micros(us),
                    ..Default::default()
                })
                .collect(),
            vm: Default::default(),
        };
        let s = snap(0, 1, 0).with_other_vcpus(&stats(&[(0, 900), (1, 40), (2, 2)]), 0);
        assert_eq!(
            s.other_vcpus,
            Duration::from_micros(42),
            "VP 0 wrote the mark"
        );
        let one = snap(0, 1, 0).with_other_vcpus(&stats(&[(0, 900)]), 0);
        assert_eq!(one.other_vcpus, Duration::ZERO);
    }

    #[test]
    fn a_window_runs_from_the_start_handlers_end_to_the_end_handlers_start() {
        let w = CpuWindow::between(&snap(100, 130, 5_000), &snap(2_130, 2_160, 6_500)).unwrap();
        assert_eq!(w.vcpu, Duration::from_micros(2_000));
        assert_eq!(w.device, Duration::from_micros(1_500));
        assert_eq!(w.host(), Duration::from_micros(3_500));
        // Clocks never run backwards, but a snapshot pair out of order gives zero, not a wrap.
        let back = CpuWindow::between(&snap(500, 600, 900), &snap(100, 130, 50)).unwrap();
        assert_eq!(back, CpuWindow::default());
    }

    #[test]
    fn marks_from_different_threads_have_no_window() {
        let here = snap(0, 1, 0);
        let there = std::thread::spawn(|| snap(10, 11, 5)).join().unwrap();
        assert_eq!(CpuWindow::between(&here, &there), None);
    }

    #[test]
    fn per_io_divides_and_host_is_the_sum() {
        let w = CpuWindow {
            vcpu: Duration::from_nanos(12_345_678),
            device: Duration::from_nanos(3_000_001),
        };
        let p = w.us_per_io(1000);
        assert!((p.vcpu - 12.345_678).abs() < 1e-9);
        assert!((p.device - 3.000_001).abs() < 1e-9);
        assert!((p.host - (p.vcpu + p.device)).abs() < 1e-9);
        assert_eq!(w.us_per_io(0), CpuPerIo::default());
        assert_eq!(us_per_io(Duration::from_millis(1), 4), 250.0);
    }

    #[test]
    fn the_handlers_own_work_is_outside_the_window() {
        let devices = DeviceThreads::new();
        let (sum, s) = CpuSnapshot::around(&devices, || {
            let start = thread_cpu_time();
            let mut x = 0u64;
            while thread_cpu_time() - start < Duration::from_millis(2) {
                x = std::hint::black_box(x + 1);
            }
            x
        });
        assert!(sum > 0);
        assert!(s.vcpu_exit - s.vcpu_entry >= Duration::from_millis(2));
        assert_eq!(s.vcpu_thread, std::thread::current().id());
        assert_eq!(s.devices, DeviceCpu::default(), "no device threads");
    }
}
