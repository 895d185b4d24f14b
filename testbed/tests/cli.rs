//! The `testbed` binary as a user runs it: an existing image survives a read-only run byte for byte and
//! its reads are verified; writing to it without `--overwrite`, a workload that does not fit the disk
//! and a bad flag are one error each (exit 2) before any guest boots; `--json -` writes the document to
//! stdout; a new image is created sparse; SIGINT still reports what finished (exit 130).

use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn testbed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    testbed().args(args).output().expect("spawning testbed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("testbed-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// An image whose every byte is pseudo-random (nothing like the testbed's pattern).
fn make_image(path: &Path, bytes: usize) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

fn hash(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(&std::fs::read(path).unwrap());
    h.finish()
}

/// The one error line of a setup error.
fn assert_one_error(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[test]
fn a_read_only_run_leaves_an_existing_image_byte_identical_and_verifies_its_reads() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let path = temp("readonly.img");
    make_image(&path, 8 << 20);
    let before = hash(&path);
    let out = run(&[
        "--image",
        path.to_str().unwrap(),
        "--devices",
        "ramdisk,virtio,vmbus",
        "--workload",
        "r:k=rr,bs=4k,qd=8,n=300,seed=5",
        "--workload",
        "s:k=sr,bs=64k,qd=2,n=60,lba=4096+4096",
        "--json",
        "-",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hash(&path), before, "a read-only run changed the image");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["backend"]["kind"], "file");
    assert_eq!(doc["backend"]["read_only"], true);
    assert_eq!(doc["backend"]["created"], false);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        // Every row's reads were checked against the file (a pattern check would fail them all).
        assert_eq!(row["status"], "ok", "{row}");
        assert!(row["ios"].as_u64().unwrap() > 0);
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn writes_to_an_existing_image_without_overwrite_exit_2_and_leave_it_untouched() {
    let path = temp("nooverwrite.img");
    make_image(&path, 4 << 20);
    let before = hash(&path);
    // The default workloads include a random write.
    let out = run(&["--image", path.to_str().unwrap(), "--devices", "ramdisk"]);
    let err = assert_one_error(&out, 2);
    assert!(
        err.contains("--overwrite") && err.contains("rw4k-qd32"),
        "{err}"
    );
    let out = run(&[
        "--image",
        path.to_str().unwrap(),
        "--workload",
        "w:k=mix90,bs=4k,n=10",
    ]);
    let err = assert_one_error(&out, 2);
    assert!(err.contains("workload w would overwrite"), "{err}");
    assert!(!err.contains("booting"), "{err}");
    assert_eq!(hash(&path), before);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_oversized_workload_exits_2_before_any_guest_boots() {
    let out = run(&[
        "--disk-mib",
        "16",
        "--workload",
        "big:k=rr,bs=4k,lba=40000+10",
    ]);
    let err = assert_one_error(&out, 2);
    assert!(err.contains("workload `big`"), "{err}");
    assert!(err.contains("does not fit"), "{err}");
    assert!(!err.contains("booting"), "{err}");
    // An image too small for an explicit range, likewise, and the image is not touched.
    let path = temp("small.img");
    make_image(&path, 1 << 20);
    let before = hash(&path);
    let out = run(&[
        "--image",
        path.to_str().unwrap(),
        "--workload",
        "r:k=sr,bs=4k,lba=0+4096",
    ]);
    assert!(assert_one_error(&out, 2).contains("workload `r`"));
    assert_eq!(hash(&path), before);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_bad_flag_or_workload_exits_2_with_one_message() {
    let out = run(&["--no-such-flag"]);
    let err = assert_one_error(&out, 2);
    assert!(err.contains("--no-such-flag"), "{err}");
    let out = run(&["--workload", "x:k=zz,bs=4k"]);
    let err = assert_one_error(&out, 2);
    assert!(err.contains("invalid value `zz` for `k`"), "{err}");
    let out = run(&["--devices", "floppy"]);
    assert!(assert_one_error(&out, 2).contains("unknown device `floppy`"));
    let out = run(&["--json", "-", "--svg", "-"]);
    assert_one_error(&out, 2);
    let out = run(&["--nics", "tokenring"]);
    assert!(assert_one_error(&out, 2).contains("unknown NIC `tokenring`"));
    let out = run(&["--nics", "netvsc", "--no-net"]);
    assert_one_error(&out, 2);
    let out = run(&["--net-flood", "0"]);
    assert!(assert_one_error(&out, 2).contains("--net-flood"));
    for vcpus in ["5", "0"] {
        let out = run(&["--vcpus", vcpus, "--devices", "vmbus"]);
        assert!(assert_one_error(&out, 2).contains("--vcpus"), "{vcpus}");
    }
}

#[test]
fn help_documents_workloads_devices_and_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for section in [
        "WORKLOADS",
        "DEVICES",
        "NETWORK",
        "VCPUS",
        "--vcpus",
        "DISKS AND DATA",
        "OUTPUT",
        "EXIT STATUS",
    ] {
        assert!(help.contains(section), "{section}\n{help}");
    }
}

#[test]
fn json_to_stdout_is_parseable_with_its_schema_and_the_table_goes_to_stderr() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let out = run(&[
        "--devices",
        "ramdisk",
        "--disk-mib",
        "8",
        "--workload",
        "r:k=rr,bs=4k,n=100",
        "--json",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["schema_version"], 2);
    assert_eq!(doc["tool"]["name"], "testbed");
    assert_eq!(doc["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["tsc_hz"].as_u64().unwrap() > 100_000_000);
    assert_eq!(doc["backend"]["kind"], "ram");
    assert_eq!(doc["backend"]["bytes"], 8 << 20);
    assert_eq!(doc["interrupted"], false);
    assert_eq!(doc["rows"][0]["status"], "ok");
    let err = stderr(&out);
    assert!(err.contains("device ") && err.contains("ramdisk*"), "{err}");
    assert!(!Path::new("-").exists(), "a file named - was written");
}

#[test]
fn a_new_image_is_created_sparse_and_its_reads_verified() {
    use std::os::unix::fs::MetadataExt;
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let path = temp("new.img");
    let _ = std::fs::remove_file(&path);
    let out = run(&[
        "--image",
        path.to_str().unwrap(),
        "--disk-mib",
        "32",
        "--devices",
        "ramdisk,vmbus",
        "--workload",
        "r:k=rr,bs=4k,n=200",
        "--workload",
        "w:k=sw,bs=4k,n=16,lba=8192+128",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    // Only what the writes touched is allocated (the baseline stores 64 KiB pieces).
    assert!(meta.blocks() * 512 <= 256 << 10, "{} blocks", meta.blocks());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sigint_stops_the_guest_and_still_reports_what_finished() {
    if !hypervisor_lite::testing::kvm_or_skip() {
        return;
    }
    let json = temp("interrupted.json");
    let _ = std::fs::remove_file(&json);
    let mut child = testbed()
        .args([
            "--devices",
            "ide",
            "--disk-mib",
            "8",
            "--workload",
            "quick:k=rr,bs=4k,n=20",
            // The emulated disk needs about a millisecond per I/O: this one would take a minute.
            "--workload",
            "slow:k=sr,bs=512,n=1000000,ms=60000",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first workload's progress line, then interrupt the second.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains("1/2 quick") {
        assert!(started.elapsed() < Duration::from_secs(60), "{seen}");
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("testbed ended early: {seen}");
        }
        seen.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let mut table = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut table)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the guest was not stopped"
    );
    assert!(
        table.contains("quick") && !table.contains("slow"),
        "{table}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["interrupted"], true);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{doc}");
    assert_eq!(rows[0]["workload"], "quick");
    assert_eq!(rows[0]["status"], "ok");
    std::fs::remove_file(&json).unwrap();
}
