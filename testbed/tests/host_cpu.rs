//! Host CPU per I/O on KVM: a short VMBus workload and a short IDE workload, each on its own guest.
//! Every row carries the three CPU fields, consistent (host = vCPU + devices); IDE, served on the vCPU
//! thread, costs vCPU CPU and next to no device-thread CPU, while VMBus's storvsp thread is charged to
//! the devices. No absolute value is asserted, only signs and shares.

use std::sync::Arc;
use std::time::Duration;

use host_vsp::backend::RamDisk;
use testbed::bench::{run_device, BenchOptions, DeviceKit, DeviceRun, IdeKit, VmbusKit};
use testbed::report::{self, Measurement};
use workload::WorkloadSpec;

fn run(kit: &dyn DeviceKit, specs: &[&str]) -> (DeviceRun, Vec<Measurement>) {
    let specs: Vec<WorkloadSpec> = specs
        .iter()
        .map(|s| WorkloadSpec::parse(s).unwrap())
        .collect();
    let options = BenchOptions::quiet(Duration::from_secs(60));
    let run = run_device(kit, Arc::new(RamDisk::new(32 << 20)), &specs, &options);
    let measurements = run
        .rows
        .iter()
        .map(|row| {
            row.outcome
                .clone()
                .unwrap_or_else(|e| panic!("{} {}: {e}\n{}", kit.name(), row.workload, run.console))
        })
        .collect();
    (run, measurements)
}

fn assert_consistent(what: &str, m: &Measurement) {
    let [host, vcpu, device] = m.cpu_per_io();
    for v in [host, vcpu, device] {
        assert!(v.is_finite() && v >= 0.0, "{what}: {:?}", m.cpu_per_io());
    }
    assert!(
        (host - (vcpu + device)).abs() <= 1e-9 * host.max(1.0),
        "{what}: host {host} != vcpu {vcpu} + device {device}"
    );
}

fn device_share(m: &Measurement) -> f64 {
    m.device_cpu_us_per_io / m.host_cpu_us_per_io
}

#[test]
fn cpu_per_io_is_split_between_the_vcpu_and_the_device_threads() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let (ide_run, ide) = run(&IdeKit, &["rr4k:k=rr,bs=4096,qd=1,n=200,seed=2,lba=0+8192"]);
    let (vmbus_run, vmbus) = run(
        &VmbusKit::default(),
        &["rr4k:k=rr,bs=4096,qd=1,n=2000,seed=2,lba=0+8192"],
    );

    // The threads counted as devices: VMBus's service and its storvsp channel thread, named as
    // host-vsp names them; the IDE disk has no thread of its own (its guest has the VMBus service's).
    let vsp: Vec<&String> = vmbus_run
        .device_threads
        .iter()
        .filter(|n| n.starts_with("vsp-storvsp-"))
        .collect();
    assert_eq!(vsp.len(), 1, "{:?}", vmbus_run.device_threads);
    assert!(vmbus_run
        .device_threads
        .iter()
        .any(|n| n == "vmbus-service"));
    assert!(
        !ide_run.device_threads.iter().any(|n| n.starts_with("vsp-")),
        "{:?}",
        ide_run.device_threads
    );

    let (ide, vmbus) = (&ide[0], &vmbus[0]);
    assert_consistent("ide", ide);
    assert_consistent("vmbus", vmbus);
    // IDE: every register access is handled on the vCPU thread.
    assert!(ide.vcpu_cpu_us_per_io > 0.0, "{ide:?}");
    assert!(ide.host_cpu_us_per_io > 0.0);
    // VMBus: storvsp's thread does the I/O, and it is charged to the devices.
    assert!(vmbus.device_cpu_us_per_io > 0.0, "{vmbus:?}");
    assert!(
        vmbus.vcpu_cpu_us_per_io > 0.0,
        "the guest's own code runs on the vCPU"
    );
    // The attribution: IDE's device share is next to nothing, VMBus's clearly not.
    assert!(
        device_share(ide) < 0.05,
        "IDE device share {:.3}",
        device_share(ide)
    );
    assert!(
        device_share(vmbus) > 4.0 * device_share(ide),
        "device shares: vmbus {:.3}, ide {:.3}",
        device_share(vmbus),
        device_share(ide)
    );

    // The report carries them.
    let rows: Vec<_> = ide_run
        .rows
        .iter()
        .chain(&vmbus_run.rows)
        .cloned()
        .collect();
    let json = report::json(&rows);
    for o in json.as_array().unwrap() {
        for key in [
            "host_cpu_us_per_io",
            "vcpu_cpu_us_per_io",
            "device_cpu_us_per_io",
        ] {
            assert!(o[key].as_f64().is_some_and(|v| v >= 0.0), "{key}: {o}");
        }
    }
    assert!(report::table(&rows)
        .lines()
        .next()
        .unwrap()
        .contains("cpu µs/IO"));
    eprintln!(
        "cpu µs/IO (vcpu + dev): ide {:.2} ({:.2} + {:.3}), vmbus {:.2} ({:.2} + {:.2})",
        ide.host_cpu_us_per_io,
        ide.vcpu_cpu_us_per_io,
        ide.device_cpu_us_per_io,
        vmbus.host_cpu_us_per_io,
        vmbus.vcpu_cpu_us_per_io,
        vmbus.device_cpu_us_per_io
    );
}
