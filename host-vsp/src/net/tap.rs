//! [`TapNet`]: a [`NetBackend`] over a Linux TAP interface — the audited edge between network device
//! models and the host kernel's network stack, and the only `unsafe` on the network data path.
//!
//! The interface is opened through `/dev/net/tun` with `IFF_TAP | IFF_NO_PI` (no packet-information
//! prefix) and without `IFF_VNET_HDR`, so one `read`/`write` on its descriptor is exactly one
//! Ethernet frame. The descriptor is non-blocking:
//! - [`NetBackend::send`] gathers the frame with one `writev` straight from the device's slices
//!   (guest pages); a full kernel queue (`EAGAIN`, `ENOBUFS`) and an interface that is down (`EIO`)
//!   refuse the frame (`Ok(false)`) rather than buffering it;
//! - [`NetBackend::recv`] is one `readv` straight into the device's buffer, with a spill buffer the
//!   backend owns behind it: the kernel truncates a frame read into too small a buffer without
//!   saying so, so a frame that reaches the spill buffer is reported as
//!   [`NetError::FrameTooLarge`] with its true length (the spill buffer holds the largest frame a
//!   tap can carry);
//! - [`NetBackend::rx_fd`] is the tap descriptor itself (readable while frames wait);
//! - [`NetBackend::link_up`] asks the kernel for the interface's flags on every call (one
//!   `SIOCGIFFLAGS` ioctl): the link is up while the interface is administratively up and has
//!   carrier (`IFF_UP` and `IFF_RUNNING`).
//!
//! The interface lives in the network namespace of the thread that opened the backend.

use std::cell::Cell;
use std::ffi::c_char;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::volatile_memory::PtrGuard;
use vm_memory::VolatileSlice;

use super::{check_send_len, NetBackend, NetError};

/// The clone device every TAP interface is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Slices one send gathers with `writev` directly; a frame in more pieces is first copied into the
/// spill buffer (frames are at most 1514 bytes, so that is rare and cheap).
const MAX_GATHER: usize = 16;

/// The largest frame a tap interface carries: its largest MTU (65535) plus an Ethernet header and a
/// VLAN tag.
const SPILL_LEN: usize = 65535 + 18;

/// Errors opening a [`TapNet`].
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot name an interface: 16 bytes or more, a NUL byte, or empty where an existing
    /// interface is meant.
    #[error("{name:?} is not an interface name (1..=15 bytes, no NUL)")]
    BadName {
        /// The name asked for.
        name: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}")]
    OpenTun(#[source] io::Error),
    /// The kernel refused to create or attach the interface (`TUNSETIFF`): for example it exists
    /// and [`TapNet::create`] was asked, or another process holds it.
    #[error("cannot create or attach tap interface {name:?}")]
    SetIff {
        /// The name asked for.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// [`TapNet::attach`] found no interface of that name in this network namespace.
    #[error("no interface {name:?} to attach to")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The socket link state is queried through could not be created.
    #[error("cannot open the socket interface flags are queried through")]
    ControlSocket(#[source] io::Error),
}

/// How [`TapNet::open_with`] treats an existing interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Fail if it exists (`IFF_TUN_EXCL`).
    Refuse,
    /// Fail unless it exists.
    Require,
    /// Attach if it exists, create otherwise.
    Accept,
}

/// One TAP interface as a [`NetBackend`]. See the module documentation.
pub struct TapNet {
    tap: File,
    /// An `AF_INET` datagram socket in the interface's namespace, for `SIOCGIFFLAGS`.
    control: OwnedFd,
    /// The interface's current name (refreshed from the tap when the interface was renamed).
    name: Cell<[c_char; libc::IFNAMSIZ]>,
    /// Where the part of a received frame beyond the caller's buffer lands.
    spill: Box<[u8]>,
}

impl std::fmt::Debug for TapNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapNet")
            .field("fd", &self.tap.as_raw_fd())
            .field("name", &self.name())
            .finish()
    }
}

