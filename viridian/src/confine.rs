//! Confinement, as Firecracker does it: every thread of the service runs under a seccomp-BPF filter
//! (built with `seccompiler`) that allows only the system calls its kind needs, and the service can
//! drop root once it holds its file descriptors.
//!
//! | kind | threads | beyond the common set |
//! |---|---|---|
//! | [`Kind::Console`] | the console forwarder | nothing (sleep and write) |
//! | [`Kind::Device`] | the VMBus service thread, every device thread (host-vsp's `DeviceThreads` hook) | vectored disk and TAP I/O, `fdatasync`, `ioctl` only `KVM_SIGNAL_MSI`/`KVM_IOEVENTFD`/`KVM_IRQFD` and a TAP's `SIOCGIFFLAGS`/`TUNGETIFF` |
//! | [`Kind::Api`] | the API threads | Unix-socket calls, opening and creating images for hot-add, `unlink`, threads, the same `ioctl`s as devices |
//! | [`Kind::Vcpu`] | the vCPU threads and the main thread that starts and waits for them | any `ioctl` on the KVM fds, threads (device threads start on the vCPU thread that opens their channel, inheriting this filter under their own) |
//!
//! Filters stack: a thread keeps the filter it was spawned under and adds its own, so what it may do
//! is the intersection. A call outside the list fails with `EPERM` (it is refused; the thread sees
//! an error and the device or request fails as it would on any I/O error).
//!
//! Dropping root ([`drop_privileges`]) uses glibc's `setgroups`/`setgid`/`setuid`, which change the
//! credentials of every thread (glibc signals each to make the call itself): so every filter allows
//! exactly those calls with exactly the target ids and nothing else, and no confined thread can use
//! them to become anyone but that user.

use std::collections::BTreeMap;

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// What a thread does, and so which system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The console forwarder.
    Console,
    /// The VMBus service and device threads.
    Device,
    /// The API threads.
    Api,
    /// The vCPU threads and the main thread.
    Vcpu,
}

/// The user and group the service drops to, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// How the service confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Install the seccomp filters.
    pub seccomp: bool,
    /// Drop to this user and group once the file descriptors are open.
    pub identity: Option<Identity>,
}

impl Confinement {
    /// Confines the calling thread as `kind` (nothing when seccomp is off).
    pub fn confine(&self, kind: Kind) -> Result<(), ConfineError> {
        if self.seccomp {
            confine_current_thread(kind, self.identity)
        } else {
            Ok(())
        }
    }
}

/// Errors of confinement.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The filter could not be built (a bug in the lists).
    #[error("building the {kind:?} seccomp filter: {message}")]
    Build {
        /// Which filter.
        kind: Kind,
        /// seccompiler's description.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind:?} seccomp filter: {message}")]
    Install {
        /// Which filter.
        kind: Kind,
        /// seccompiler's description.
        message: String,
    },
    /// A user or group name that does not exist.
    #[error("no such {what} `{name}`")]
    Unknown {
        /// "user" or "group".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Changing the credentials failed.
    #[error("dropping privileges: {call}")]
    Drop {
        /// The failed call.
        call: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `_IOW(0xAE, nr, size)`: a KVM ioctl that passes a struct to the kernel.
const fn kvm_iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}

/// `KVM_SIGNAL_MSI`: raising a device interrupt.
pub const KVM_SIGNAL_MSI: u64 = kvm_iow(0xa5, std::mem::size_of::<kvm_bindings::kvm_msi>());
/// `KVM_IOEVENTFD`: registering a channel's doorbell.
pub const KVM_IOEVENTFD: u64 = kvm_iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>());
/// `KVM_IRQFD`: registering an interrupt event fd.
pub const KVM_IRQFD: u64 = kvm_iow(0x76, std::mem::size_of::<kvm_bindings::kvm_irqfd>());

/// `SIOCGIFFLAGS`: a TAP backend reading its link state.
const SIOCGIFFLAGS: u64 = 0x8913;

/// Calls every thread makes: memory, signals, futexes, time, thread exit, its own logging.
const COMMON: &[i64] = &[
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_restart_syscall,
];

/// Device work: disk I/O, event fds.
const DEVICE: &[i64] = &[
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_eventfd2,
    // TAP frames in (one readv into the receive section and the spill buffer).
    libc::SYS_readv,
];

/// Starting threads.
const THREADS: &[i64] = &[libc::SYS_clone, libc::SYS_clone3];

/// The API: its socket, and hot-added images.
const API: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_unlink,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_ftruncate,
];

/// What the main thread needs once the guest runs, besides what the vCPUs do: removing the API
/// socket at exit.
const MAIN: &[i64] = &[libc::SYS_unlink, libc::SYS_openat, libc::SYS_statx];

fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
}

