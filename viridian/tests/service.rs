//! The `viridian` binary as its users run it, on real KVM: a guest with two disks and the ICs,
//! managed through `viridian ctl` (status, heartbeat health, disk hot-add with verified I/O in the
//! guest, rescind, graceful shutdown; the guest's clock set by time sync, its KVP values listed and a
//! key pushed), SIGTERM, config errors (exit 2), a guest that fails (exit 3)
//! and one that crashes (exit 4).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_viridian");
/// Longest any step waits (a loaded CI machine boots slowly).
const STEP: Duration = Duration::from_secs(60);

/// A running `viridian run` whose log lines arrive on a channel; killed on drop.
struct Service {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    socket: PathBuf,
}

impl Service {
    fn start(config: &Path, socket: &Path) -> Self {
        Self::start_with(config, socket, &[], &[])
    }

    fn start_with(config: &Path, socket: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(None, config, socket, args, env)
    }

    /// Starts the service, inside network namespace `netns` if given (`ip netns exec`).
    fn start_in(
        netns: Option<&str>,
        config: &Path,
        socket: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .arg("run")
            .arg(config)
            .arg("--api-socket")
            .arg(socket)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting viridian");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[viridian] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            socket: socket.to_path_buf(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no log line with `{needle}` in {STEP:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("viridian ended before logging `{needle}`")
                }
            }
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running viridian ctl");
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ctl(&["status"])).expect("status is JSON")
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for viridian") {
                // Collect what is left of the log.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "viridian did not exit in {STEP:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Service {
    /// `Name:` lines of every thread's /proc status: (thread name, value).
    fn thread_status(&self, field: &str) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|t| {
                let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
                let line = |key: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                };
                Some((line("Name:")?, line(field)?))
            })
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("guest.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A raw image whose first 64 KiB hold a pattern; returns its FNV-1a hash as the guest prints it.
fn image_with_pattern(path: &Path, mib: u64, seed: u8) -> String {
    let mut bytes = vec![0u8; (mib << 20) as usize];
    for (i, b) in bytes.iter_mut().take(64 << 10).enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    std::fs::write(path, &bytes).unwrap();
    let hash = bytes[..64 << 10]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

fn kvm() -> bool {
    hypervisor_lite::testing::kvm_or_skip()
}

#[test]
fn two_disks_heartbeat_hot_add_verified_rescind_and_graceful_shutdown_through_ctl() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hash_a = image_with_pattern(&dir.path().join("a.img"), 4, 1);
    let hash_b = image_with_pattern(&dir.path().join("b.img"), 4, 2);
    let config = write_config(
        dir.path(),
        "[guest]\ncmdline = \"serve:verify-writes\"\nmemory_mib = 64\n\
         [ic]\nheartbeat_interval_ms = 100\n\
         [[disk]]\nname = \"a\"\npath = \"a.img\"\n\
         [[disk]]\nname = \"b\"\npath = \"b.img\"\n",
    );
    let socket = dir.path().join("api.sock");
    let mut service = Service::start(&config, &socket);
    // The guest checks both disks: what it read is what the images hold.
    assert!(service.wait_line("serve-disk relid=1 ").contains(&hash_a));
    assert!(service.wait_line("serve-disk relid=2 ").contains(&hash_b));
    service.wait_line("serve-disk-verified relid=2");

    // Heartbeats at 100 ms: within a few seconds the guest has answered several.
    let deadline = Instant::now() + STEP;
    let status = loop {
        let status = service.status();
        if status["heartbeat"]["answered"].as_u64().unwrap_or(0) >= 5 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats not answered: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["state"], "running");
    assert_eq!(status["heartbeat"]["health"], "healthy", "{status}");
    assert_eq!(status["heartbeat"]["errors"], 0);
    let disks = status["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["name"], "a");
    assert_eq!(disks[1]["name"], "b");
    // Each disk: read 64 KiB, write 64 KiB, flush, read 64 KiB back, after INQUIRY-free open
    // (read capacity): at least the 3 data transfers moved their bytes.
    for d in disks {
        assert!(d["bytes"].as_u64().unwrap() >= 3 * (64 << 10), "{d}");
        assert_eq!(d["failed_requests"], 0, "{d}");
    }
    assert_eq!(status["vcpus"].as_array().unwrap().len(), 1);
    assert!(status["device_failures"].as_array().unwrap().is_empty());
    // Every thread of the service — vCPU, device, API, console, signal — runs under a filter.
    let seccomp = service.thread_status("Seccomp:");
    assert!(seccomp.len() >= 8, "{seccomp:?}");
    for name in [
        "vcpu0",
        "vmbus-service",
        "vsp-heartbeat",
        "viridian-api",
        "viridian-consol",
    ] {
        assert!(
            seccomp.iter().any(|(n, _)| n.starts_with(name)),
            "no {name} thread: {seccomp:?}"
        );
    }
    assert!(seccomp.iter().all(|(_, mode)| mode == "2"), "{seccomp:?}");

    // Hot-add a third disk: the guest sees it, checks it and verifies a write.
    let hash_c = image_with_pattern(&dir.path().join("c.img"), 4, 3);
    let added: Value = serde_json::from_str(&service.ctl(&[
        "disk",
        "add",
        "c",
        dir.path().join("c.img").to_str().unwrap(),
    ]))
    .unwrap();
    let relid = added["relid"].as_u64().unwrap();
    assert!(service
        .wait_line(&format!("serve-disk relid={relid} "))
        .contains(&hash_c));
    let verified = service.wait_line(&format!("serve-disk-verified relid={relid}"));
    let lba: u64 = verified
        .rsplit("lba=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let image = std::fs::read(dir.path().join("c.img")).unwrap();
    let at = (lba * 512) as usize;
    assert!(
        image[at..].starts_with(format!("viridian relid {relid} block 0\n").as_bytes()),
        "the guest's verified write is in the image"
    );
    assert_eq!(service.status()["disks"].as_array().unwrap().len(), 3);

    // Remove it: the guest sees the rescind.
    service.ctl(&["disk", "remove", "c"]);
    service.wait_line(&format!("serve-disk-rescinded relid={relid}"));
    assert_eq!(service.status()["disks"].as_array().unwrap().len(), 2);

    let metrics = service.ctl(&["metrics"]);
    assert!(
        metrics.contains("viridian_heartbeat_healthy 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("viridian_disk_bytes_total{disk=\"a\"}"),
        "{metrics}"
    );

    // Graceful shutdown through the IC: the guest acknowledges and powers off, status 0.
    let answer = service.ctl(&["shutdown"]);
    assert!(answer.contains("shut-down"), "{answer}");
    service.wait_line("serve-shutdown");
    let exit = service.wait_exit();
    assert_eq!(exit.code(), Some(0), "exit status");
    assert!(!socket.exists(), "the API socket is removed at exit");
}

#[test]
fn sigterm_shuts_the_guest_down_through_the_ic_and_exits_0() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[guest]\nmemory_mib = 64\n[[disk]]\npath = \"new.img\"\ncreate_size_mib = 1\n",
    );
    let mut service = Service::start(&config, &dir.path().join("api.sock"));
    service.wait_line("serve-disk relid=1 ");
    let pid = service.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    service.wait_line("serve-shutdown");
    assert_eq!(service.wait_exit().code(), Some(0));
    // The created image is sparse and of the asked size.
    let meta = std::fs::metadata(dir.path().join("new.img")).unwrap();
    assert_eq!(meta.len(), 1 << 20);
}

fn run_to_exit(dir: &Path, config_body: &str) -> (Option<i32>, String) {
    let config = write_config(dir, config_body);
    let mut child = Command::new(BIN)
        .arg("run")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), stderr)
}