impl TapNet {
    /// Creates a new tap interface named `name` (it disappears when the backend is dropped). An
    /// empty name, or one with `%d`, lets the kernel choose (see [`TapNet::name`]). Fails if an
    /// interface of that name exists.
    pub fn create(name: &str) -> Result<Self, TapError> {
        Self::open_with(name, Existing::Refuse)
    }

    /// Attaches to the existing tap interface `name` (for example one made persistent with
    /// `ip tuntap add mode tap`), switching it to `IFF_NO_PI` without a vnet header.
    pub fn attach(name: &str) -> Result<Self, TapError> {
        Self::open_with(name, Existing::Require)
    }

    /// Attaches to the tap interface `name` if it exists, creates it otherwise.
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::open_with(name, Existing::Accept)
    }

    fn open_with(name: &str, existing: Existing) -> Result<Self, TapError> {
        let bad_name = || TapError::BadName {
            name: name.to_owned(),
        };
        if name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
            return Err(bad_name());
        }
        if existing != Existing::Refuse && name.is_empty() {
            return Err(bad_name());
        }
        let mut ifr = ifreq_named(name.as_bytes());
        if existing == Existing::Require && !interface_exists(&ifr.ifr_name) {
            return Err(TapError::NotFound {
                name: name.to_owned(),
            });
        }
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if existing == Existing::Refuse {
            flags |= libc::IFF_TUN_EXCL;
        }
        // `IFF_*` tun flags all fit the 16-bit field.
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes back one `struct ifreq`, and `ifr` is a valid,
        // initialised one that lives across the call.
        let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(TapError::ControlSocket(io::Error::last_os_error()));
        }
        // SAFETY: `sock` is a descriptor socket(2) just returned, owned by nothing else.
        let control = unsafe { OwnedFd::from_raw_fd(sock) };
        Ok(Self {
            tap,
            control,
            name: Cell::new(ifr.ifr_name),
            spill: vec![0; SPILL_LEN].into_boxed_slice(),
        })
    }

    /// The interface's name, as the kernel knows it now.
    pub fn name(&self) -> String {
        let name = self.name.get();
        let bytes: Vec<u8> = name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The interface's flags (`SIOCGIFFLAGS`), re-reading its name from the tap once if the
    /// interface was renamed.
    fn interface_flags(&self) -> io::Result<libc::c_int> {
        match flags_of(self.control.as_fd(), &self.name.get()) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                let mut ifr = ifreq_named(&[]);
                // SAFETY: TUNGETIFF writes one `struct ifreq` into `ifr`, which is valid and
                // lives across the call.
                let rc = unsafe { libc::ioctl(self.tap.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                self.name.set(ifr.ifr_name);
                flags_of(self.control.as_fd(), &ifr.ifr_name)
            }
            other => other,
        }
    }

    /// Sends the frame from the spill buffer after copying its slices there (more slices than one
    /// `writev` gathers here).
    fn send_coalesced(&mut self, frame: &[VolatileSlice<'_>], len: usize) -> isize {
        let mut at = 0;
        for part in frame {
            part.copy_to(&mut self.spill[at..at + part.len()]);
            at += part.len();
        }
        // SAFETY: `spill[..len]` is initialised memory owned by `self`, alive across the call
        // (`len` ≤ MAX_FRAME_LEN < SPILL_LEN).
        unsafe { libc::write(self.tap.as_raw_fd(), self.spill.as_ptr().cast(), len) }
    }
}

fn ifreq_named(name: &[u8]) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = src as c_char;
    }
    ifr
}

fn interface_exists(name: &[c_char; libc::IFNAMSIZ]) -> bool {
    // SAFETY: `name` is NUL-terminated: it came from `ifreq_named` with a name shorter than
    // IFNAMSIZ into a zeroed array.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn flags_of(socket: BorrowedFd<'_>, name: &[c_char; libc::IFNAMSIZ]) -> io::Result<libc::c_int> {
    let mut ifr = ifreq_named(&[]);
    ifr.ifr_name = *name;
    // SAFETY: SIOCGIFFLAGS reads and writes one `struct ifreq`, and `ifr` is valid and lives across
    // the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled the union's flags member.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    // The flags are an unsigned 16-bit mask in a signed field.
    Ok(libc::c_int::from(flags as u16))
}