fn dword_eq(index: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The rules of `kind`, for a service dropping to `identity` (if any).
fn rules(
    kind: Kind,
    identity: Option<Identity>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |calls: &[i64]| {
        for call in calls {
            rules.insert(*call, Vec::new());
        }
    };
    allow(COMMON);
    match kind {
        Kind::Console => {}
        Kind::Device => allow(DEVICE),
        Kind::Api => {
            allow(DEVICE);
            allow(THREADS);
            allow(API);
        }
        Kind::Vcpu => {
            allow(DEVICE);
            allow(THREADS);
            allow(MAIN);
        }
    }
    // Thread names, and adding a filter on top (which only ever takes calls away): a thread
    // spawned under this filter installs its own kind's.
    rules.insert(
        libc::SYS_prctl,
        vec![
            SeccompRule::new(vec![dword_eq(0, libc::PR_SET_NAME as u64)?])?,
            SeccompRule::new(vec![dword_eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)?])?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![SeccompRule::new(vec![dword_eq(
            0,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?])?],
    );
    if kind == Kind::Vcpu {
        // The vCPU and main threads hold the KVM fds: every KVM ioctl.
        rules.insert(libc::SYS_ioctl, Vec::new());
    } else if kind != Kind::Console {
        let ioctls = [
            KVM_SIGNAL_MSI,
            KVM_IOEVENTFD,
            KVM_IRQFD,
            SIOCGIFFLAGS,
            libc::TUNGETIFF,
        ]
        .into_iter()
        .map(|request| SeccompRule::new(vec![dword_eq(1, request)?]))
        .collect::<Result<Vec<_>, seccompiler::BackendError>>()?;
        rules.insert(libc::SYS_ioctl, ioctls);
    }
    if let Some(Identity { uid, gid }) = identity {
        // glibc makes every thread repeat these when the main thread drops root: exactly these ids.
        rules.insert(
            libc::SYS_setgroups,
            vec![SeccompRule::new(vec![arg_eq(0, 0)?])?],
        );
        rules.insert(
            libc::SYS_setgid,
            vec![SeccompRule::new(vec![dword_eq(0, u64::from(gid))?])?],
        );
        rules.insert(
            libc::SYS_setuid,
            vec![SeccompRule::new(vec![dword_eq(0, u64::from(uid))?])?],
        );
    }
    Ok(rules)
}

/// The compiled filter of `kind`.
pub fn filter(kind: Kind, identity: Option<Identity>) -> Result<BpfProgram, ConfineError> {
    let build = |message: String| ConfineError::Build { kind, message };
    let rules = rules(kind, identity).map_err(|e| build(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))
}

/// Installs `kind`'s filter on the calling thread (on top of any it has).
pub fn confine_current_thread(kind: Kind, identity: Option<Identity>) -> Result<(), ConfineError> {
    let program = filter(kind, identity)?;
    apply_filter(&program).map_err(|e| ConfineError::Install {
        kind,
        message: e.to_string(),
    })
}

/// Looks up `user` and `group` (names or numeric ids; the group defaults to the user's).
pub fn identity(user: &str, group: Option<&str>) -> Result<Identity, ConfineError> {
    let unknown = |what: &'static str, name: &str| ConfineError::Unknown {
        what,
        name: name.to_string(),
    };
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup_user_by_id(uid).map(|(_, g)| g)),
        Err(_) => lookup_user(user)
            .map(|(u, g)| (u, Some(g)))
            .ok_or_else(|| unknown("user", user))?,
    };
    let gid = match group {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(group).ok_or_else(|| unknown("group", group))?,
        },
        None => user_gid.unwrap_or(uid),
    };
    Ok(Identity { uid, gid })
}

/// (uid, gid) of a user name, from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// (name, gid) of a uid, from /etc/passwd.
fn lookup_user_by_id(uid: u32) -> Option<(String, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[2].parse() == Ok(uid))
            .then(|| Some((f[0].to_string(), f[3].parse().ok()?)))?
    })
}

/// The gid of a group name, from /etc/group.
fn lookup_group(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Drops to `identity`: no supplementary groups, then the group, then the user (for every thread).
pub fn drop_privileges(identity: Identity) -> Result<(), ConfineError> {
    let check = |call: &'static str, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(ConfineError::Drop {
                call,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    // SAFETY: setgroups with a count of 0 reads no memory.
    check("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain system calls taking integers.
    check("setgid", unsafe { libc::setgid(identity.gid) })?;
    // SAFETY: as above.
    check("setuid", unsafe { libc::setuid(identity.uid) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kvm_ioctl_numbers_are_the_kernels() {
        // include/uapi/linux/kvm.h, x86-64.
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
    }

    #[test]
    fn every_kind_compiles_with_and_without_an_identity() {
        for kind in [Kind::Console, Kind::Device, Kind::Api, Kind::Vcpu] {
            filter(kind, None).unwrap();
            filter(
                kind,
                Some(Identity {
                    uid: 65534,
                    gid: 65534,
                }),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_confined_thread_is_refused_what_its_kind_does_not_need_and_keeps_what_it_does() {
        let outcome = std::thread::spawn(|| {
            confine_current_thread(Kind::Device, None).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status");
            let opened = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            let pipe_ok = {
                let (tx, rx) = std::sync::mpsc::channel();
                tx.send(7).unwrap();
                rx.recv().unwrap() == 7
            };
            (
                status.map_err(|e| e.raw_os_error()),
                opened.map(|_| ()),
                pipe_ok,
            )
        })
        .join()
        .unwrap();
        // openat is not a device call: even reading /proc is refused.
        assert_eq!(outcome.0.unwrap_err(), Some(libc::EPERM));
        assert_eq!(outcome.1.unwrap_err(), Some(libc::EPERM));
        assert!(outcome.2, "futexes and memory still work");
        // This thread was never confined.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.contains("Seccomp:\t0"), "{status}");
    }

    #[test]
    fn names_and_ids_resolve() {
        assert_eq!(identity("0", None).unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(
            identity("root", Some("0")).unwrap(),
            Identity { uid: 0, gid: 0 }
        );
        assert!(matches!(
            identity("no-such-user-xyz", None),
            Err(ConfineError::Unknown { what: "user", .. })
        ));
    }
}