#[test]
fn config_errors_exit_2_naming_the_key_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(dir.path(), "[[disk]]\npath = \"missing.img\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`disk[0].path`"), "{stderr}");
    assert!(stderr.contains("missing.img does not exist"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");

    let (code, stderr) = run_to_exit(dir.path(), "[guest]\nmemroy_mib = 64\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `memroy_mib`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    let missing = Command::new(BIN)
        .args(["run", "/nonexistent/viridian.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/viridian.toml"),
        "{stderr}"
    );
}

#[test]
fn a_guest_that_reports_failure_exits_3_and_one_that_triple_faults_exits_4() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(
        dir.path(),
        "[guest]\ncmdline = \"no-such-scenario\"\nmemory_mib = 64\n",
    );
    assert_eq!(code, Some(3), "{stderr}");
    // The kernel reports the 1-based index of the scenario that failed: 2, after the TSC rate.
    assert!(stderr.contains("reporting failure (code 2)"), "{stderr}");

    let triple = hypervisor_lite::testing::guest_elf("triple");
    let (code, stderr) = run_to_exit(
        dir.path(),
        &format!(
            "[guest]\nkernel = \"{}\"\nmemory_mib = 16\n[ic]\nheartbeat = false\nshutdown = false\n",
            triple.display()
        ),
    );
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("triple-faulted"), "{stderr}");
}

