//! Network namespaces for tests and benchmarks that put a network device on a real TAP interface:
//! [`Netns`] makes a namespace of its own, runs code inside it on a thread of its own (sockets and
//! TAP devices made there belong to it), and deletes it when dropped — also when a test fails.
//! [`Netns::for_test`] applies the rule for tests that need one: without `ip`, `/dev/net/tun` or the
//! right to make namespaces it prints one line and the test returns, except under `CI=true`, where
//! that is a failure.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use super::tap::TUN_DEVICE;

/// A network namespace of our own. See the module documentation.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace `name` (`ip netns add`).
    pub fn create(name: &str) -> io::Result<Self> {
        if !Path::new(TUN_DEVICE).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{TUN_DEVICE} is missing"),
            ));
        }
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip`: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// A namespace named after this process and `tag`, or `None` (after one line of output) when
    /// this machine cannot make one; under `CI=true` that panics instead.
    pub fn for_test(tag: &str) -> Option<Self> {
        let name = format!("viridian-{}-{tag}", std::process::id());
        match Self::create(&name) {
            Ok(ns) => Some(ns),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{e} (CI=true: the network tests must run)")
            }
            Err(e) => {
                println!("skipping network test: {e}");
                None
            }
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <namespace> args…`, which must succeed (panics with ip's message otherwise).
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The MAC address of interface `dev` in the namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-br", "link", "show", "dev", dev])
            .output()
            .expect("run ip");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = text.split_whitespace().nth(2).expect("a MAC column");
        let mut mac = [0; 6];
        for (byte, hex) in mac.iter_mut().zip(field.split(':')) {
            *byte = u8::from_str_radix(hex, 16).expect("hex MAC");
        }
        mac
    }

    /// Runs `body` on a thread that has entered the namespace, with IPv6 off there (so the kernel
    /// sends nothing unasked), and returns its result (a panic in it is resumed here).
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                enter(&ns).expect("setns");
                for conf in ["all", "default"] {
                    let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                    let _ = std::fs::write(knob, "1");
                }
                body()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns a named thread that runs `body` inside the namespace (for servers that run beside
    /// a guest).
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                enter(&ns).expect("setns");
                body()
            })
            .expect("spawn a namespace thread")
    }
}

/// Moves the calling thread into the namespace `ns` refers to.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace descriptor we hold open; it changes only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
