//! Device-independent block I/O workloads, shared by the guest kernel (which runs them) and the host
//! testbed (which pre-fills disks, verifies them afterwards and reports).
//!
//! - [`spec`]: [`WorkloadSpec`], its one-token text encoding and the default workload set;
//! - [`sequence`]: the deterministic I/O sequence of a spec on a device ([`Plan`]): random offsets are a
//!   permutation of block slots, sequential offsets wrap;
//! - [`pattern`]: deterministic block contents and the [`DiskModel`] that says which contents every
//!   sector must hold after a series of workloads;
//! - [`queue`]: the [`BlockQueue`] trait guest devices implement;
//! - [`engine`]: [`run`] keeps `queue_depth` requests in flight, times and verifies every I/O;
//! - [`split`]: one workload on several vCPUs, a disjoint share of its range each;
//! - [`line`]: the `bench key=value ...` result line the guest prints and the host parses.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod engine;
pub mod line;
pub mod pattern;
pub mod queue;
pub mod sequence;
pub mod spec;
pub mod split;

pub use engine::{run, RunEnv, RunError, WorkloadResult};
pub use line::{BenchLine, BenchOutcome, LineError};
pub use pattern::{pattern, DiskModel, PATTERN_UNIT};
pub use queue::{BlockQueue, Completion, DeviceError, DmaBuffer, IoStatus, Op, SubmitError};
pub use sequence::{Plan, PlanError};
pub use spec::{default_workloads, Kind, LbaRange, ParseError, WorkloadSpec};
pub use split::{combine_checksums, vp_share, vp_shares};
