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
use std::time::{Duration, Instant};

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
        if let Err(e) = self.try_ip(args) {
            panic!("{e}");
        }
    }

    /// Runs `ip -n <namespace> args…`; an error carries ip's message.
    pub fn try_ip(&self, args: &[&str]) -> io::Result<()> {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip`: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
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

/// Sends `count` ICMP echo requests to `dst` from a raw socket of the calling thread's namespace
/// (run it inside [`Netns::run`]; needs root), each waited for (at most 5 s), with the payload and
/// checksum of each reply checked; returns the round-trip times. This machine has no `ping`.
pub fn ping(dst: [u8; 4], count: u16) -> Vec<Duration> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given, for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let guest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst),
        },
        sin_zero: [0; 8],
    };
    let id = std::process::id() as u16;
    let mut rtts = Vec::new();
    for seq in 0..count {
        let mut request = [0u8; 64];
        request[0] = 8; // echo request
        request[4..6].copy_from_slice(&id.to_be_bytes());
        request[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in request[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        let sent = Instant::now();
        // SAFETY: `request` and `guest` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                raw,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&guest as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(n, 64, "sendto: {}", std::io::Error::last_os_error());
        // Replies (and our own requests, on a raw socket) until the matching one, bounded.
        for _ in 0..64 {
            let mut reply = [0u8; 256];
            // SAFETY: `reply` is valid for its length.
            let n = unsafe { libc::recv(raw, reply.as_mut_ptr().cast(), reply.len(), 0) };
            assert!(
                n > 0,
                "no echo reply for seq {seq}: {}",
                std::io::Error::last_os_error()
            );
            let ihl = usize::from(reply[0] & 0x0f) * 4;
            let icmp = &reply[ihl..n as usize];
            if icmp.len() == 64
                && icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                assert_eq!(&icmp[8..], &request[8..], "echoed payload");
                assert_eq!(checksum(icmp), 0, "reply checksum");
                rtts.push(sent.elapsed());
                break;
            }
        }
    }
    rtts
}

/// The Internet checksum of `bytes` (0 when `bytes` carries a correct one).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
