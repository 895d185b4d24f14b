//! Tests of the VMBus service with no KVM: a fake [`Synic`](super::Synic) ([`synic`]), the guest
//! played by `vmbus`'s sans-I/O client over real guest memory ([`guest`]) and small devices that
//! answer through their rings ([`echo_device`]).
//!
//! - [`lifecycle`]: connect, offers, open/close/reopen, hot-add and removal, MODIFYCHANNEL;
//! - [`gpadls`]: GPADLs mapped for devices, their contents, revocation on teardown;
//! - [`subchannels`]: sub-channel offers, their threads and their end with the primary;
//! - [`failures`]: panicking and stuck devices;
//! - [`hostile`]: unusable rings, garbage posts, UNLOAD;
//! - [`random_posts`]: a property test of random posts beside a valid session;
//! - [`ic_flood`]: an IC ring the guest never lets drain;
//! - [`storvsp_io_panics`]: storvsp with a backend that panics on one LBA;
//! - [`storvsp_subchannels`]: storvsp creating sub-channels, each served on its own, interrupting its VP.

mod echo_device;
pub(crate) mod guest;
pub(crate) mod synic;

mod failures;
mod gpadls;
mod hostile;
mod ic_flood;
mod ic_liars;
mod lifecycle;
mod random_posts;
mod storvsp_io_panics;
mod storvsp_subchannels;
mod subchannels;