/// Whether a failed send means "not now" (the frame is dropped) rather than a broken backend.
fn refused(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN | libc::ENOBUFS | libc::EIO)
    )
}

impl NetBackend for TapNet {
    fn send(&mut self, frame: &[VolatileSlice<'_>]) -> Result<bool, NetError> {
        let len = check_send_len(frame)?;
        let parts = frame.iter().filter(|s| !s.is_empty()).count();
        loop {
            let written = if parts <= MAX_GATHER {
                // The guards keep each slice's host mapping alive until `writev` returns.
                let mut guards: [Option<PtrGuard>; MAX_GATHER] = Default::default();
                let mut iov = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_GATHER];
                let pieces = frame.iter().filter(|s| !s.is_empty());
                for ((guard, vec), part) in guards.iter_mut().zip(&mut iov).zip(pieces) {
                    let g = guard.insert(part.ptr_guard());
                    *vec = libc::iovec {
                        iov_base: g.as_ptr().cast_mut().cast(),
                        iov_len: part.len(),
                    };
                }
                // SAFETY: the first `parts` iovecs describe the non-empty slices of `frame`, each
                // `len` bytes of host memory that stays mapped for the borrow of `frame` (and its
                // guard, held in `guards`, until after the call); writev only reads them.
                unsafe { libc::writev(self.tap.as_raw_fd(), iov.as_ptr(), parts as libc::c_int) }
            } else {
                self.send_coalesced(frame, len)
            };
            if written < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if refused(&err) {
                    return Ok(false);
                }
                return Err(err.into());
            }
            if written as usize != len {
                return Err(NetError::Io(io::Error::other(format!(
                    "the tap took {written} bytes of a {len}-byte frame"
                ))));
            }
            return Ok(true);
        }
    }

    fn recv(&mut self, buf: &VolatileSlice<'_>) -> Result<Option<usize>, NetError> {
        let guard = buf.ptr_guard_mut();
        let iov = [
            libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: buf.len(),
            },
            libc::iovec {
                iov_base: self.spill.as_mut_ptr().cast(),
                iov_len: self.spill.len(),
            },
        ];
        loop {
            // SAFETY: the iovecs describe `buf` (host memory mapped for its borrow, guard held
            // until after the call; the device hands it over for writing, and concurrent guest
            // access is the volatile memory contract of `VolatileSlice`) and the spill buffer
            // `self` owns exclusively here; readv writes at most their lengths.
            let read = unsafe { libc::readv(self.tap.as_raw_fd(), iov.as_ptr(), 2) };
            if read < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(err.into()),
                }
            }
            let len = read as usize;
            if len == 0 {
                return Ok(None);
            }
            if len > buf.len() {
                return Err(NetError::FrameTooLarge {
                    len,
                    capacity: buf.len(),
                });
            }
            return Ok(Some(len));
        }
    }

    fn rx_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }

    fn link_up(&self) -> bool {
        let up = libc::IFF_UP | libc::IFF_RUNNING;
        self.interface_flags().is_ok_and(|f| f & up == up)
    }
}

#[cfg(test)]
mod tests {
    //! Against the real kernel, each test inside a network namespace it creates and deletes, with
    //! addresses from 198.18.0.0/15 only and every wait bounded in frames and time.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::net::netns::{checksum, Netns};