fn two_disk_config(dir: &Path) -> PathBuf {
    image_with_pattern(&dir.join("a.img"), 4, 1);
    image_with_pattern(&dir.join("b.img"), 4, 2);
    write_config(
        dir,
        "[guest]\ncmdline = \"serve:verify-writes\"\nmemory_mib = 64\n\
         [ic]\nheartbeat_interval_ms = 100\n\
         [[disk]]\nname = \"a\"\npath = \"a.img\"\n\
         [[disk]]\nname = \"b\"\npath = \"b.img\"\n",
    )
}

/// A service running [`two_disk_config`] with `fault` injected (`VIRIDIAN_INJECT`), once the
/// guest has checked disk a (relid 1); the directory holds the images and lives as long as it.
fn two_disks_with_fault(fault: &str) -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let config = two_disk_config(dir.path());
    let mut service = Service::start_with(
        &config,
        &dir.path().join("api.sock"),
        &[],
        &[("VIRIDIAN_INJECT", fault)],
    );
    service.wait_line("serve-disk-verified relid=1");
    (dir, service)
}

/// Waits until the guest answered `more` heartbeats beyond what it had answered at the call.
fn heartbeats_go_on(service: &Service, more: u64) -> Value {
    let start = service.status()["heartbeat"]["answered"].as_u64().unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        let status = service.status();
        if status["heartbeat"]["answered"].as_u64().unwrap() >= start + more {
            return status;
        }
        assert!(Instant::now() < deadline, "heartbeats stopped: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_device_thread_panic_is_contained_the_heartbeat_goes_on_and_status_shows_the_channel_failed() {
    if !kvm() {
        return;
    }
    let (_dir, mut service) = two_disks_with_fault("panic:b");
    // b's device thread panics when the guest closes its channel after the check: the service
    // reports it and rescinds the channel, and the guest lets the relid go.
    service.wait_line("serve-disk-verified relid=2");
    service.wait_line("serve-disk-rescinded relid=2");
    let status = heartbeats_go_on(&service, 5);
    assert_eq!(status["heartbeat"]["health"], "healthy", "{status}");
    let failures = status["device_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{status}");
    assert_eq!(failures[0]["relid"], 2);
    assert!(failures[0]["what"]
        .as_str()
        .unwrap()
        .contains("injected device-thread panic"));
    let b = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["relid"] == 2)
        .unwrap()
        .clone();
    assert!(b["failed"].as_str().unwrap().contains("injected"), "{b}");
    assert_ne!(b["state"], "open", "{b}");
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn a_panic_in_a_disk_request_fails_only_that_request_with_the_device_going_on() {
    if !kvm() {
        return;
    }
    let (_dir, mut service) = two_disks_with_fault("io-panic:b");
    let failed = service.wait_line("serve-disk-failed relid=2");
    assert!(failed.contains("write failed"), "{failed}");
    let status = heartbeats_go_on(&service, 3);
    assert!(
        status["device_failures"].as_array().unwrap().is_empty(),
        "{status}"
    );
    let b = &status["disks"].as_array().unwrap()[1];
    assert_eq!(b["name"], "b");
    assert_eq!(b["io_panics"], 1, "{b}");
    assert_eq!(b["failed_requests"], 1, "{b}");
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn a_forbidden_syscall_from_a_device_thread_is_refused_and_only_its_request_fails() {
    if !kvm() {
        return;
    }
    let (_dir, mut service) = two_disks_with_fault("forbidden-syscall:b");
    let refused = service.wait_line("injected forbidden syscall");
    assert!(refused.contains("was refused"), "{refused}");
    assert!(
        refused.contains("vsp-storvsp"),
        "on the device thread: {refused}"
    );
    service.wait_line("serve-disk-failed relid=2");
    let status = heartbeats_go_on(&service, 3);
    assert!(
        status["device_failures"].as_array().unwrap().is_empty(),
        "{status}"
    );
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn the_service_drops_to_an_unprivileged_user_once_its_files_are_open() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = two_disk_config(dir.path());
    let mut service = Service::start_with(
        &config,
        &dir.path().join("api.sock"),
        &["--user", "65534", "--group", "65534"],
        &[],
    );
    service.wait_line("dropped privileges");
    service.wait_line("serve-disk-verified relid=2");
    let uids = service.thread_status("Uid:");
    assert!(!uids.is_empty());
    for (name, uid) in &uids {
        assert!(
            uid.split_whitespace().all(|id| id == "65534"),
            "thread {name} runs as {uid}"
        );
    }
    for (name, gid) in service.thread_status("Gid:") {
        assert!(
            gid.split_whitespace().all(|id| id == "65534"),
            "{name}: {gid}"
        );
    }
    heartbeats_go_on(&service, 3);
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn a_network_adapter_on_a_tap_answers_icmp_from_the_host_and_status_counts_its_frames() {
    if !kvm() {
        return;
    }
    let Some(ns) = host_vsp::net::netns::Netns::for_test("service-net") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[guest]\ncmdline = \"serve:ip=198.18.0.2/24\"\nmemory_mib = 64\n\
         [[net]]\nname = \"lan\"\ntap = \"vtap0\"\nmac = \"00:15:5d:18:00:02\"\n",
    );
    // The service makes the TAP in its namespace: the test's namespace.
    let mut service = Service::start_in(
        Some(ns.name()),
        &config,
        &dir.path().join("api.sock"),
        &[],
        &[],
    );
    service.wait_line("serve-nic relid=");
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "vtap0"]);
    ns.ip(&["link", "set", "dev", "vtap0", "up"]);
    let rtts = ns.run(|| host_vsp::net::netns::ping([198, 18, 0, 2], 3));
    assert_eq!(rtts.len(), 3, "every echo request answered");
    let status = service.status();
    let lan = &status["nets"][0];
    assert_eq!(lan["name"], "lan");
    assert_eq!(lan["tap"], "vtap0");
    assert_eq!(lan["mac"], "00:15:5d:18:00:02");
    assert_eq!(lan["state"], "open", "{lan}");
    assert!(
        lan["rx_frames"].as_u64().unwrap() >= 4,
        "ARP + 3 echo requests: {lan}"
    );
    assert!(
        lan["tx_frames"].as_u64().unwrap() >= 4,
        "ARP reply + 3 echo replies: {lan}"
    );
    // The device thread that moves the frames is confined too.
    let seccomp = service.thread_status("Seccomp:");
    assert!(
        seccomp.iter().any(|(n, _)| n.starts_with("vsp-netvsp")),
        "{seccomp:?}"
    );
    assert!(seccomp.iter().all(|(_, mode)| mode == "2"), "{seccomp:?}");
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn the_sdk_example_guest_boots_from_its_example_config_serves_the_ics_and_reads_its_disk() {
    if !kvm() {
        return;
    }
    // The example config as it is, run from a directory of its own (its image is created there).
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sdk-example.toml");
    let body = std::fs::read_to_string(example).unwrap().replace(
        "heartbeat_interval_ms = 1000",
        "heartbeat_interval_ms = 100",
    );
    let config = write_config(dir.path(), &body);
    let mut service = Service::start(&config, &dir.path().join("api.sock"));
    service.wait_line("example: hypervisor \"Microsoft Hv\"");
    service.wait_line("example: 2 integration components");
    // A created image is all zeros: the hash of 64 KiB of zeros.
    let zeros = vec![0u8; 64 << 10]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    assert!(service
        .wait_line("example: disk relid=1 ")
        .contains(&format!("hash={zeros:016x}")));
    let deadline = Instant::now() + STEP;
    while service.status()["heartbeat"]["answered"]
        .as_u64()
        .unwrap_or(0)
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the example answers no heartbeat"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(service.status()["heartbeat"]["health"], "healthy");
    let answer = service.ctl(&["shutdown"]);
    assert!(answer.contains("shut-down"), "{answer}");
    service.wait_line("example: shutdown requested");
    assert_eq!(service.wait_exit().code(), Some(0));
}

/// The host's UTC now, 100 ns units since 1970.
fn utc_100ns() -> i64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        / 100) as i64
}

