//! The error type of the partition layer: KVM being unavailable (one clear error naming why), failed ioctls
//! (naming the operation), guest-memory and guest-image errors, and invalid configurations.

use std::fmt;
use std::path::PathBuf;

use crate::loader::LoadError;
use crate::memory::MemoryError;

/// Why KVM cannot be used on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmUnavailableCause {
    /// The KVM device node does not exist.
    NoDevice {
        /// Path that was opened.
        path: PathBuf,
    },
    /// The KVM device node exists but this process may not open it.
    PermissionDenied {
        /// Path that was opened.
        path: PathBuf,
    },
    /// Opening the device failed for another reason.
    Open {
        /// Path that was opened.
        path: PathBuf,
        /// errno of the failed open.
        errno: i32,
    },
    /// KVM_GET_API_VERSION returned something other than 12.
    ApiVersion {
        /// The version the kernel reported.
        found: i32,
    },
    /// KVM_CREATE_VM failed.
    CreateVm {
        /// errno of the failed ioctl.
        errno: i32,
    },
    /// A capability this crate requires is missing.
    MissingCapability {
        /// Name of the capability.
        name: &'static str,
    },
}

impl fmt::Display for KvmUnavailableCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice { path } => write!(
                f,
                "{} does not exist (is the kvm module loaded?)",
                path.display()
            ),
            Self::PermissionDenied { path } => {
                write!(
                    f,
                    "permission denied opening {} (add the user to the kvm group)",
                    path.display()
                )
            }
            Self::Open { path, errno } => {
                write!(
                    f,
                    "cannot open {}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
            Self::ApiVersion { found } => write!(f, "KVM API version {found}, expected 12"),
            Self::CreateVm { errno } => {
                write!(
                    f,
                    "KVM_CREATE_VM failed: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
            Self::MissingCapability { name } => {
                write!(f, "KVM lacks the required capability {name}")
            }
        }
    }
}

/// Errors of building and running partitions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM cannot be used on this host; `cause` says why.
    #[error("KVM is unavailable: {cause}")]
    KvmUnavailable {
        /// What went wrong.
        cause: KvmUnavailableCause,
    },
    /// A KVM ioctl failed.
    #[error("{op} failed")]
    Kvm {
        /// The operation (ioctl) that failed.
        op: &'static str,
        /// The errno it returned.
        source: kvm_ioctls::Error,
    },
    /// The configuration cannot be built.
    #[error("invalid partition configuration: {0}")]
    InvalidConfig(String),
    /// Guest memory could not be set up or accessed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest image could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A host OS call (thread, signal, file) failed.
    #[error("{op} failed")]
    Os {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The partition is in the wrong state for the call (e.g. started twice).
    #[error("partition state: {0}")]
    State(&'static str),
}

impl Error {
    /// Wraps a failed ioctl, naming the operation.
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

/// Result of partition operations.
pub type Result<T> = std::result::Result<T, Error>;
