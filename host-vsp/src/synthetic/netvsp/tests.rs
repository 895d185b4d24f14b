//! Tests of netvsp without KVM: the device behind the real VMBus service with a fake SynIC, the
//! guest played by a scripted netvsc ([`guest`]) that speaks NVSP and RNDIS in Linux's order over
//! real guest memory, the network's far end a [`MemoryNet`](crate::net::MemoryNet).
//!
//! - [`init`]: version negotiation, buffers and every OID Linux queries and sets;
//! - [`data`]: frames both ways, batching, section recycling, the packet filter, link indications;
//! - [`hostile`]: bad sections, lengths, offsets and pages, floods, buffers torn down in use;
//! - [`backpressure`]: a guest that stops reading its ring;
//! - [`random`]: property tests of random NVSP and RNDIS input.

mod guest;

mod backpressure;
mod data;
mod hostile;
mod init;
mod random;