/// The number after `key=` in a log line.
fn field(line: &str, key: &str) -> i64 {
    let pattern = format!("{key}=");
    let at = line
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + pattern.len();
    line[at..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key}= is no number in {line}"))
}

#[test]
fn time_sync_sets_the_guests_clock_and_ctl_kvp_lists_and_pushes_values() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[guest]\nmemory_mib = 64\n[ic]\ntimesync_interval_ms = 200\n",
    );
    let before = utc_100ns();
    let mut service = Service::start(&config, &dir.path().join("api.sock"));
    // The guest's clock starts at the epoch; the SYNC sets it to the host's UTC: it reads no
    // earlier than the host's time before the service started, and no later than when its line
    // reached us.
    let start = service.wait_line("serve-clock-start");
    assert!(field(&start, "clock") < 10_000_000 * 3600, "{start}");
    let sync = service.wait_line("serve-timesync kind=sync");
    let seen = utc_100ns();
    let clock = field(&sync, "clock");
    assert!(
        (before..=seen).contains(&clock),
        "guest clock {clock} outside [{before}, {seen}]: {sync}"
    );
    service.wait_line("serve-timesync kind=sample");
    let deadline = Instant::now() + STEP;
    let status = loop {
        let status = service.status();
        if status["timesync"]["answered"].as_u64().unwrap_or(0) >= 3
            && status["kvp"]["enumerations"].as_u64().unwrap_or(0) >= 1
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "time sync or KVP stalled: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ts = &status["timesync"];
    assert_eq!(ts["version"], "4.0", "{ts}");
    assert_eq!(ts["syncs"], 1);
    assert_eq!(ts["errors"], 0, "{ts}");
    // The offset (UTC minus reference time) is the UTC at reference time 0: when the partition was
    // made, after `before`.
    let created = ts["last_offset_100ns"].as_i64().unwrap() - 116_444_736_000_000_000;
    assert!((before..=utc_100ns()).contains(&created), "{ts}");
    let kvp = &status["kvp"];
    assert_eq!(kvp["values"]["HostName"], "viridian-guest", "{kvp}");
    assert_eq!(kvp["values"]["OSName"], "viridian guest kernel");
    assert_eq!(kvp["errors"], 0);
    for device in ["timesync", "kvp"] {
        assert!(
            status["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["device"] == device && c["state"] == "open"),
            "{device}: {status}"
        );
    }

    // ctl kvp: a fresh enumeration of the guest's values.
    let listed: Value = serde_json::from_str(&service.ctl(&["kvp"])).unwrap();
    assert_eq!(listed["pool"], 2);
    assert_eq!(
        listed["values"]["FullyQualifiedDomainName"],
        "viridian-guest"
    );
    assert_eq!(listed["values"].as_object().unwrap().len(), 9, "{listed}");
    // ctl kvp set: the guest stores and prints the key, and a GET returns it from the guest.
    service.ctl(&["kvp", "set", "viridian.greeting", "hello-guest"]);
    service.wait_line("serve-kvp-set pool=0 key=viridian.greeting value=hello-guest stored=1");
    let got: Value =
        serde_json::from_str(&service.ctl(&["kvp", "get", "viridian.greeting"])).unwrap();
    assert_eq!(got["value"], "hello-guest", "{got}");
    let missing: Value = serde_json::from_str(&service.ctl(&["kvp", "get", "absent"])).unwrap();
    assert!(missing["value"].is_null(), "{missing}");
    let refused = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&service.socket)
        .args(["kvp", "set", "bad key", "v"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));

    let metrics = service.ctl(&["metrics"]);
    assert!(
        metrics.contains("viridian_timesync_messages_total{kind=\"sync\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("viridian_kvp_guest_values 9"), "{metrics}");
    assert!(
        metrics.contains("viridian_timesync_answered_total"),
        "{metrics}"
    );
    service.ctl(&["shutdown"]);
    assert_eq!(service.wait_exit().code(), Some(0));
}

#[test]
fn a_four_vcpu_guest_runs_under_the_service_with_every_vcpu_thread_confined() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[guest]\nmemory_mib = 64\nvcpus = 4\n[ic]\nheartbeat_interval_ms = 100\n\
         [[disk]]\npath = \"new.img\"\ncreate_size_mib = 1\n",
    );
    let mut service = Service::start(&config, &dir.path().join("api.sock"));
    service.wait_line("serve-disk relid=1 ");
    let deadline = Instant::now() + STEP;
    let status = loop {
        let status = service.status();
        if status["heartbeat"]["answered"].as_u64().unwrap_or(0) >= 3 {
            break status;
        }
        assert!(Instant::now() < deadline, "no heartbeats: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["heartbeat"]["health"], "healthy", "{status}");
    assert_eq!(status["vcpus"].as_array().unwrap().len(), 4, "{status}");
    let seccomp = service.thread_status("Seccomp:");
    for vp in 0..4 {
        let name = format!("vcpu{vp}");
        assert!(
            seccomp
                .iter()
                .any(|(n, mode)| n.starts_with(&name) && mode == "2"),
            "{name} confined: {seccomp:?}"
        );
    }
    // The guest's power-off (from its BSP) ends every vCPU: status 0.
    service.ctl(&["shutdown"]);
    service.wait_line("serve-shutdown");
    assert_eq!(service.wait_exit().code(), Some(0));
}
