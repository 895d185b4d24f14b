//! Host side of viridian's synthetic devices: the VMBus server that serves a guest's channel messages
//! on hypervisor-lite's SynIC hooks, and the VSPs (virtual service providers) behind its channels.

pub mod ic;
