//! storvsp as a multi-channel controller on the service: QUERY_PROPERTIES reports the sub-channels,
//! CREATE_SUB_CHANNELS makes the service offer them, each sub-channel takes SRBs at once (no handshake)
//! on a worker of its own, and its completions are signalled to the VP its OPENCHANNEL named — then to
//! the one MODIFYCHANNEL names.

use std::sync::Arc;

use guest_drivers::storvsc::{Event, HandshakeStep, Storvsc};
use vmbus::mem::PAGE_SIZE;
use vmbus::protocol::{Guid, MESSAGE_SINT};

use super::guest::Guest;
use super::storvsp_io_panics::{completed, exchange, handshake};
use crate::backend::RamDisk;
use crate::device_threads::DeviceThreads;
use crate::synthetic::storvsp::{LunMap, StorvspConfig, StorvspDevice};

#[test]
fn sub_channels_are_created_served_and_interrupt_their_target_vp() {
    let threads = DeviceThreads::new();
    let _entered = threads.enter();
    let scsi = Arc::new(StorvspDevice::new(
        Guid::new(0x5c51, 7, 7, [7; 8]),
        LunMap::new().with_backend(0, Arc::new(RamDisk::new(1 << 20))),
        StorvspConfig {
            max_sub_channels: 2,
            ..StorvspConfig::default()
        },
    ));
    let mut g = Guest::start(vec![scsi.clone()]);
    let primary = g.connect()[0].child_relid;
    let mut ring = g.open(primary, 0, &[]);
    let mut drv = Storvsc::new();
    handshake(&g, &mut ring, &mut drv);
    assert_eq!(drv.max_sub_channels(), 2);

    // More than the controller has is refused; two are created and offered.
    assert!(drv.create_sub_channels(3).is_err());
    let create = drv.create_sub_channels(2).unwrap();
    assert!(matches!(
        exchange(&g, &mut ring, &mut drv, &create),
        Event::Handshake(HandshakeStep::Ready(_))
    ));
    let mut offers = Vec::new();
    g.pump_until("two sub-channel offers", |g| {
        g.client
            .offers()
            .filter(|o| o.child_relid != primary)
            .count()
            == 2
    });
    offers.extend(
        g.client
            .offers()
            .filter(|o| o.child_relid != primary)
            .map(|o| (o.offer.sub_channel_index, o.child_relid)),
    );
    offers.sort();
    assert_eq!(offers.iter().map(|o| o.0).collect::<Vec<_>>(), [1, 2]);

    // Sub-channel 2 on VP 3: an SRB at once, its completion signalled on VP 3.
    let sub = offers[1].1;
    let mut sub_ring = g.open(sub, 3, &[]);
    let mut sub_drv = drv.for_sub_channel(4).unwrap();
    let page = g.alloc_pages(1)[0];
    g.write_memory(page * PAGE_SIZE as u64, &[0x5a; 4096]);
    let w = sub_drv.write(0, 40, 8, &[page], 0, false).unwrap();
    let c = completed(exchange(&g, &mut sub_ring, &mut sub_drv, &w));
    assert_eq!(c.result, Ok(4096));
    let on = |g: &Guest, relid: u32| -> Vec<u32> {
        g.synic
            .signals()
            .into_iter()
            .filter(|&(_, sint, flag)| sint == MESSAGE_SINT && flag == relid)
            .map(|(vp, _, _)| vp)
            .collect()
    };
    assert_eq!(on(&g, sub), [3]);

    // Moved to VP 1: the next completion goes there.
    g.client.modify_channel(sub, 1).unwrap();
    g.pump();
    let r = sub_drv.read(0, 40, 8, &[page], 0).unwrap();
    assert_eq!(
        completed(exchange(&g, &mut sub_ring, &mut sub_drv, &r)).result,
        Ok(4096)
    );
    assert_eq!(on(&g, sub), [3, 1]);
    // The primary's own completions stayed on VP 0.
    assert!(on(&g, primary).iter().all(|&vp| vp == 0));

    let channels = scsi.channel_stats();
    let channels = channels.lock().unwrap();
    assert_eq!(channels[&2].worker.requests, 2, "{channels:?}");
    assert_eq!(channels[&0].worker.requests, 0, "{channels:?}");
    assert_eq!(channels[&0].worker.control, 5, "{channels:?}");
}
