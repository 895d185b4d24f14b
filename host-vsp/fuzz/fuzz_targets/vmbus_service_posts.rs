//! Arbitrary channel messages and guest-memory contents against the VMBus service glue: a service
//! with a storvsp controller on a RAM disk, connected (INITIATE_CONTACT 5.3, REQUESTOFFERS), then
//! driven by the input as a sequence of steps — a post of arbitrary bytes to a message connection id,
//! or arbitrary bytes written into guest memory (so ring control pages, GPADL pages and SRBs may be
//! anything) — exploring open, close, teardown, rescind and unload orders with device threads
//! running. Nothing may panic, hang or touch memory outside the guest's.
#![no_main]

use std::sync::Arc;

use host_vsp::backend::RamDisk;
use host_vsp::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};
use host_vsp::vmbus_service::{EventDelivery, ServiceConfig, Synic, SynicError, VmbusService};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus::protocol::{
    ChannelMessage, Guid, InitiateContact, RequestOffers, Version, CHANNEL_MESSAGE_TYPE,
    MESSAGE_CONNECTION_IDS,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEMORY_BYTES: usize = 64 * 4096;

/// A SynIC that accepts everything and hands out real (non-blocking) event fds.
struct NullSynic;

impl Synic for NullSynic {
    fn post_message(&self, _: u32, _: u8, _: u32, _: &[u8]) -> Result<(), SynicError> {
        Ok(())
    }
    fn signal_event(&self, _: u32, _: u8, _: u32) -> Result<EventDelivery, SynicError> {
        Ok(EventDelivery::Set)
    }
    fn event_for(&self, _: u32) -> Result<EventFd, SynicError> {
        EventFd::new(EFD_NONBLOCK).map_err(|e| SynicError(Box::new(e)))
    }
}

fuzz_target!(|data: &[u8]| {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).unwrap();
    let scsi = StorvspDevice::new(
        Guid::new(1, 2, 3, [0; 8]),
        LunMap::new().with_backend(0, Arc::new(RamDisk::new(64 * 1024))),
        StorvspConfig::default(),
    );
    let config = ServiceConfig {
        vp_count: 2,
        versions: Vec::new(),
    };
    let service =
        VmbusService::start(config, memory.clone(), Arc::new(NullSynic), vec![Arc::new(scsi)])
            .unwrap();
    let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0)).to_message();
    service.handle_post(4, 0, CHANNEL_MESSAGE_TYPE, contact.as_bytes());
    service.handle_post(4, 0, CHANNEL_MESSAGE_TYPE, RequestOffers::new().to_message().as_bytes());
    let mut rest = data;
    // [kind, len, bytes...]: even kind posts, odd kind writes memory at a 16-bit page-granular offset.
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        if kind & 1 == 0 {
            let connection = MESSAGE_CONNECTION_IDS[usize::from(kind >> 1) % 2];
            let message_type = if kind & 0x80 == 0 { CHANNEL_MESSAGE_TYPE } else { 2 };
            let vp = u32::from((kind >> 2) & 3);
            service.handle_post(connection, vp, message_type, bytes);
        } else if let [hi, lo, payload @ ..] = bytes {
            let at = (usize::from(*hi) << 8 | usize::from(*lo)) % MEMORY_BYTES;
            let n = payload.len().min(MEMORY_BYTES - at);
            memory.write_slice(&payload[..n], GuestAddress(at as u64)).unwrap();
        }
    }
    service.shutdown();
});