    const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];
    const OUR_IP: [u8; 4] = [198, 18, 0, 2];
    const LINUX_IP: [u8; 4] = [198, 18, 0, 1];
    const TAP: &str = "vtap0";
    /// Most frames one wait looks at before giving up.
    const MAX_FRAMES: usize = 64;
    /// Longest one wait for a frame lasts.
    const WAIT: Duration = Duration::from_secs(5);

    /// A test's namespace with the tap helpers these tests share.
    trait TapNs {
        fn tap_up(&self) -> (TapNet, [u8; 6]);
    }

    impl TapNs for Netns {
        /// A new tap with 198.18.0.1/24 on the Linux side, up, knowing our address statically (so
        /// the kernel never asks for it). Returns it and the Linux side's MAC.
        fn tap_up(&self) -> (TapNet, [u8; 6]) {
            let tap = TapNet::create(TAP).expect("create tap");
            self.ip(&["addr", "add", "198.18.0.1/24", "dev", TAP]);
            self.ip(&["link", "set", "dev", TAP, "up"]);
            self.ip(&[
                "neigh",
                "replace",
                "198.18.0.2",
                "lladdr",
                "02:00:5e:10:00:02",
                "dev",
                TAP,
                "nud",
                "permanent",
            ]);
            (tap, self.mac(TAP))
        }
    }

    fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    fn ethernet(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&OUR_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// "Who has 198.18.0.1? Tell 198.18.0.2", broadcast.
    fn arp_request() -> Vec<u8> {
        let mut f = ethernet([0xff; 6], 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&OUR_MAC);
        f.extend_from_slice(&OUR_IP);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&LINUX_IP);
        f
    }

    /// An ICMP echo request from us to 198.18.0.1.
    fn echo_request(dst: [u8; 6], seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = ethernet(dst, 0x0800);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&OUR_IP);
        ip.extend_from_slice(&LINUX_IP);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0xbe, 0xef];
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(payload);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
        f
    }

    fn send_bytes(tap: &mut TapNet, frame: &[u8]) -> bool {
        let mut copy = frame.to_vec();
        tap.send(&[VolatileSlice::from(copy.as_mut_slice())])
            .expect("send")
    }

    /// Receives frames (into a `capacity`-byte buffer) until `want` accepts one, for at most
    /// [`MAX_FRAMES`] frames and [`WAIT`].
    fn recv_until(
        tap: &mut TapNet,
        capacity: usize,
        mut want: impl FnMut(&Result<Vec<u8>, NetError>) -> bool,
    ) -> Result<Vec<u8>, NetError> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; capacity];
        for _ in 0..MAX_FRAMES {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                readable(tap.rx_fd(), left),
                "no wanted frame within {WAIT:?}"
            );
            let got = match tap.recv(&VolatileSlice::from(buf.as_mut_slice())) {
                Ok(None) => continue,
                Ok(Some(len)) => Ok(buf[..len].to_vec()),
                Err(e) => Err(e),
            };
            if want(&got) {
                return got;
            }
        }
        panic!("no wanted frame among {MAX_FRAMES} frames");
    }

    fn is_echo_reply(frame: &[u8]) -> bool {
        frame.len() >= 42 && frame[12..14] == [8, 0] && frame[23] == 1 && frame[34] == 0
    }

    /// Checks that `frame` is the kernel's reply to `echo_request(_, seq, payload)`.
    fn assert_echo_reply(frame: &[u8], linux_mac: [u8; 6], seq: u16, payload: &[u8]) {
        assert_eq!(frame.len(), 14 + 20 + 8 + payload.len());
        assert_eq!(frame[0..6], OUR_MAC, "to us");
        assert_eq!(frame[6..12], linux_mac, "from the tap's Linux side");
        let ip = &frame[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            20 + 8 + payload.len()
        );
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(ip[12..16], LINUX_IP);
        assert_eq!(ip[16..20], OUR_IP);
        assert_eq!(checksum(ip), 0, "IP header checksum");
        let icmp = &frame[34..];
        assert_eq!(icmp[0..2], [0, 0], "echo reply");
        assert_eq!(icmp[4..6], [0xbe, 0xef], "identifier");
        assert_eq!(icmp[6..8], seq.to_be_bytes(), "sequence");
        assert_eq!(&icmp[8..], payload);
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
    }

    #[test]
    fn the_kernel_answers_arp_and_echo_requests_sent_whole_and_gathered() {
        let Some(ns) = Netns::for_test("tap-echo") else {
            return;
        };
        ns.run(|| {
            let (mut tap, linux_mac) = ns.tap_up();
            assert!(tap.link_up());

            assert!(send_bytes(&mut tap, &arp_request()));
            let reply = recv_until(&mut tap, 2048, |f| {
                f.as_ref()
                    .is_ok_and(|f| f.len() >= 42 && f[12..14] == [8, 6])
            })
            .unwrap();
            assert_eq!(reply[0..6], OUR_MAC, "ARP reply to us");
            assert_eq!(reply[6..12], linux_mac);
            assert_eq!(
                reply[14..22],
                [0, 1, 8, 0, 6, 4, 0, 2],
                "Ethernet/IPv4 reply"
            );
            assert_eq!(reply[22..28], linux_mac, "sender MAC");
            assert_eq!(reply[28..32], LINUX_IP, "sender IP");
            assert_eq!(reply[32..38], OUR_MAC, "target MAC");
            assert_eq!(reply[38..42], OUR_IP, "target IP");

            let payload: Vec<u8> = (0..56).collect();
            assert!(send_bytes(&mut tap, &echo_request(linux_mac, 1, &payload)));
            let reply = recv_until(&mut tap, 2048, |f| {
                f.as_ref().is_ok_and(|f| is_echo_reply(f))
            });
            assert_echo_reply(&reply.unwrap(), linux_mac, 1, &payload);

            // Three pieces and an empty one, gathered by one writev.
            let mut frame = echo_request(linux_mac, 2, &payload);
            let (eth, rest) = frame.split_at_mut(14);
            let (ip, icmp) = rest.split_at_mut(20);
            let mut empty = [0u8; 0];
            let parts = [
                VolatileSlice::from(eth),
                VolatileSlice::from(&mut empty[..]),
                VolatileSlice::from(ip),
                VolatileSlice::from(icmp),
            ];
            assert!(tap.send(&parts).unwrap());
            let reply = recv_until(&mut tap, 2048, |f| {
                f.as_ref().is_ok_and(|f| is_echo_reply(f))
            });
            assert_echo_reply(&reply.unwrap(), linux_mac, 2, &payload);

            // More pieces than one writev gathers here: copied once, then sent.
            let mut frame = echo_request(linux_mac, 3, &payload);
            let parts: Vec<_> = frame.chunks_mut(3).map(VolatileSlice::from).collect();
            assert!(parts.len() > MAX_GATHER);
            assert!(tap.send(&parts).unwrap());
            let reply = recv_until(&mut tap, 2048, |f| {
                f.as_ref().is_ok_and(|f| is_echo_reply(f))
            });
            assert_echo_reply(&reply.unwrap(), linux_mac, 3, &payload);
        });
    }

    #[test]
    fn a_frame_larger_than_the_buffer_is_reported_with_its_length_and_consumed() {
        let Some(ns) = Netns::for_test("tap-large") else {
            return;
        };
        ns.run(|| {
            let (mut tap, linux_mac) = ns.tap_up();
            let big = vec![0x5a; 400];
            assert!(send_bytes(&mut tap, &echo_request(linux_mac, 7, &big)));
            let err = recv_until(&mut tap, 64, |f| f.is_err()).unwrap_err();
            assert!(
                matches!(
                    err,
                    NetError::FrameTooLarge {
                        len: 442,
                        capacity: 64
                    }
                ),
                "{err:?}"
            );

            // The big reply is gone: the next frame is the reply to the next request.
            assert!(send_bytes(&mut tap, &echo_request(linux_mac, 8, b"small")));
            let reply = recv_until(&mut tap, 2048, |f| {
                f.as_ref().is_ok_and(|f| is_echo_reply(f))
            });
            assert_echo_reply(&reply.unwrap(), linux_mac, 8, b"small");
        });
    }

    #[test]
    fn rx_fd_is_readable_exactly_while_a_frame_waits() {
        let Some(ns) = Netns::for_test("tap-ready") else {
            return;
        };
        ns.run(|| {
            let (mut tap, linux_mac) = ns.tap_up();
            let mut buf = [0u8; 2048];
            assert!(!readable(tap.rx_fd(), Duration::ZERO));
            assert_eq!(tap.recv(&VolatileSlice::from(&mut buf[..])).unwrap(), None);

            assert!(send_bytes(&mut tap, &echo_request(linux_mac, 1, b"one")));
            assert!(send_bytes(&mut tap, &echo_request(linux_mac, 2, b"two")));
            assert!(readable(tap.rx_fd(), WAIT), "a reply makes the fd readable");
            let deadline = Instant::now() + WAIT;
            let mut seqs = Vec::new();
            while seqs.len() < 2 && Instant::now() < deadline {
                if !readable(tap.rx_fd(), Duration::from_millis(100)) {
                    continue;
                }
                let len = tap.recv(&VolatileSlice::from(&mut buf[..])).unwrap();
                let len = len.expect("readable fd, so a frame waits");
                assert!(is_echo_reply(&buf[..len]));
                seqs.push(u16::from_be_bytes([buf[40], buf[41]]));
            }
            assert_eq!(seqs, [1, 2]);
            assert!(!readable(tap.rx_fd(), Duration::ZERO), "drained");
            assert_eq!(tap.recv(&VolatileSlice::from(&mut buf[..])).unwrap(), None);
        });
    }

    #[test]
    fn link_follows_the_interface_and_a_down_interface_refuses_sends() {
        let Some(ns) = Netns::for_test("tap-link") else {
            return;
        };
        ns.run(|| {
            let mut tap = TapNet::create(TAP).unwrap();
            assert_eq!(tap.name(), TAP);
            assert!(!tap.link_up(), "a new interface is down");
            assert!(!send_bytes(&mut tap, &arp_request()), "refused while down");
            ns.ip(&["link", "set", "dev", TAP, "up"]);
            assert!(tap.link_up());
            ns.ip(&["link", "set", "dev", TAP, "name", "vtap-renamed"]);
            assert!(tap.link_up(), "a renamed interface stays up");
            assert_eq!(tap.name(), "vtap-renamed");
            ns.ip(&["link", "set", "dev", "vtap-renamed", "down"]);
            assert!(!tap.link_up());
        });
    }

    #[test]
    fn create_refuses_an_existing_interface_and_attach_needs_one() {
        let Some(ns) = Netns::for_test("tap-attach") else {
            return;
        };
        ns.run(|| {
            assert!(matches!(
                TapNet::create("sixteen-bytes-xx"),
                Err(TapError::BadName { .. })
            ));
            assert!(matches!(TapNet::attach(""), Err(TapError::BadName { .. })));
            assert!(matches!(
                TapNet::attach("vtap-none"),
                Err(TapError::NotFound { .. })
            ));

            let chosen = TapNet::create("").unwrap();
            assert!(chosen.name().starts_with("tap"), "{}", chosen.name());
            let first = TapNet::create(TAP).unwrap();
            let again = TapNet::create(TAP).unwrap_err();
            assert!(matches!(again, TapError::SetIff { .. }), "{again:?}");
            drop(first);

            ns.ip(&["tuntap", "add", "mode", "tap", "name", "vtap-kept"]);
            let attached = TapNet::attach("vtap-kept").unwrap();
            assert_eq!(attached.name(), "vtap-kept");
            drop(attached);
            let reopened = TapNet::open("vtap-kept").unwrap();
            assert_eq!(reopened.name(), "vtap-kept");
            let made = TapNet::open("vtap-made").unwrap();
            assert_eq!(made.name(), "vtap-made");
        });
    }
}
