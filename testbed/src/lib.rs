//! The viridian testbed: boots our guest kernel (`testbed/guest`, embedded by `guest-image`) on
//! hypervisor-lite with the Hyper-V enlightenments and the host VMBus service, runs scenarios in it and
//! measures mode transitions.
//!
//! [`GuestVm`] is the one way to boot the guest: it loads the ELF, writes the boot info (scenario command
//! line), wires the enlightenments and reports the guest's console, exit code and faults.
//! [`bench`] makes the block rows, [`net`] the network rows, [`report`] renders both.

pub mod bench;
pub mod cpu;
pub mod net;
pub mod probe;
pub mod report;
pub mod vm;

pub use vm::{GuestRun, GuestVm, GuestVmConfig};

/// The guest kernel ELF, embedded in the binary: an installed `testbed` needs no file from its build
/// directory at run time.
pub use guest_image::GUEST_ELF;
