//! `serve[:OPTIONS]` — the kernel as a long-running guest of the `viridian` service: it serves
//! the heartbeat, shutdown, time-sync and KVP integration components (the last two in
//! [`super::serve_ics`]), checks every synthetic SCSI disk it is offered
//! (at boot and hot-added later), notices rescinded disks, and returns (the kernel powers off with
//! exit code 0) once the host asks it to shut down. OPTIONS, comma-separated: `verify-writes`
//! (below) and `ip=A.B.C.D/N`, which brings up the first synthetic NIC with smoltcp at that address
//! (it then answers ARP and ICMP echo while serving; needs `bench-tsc`).
//!
//! A disk check reads the disk's first [`CHECK_BYTES`] and prints their FNV-1a hash
//! (`serve-disk relid=R blocks=B hash=H`). With `verify-writes` the guest also writes a pattern naming
//! the relid to the disk's last [`CHECK_BYTES`], flushes, reads it back and compares
//! (`serve-disk-verified relid=R lba=L`): only for scratch disks the host marked for it, since it
//! changes the image.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use guest_drivers::ic::{IcDriver, IcKind};
use guest_drivers::netvsc::nic::VmbusNetTransport;
use guest_drivers::netvsc::{NetvscConfig, NetvscNic};
use guest_drivers::platform::Platform;
use guest_drivers::storvsc::Completion;
use guest_drivers::storvsc_disk::StorvscDisk;
use guest_drivers::vmbus_client::{Channel, VmbusConnection};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use vmbus::protocol::interface;

use super::serve_ics::ExtraIcs;
use super::vmbus::{serve_batch, IcStats};
use super::Outcome;
use crate::platform::Kernel;
use crate::println;
use crate::vmbus_global::{with_connection, KERNEL};

/// Bytes each disk check reads (and, with `verify-writes`, writes).
pub const CHECK_BYTES: usize = 64 << 10;
/// Ring pages per direction of a checked disk's channel.
const RING_PAGES: usize = 8;

type Conn = VmbusConnection<'static, Kernel>;

/// Run `name` if it is the serve scenario.
pub fn run(name: &str, args: &str) -> Option<Outcome> {
    match name {
        "serve" => Some(serve(args)),
        _ => None,
    }
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

fn serve(args: &str) -> Outcome {
    let mut verify_writes = false;
    let mut ip = None;
    for option in args.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            None if option == "verify-writes" => verify_writes = true,
            Some(("ip", value)) => ip = Some(parse_cidr(value)?),
            _ => return Err(format!("serve: unknown option `{option}`")),
        }
    }
    with_connection(|conn| serve_on(conn, verify_writes, ip))?
}

/// `A.B.C.D/N`.
fn parse_cidr(text: &str) -> Result<IpCidr, String> {
    let bad = || format!("serve: `{text}` is not A.B.C.D/N");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        *o = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    if parts.next().is_some() || len > 32 {
        return Err(bad());
    }
    Ok(IpCidr::new(
        IpAddress::v4(octets[0], octets[1], octets[2], octets[3]),
        len,
    ))
}

/// The NIC and its smoltcp interface (no sockets: the interface itself answers ARP and ICMP echo).
struct Nic {
    nic: NetvscNic<VmbusNetTransport<'static, Kernel>>,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl Nic {
    fn open(conn: &mut Conn, ip: IpCidr) -> Result<Option<Self>, String> {
        let Some(offer) = conn.find_offer(interface::NETWORK) else {
            return Ok(None);
        };
        if crate::scenario::bench::tsc_hz() == 0 {
            return Err("serve: ip= needs bench-tsc".into());
        }
        let relid = offer.child_relid;
        let mut nic = NetvscNic::open_vmbus(conn, &KERNEL, relid, 128, NetvscConfig::default())
            .map_err(err)?;
        let mac = nic.info().mac;
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(config, &mut nic, super::net::now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(ip);
        });
        println!("serve-nic relid={relid} mac={mac:02x?} ip={ip}");
        Ok(Some(Self {
            nic,
            iface,
            sockets: SocketSet::new(Vec::new()),
        }))
    }

    /// Host packets in, smoltcp, replies out. Returns whether anything happened.
    fn turn(&mut self) -> Result<bool, String> {
        let packets = self.nic.poll().map_err(err)?;
        let changed = self
            .iface
            .poll(super::net::now(), &mut self.nic, &mut self.sockets);
        self.nic.flush().map_err(err)?;
        Ok(packets > 0 || changed != smoltcp::iface::PollResult::None)
    }
}

fn serve_on(conn: &mut Conn, verify_writes: bool, ip: Option<IpCidr>) -> Outcome {
    let mut nic = match ip {
        Some(ip) => Nic::open(conn, ip)?,
        None => None,
    };
    let mut ics: Vec<(Channel, IcDriver)> = Vec::new();
    for (if_type, kind, pages) in [
        (interface::HEARTBEAT, IcKind::Heartbeat, 8),
        (interface::SHUTDOWN, IcKind::Shutdown, 4),
    ] {
        if let Some(offer) = conn.find_offer(if_type) {
            let channel = conn
                .open_channel(offer.child_relid, pages, pages)
                .map_err(err)?;
            ics.push((channel, IcDriver::new(kind)));
        }
    }
    let mut extra = ExtraIcs::open(conn)?;
    println!("serve-ics={}", ics.len() + extra.count());
    let mut checked: BTreeSet<u32> = BTreeSet::new();
    let mut stats = IcStats::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let seen = Kernel.interrupt_total();
        let mut progressed = false;
        let mut shutdown = false;
        for (channel, driver) in ics.iter_mut() {
            if !channel.take_event(conn.synic()) {
                continue;
            }
            let (served, shut) = serve_batch(channel, driver, &mut buf, &mut stats)?;
            if served > 0 {
                progressed = true;
                channel.flush(conn.hypercalls()).map_err(err)?;
            }
            shutdown |= shut;
        }
        progressed |= extra.serve(conn, &mut buf)?;
        if let Some(nic) = nic.as_mut() {
            progressed |= nic.turn()?;
        }
        if shutdown {
            println!("serve-shutdown heartbeats={}", stats.heartbeats);
            return Ok(());
        }
        conn.poll_messages().map_err(err)?;
        progressed |= release_rescinded(conn, &mut checked)?;
        let fresh: Vec<u32> = conn
            .primary_offers(interface::SCSI)
            .iter()
            .map(|o| o.child_relid)
            .filter(|relid| !checked.contains(relid) && !conn.is_rescinded(*relid))
            .collect();
        for relid in fresh {
            checked.insert(relid);
            progressed = true;
            if let Err(e) = check_disk(conn, relid, verify_writes) {
                // A disk that fails its check is reported; the guest keeps serving the others.
                println!("serve-disk-failed relid={relid} error={e}");
            }
        }
        if !progressed {
            Kernel.wait_for_interrupt(seen);
        }
    }
}

/// Releases every rescinded relid we checked (the disk channels are closed after their check, so
/// only the relid is left to give back). Returns whether any was.
fn release_rescinded(conn: &mut Conn, checked: &mut BTreeSet<u32>) -> Result<bool, String> {
    let gone: Vec<u32> = checked
        .iter()
        .copied()
        .filter(|relid| conn.is_rescinded(*relid))
        .collect();
    for relid in &gone {
        conn.release_channel(*relid).map_err(err)?;
        checked.remove(relid);
        println!("serve-disk-rescinded relid={relid}");
    }
    Ok(!gone.is_empty())
}

fn check_disk(conn: &mut Conn, relid: u32, verify_writes: bool) -> Outcome {
    let mut disk = StorvscDisk::open(conn, &KERNEL, relid, RING_PAGES, 4, 0).map_err(err)?;
    let region = KERNEL
        .alloc_dma(CHECK_BYTES / guest_drivers::platform::PAGE_SIZE)
        .ok_or("no memory for the disk check")?;
    let result = check_on(conn, &mut disk, &region, relid, verify_writes);
    KERNEL.free_dma(region);
    disk.close(conn).map_err(err)?;
    result
}

fn check_on(
    conn: &mut Conn,
    disk: &mut StorvscDisk,
    region: &guest_drivers::platform::DmaRegion,
    relid: u32,
    verify_writes: bool,
) -> Outcome {
    let block = u64::from(disk.block_size().max(1));
    let span = CHECK_BYTES as u64 / block;
    if disk.blocks() < span {
        return Err(format!("disk of {} blocks is too small", disk.blocks()));
    }
    io(conn, disk, false, 0, region)?;
    let mut data = vec![0u8; CHECK_BYTES];
    region.read(0, &mut data);
    println!(
        "serve-disk relid={relid} blocks={} hash={:016x}",
        disk.blocks(),
        fnv1a(&data)
    );
    if verify_writes {
        let lba = disk.blocks() - span;
        let pattern = pattern(relid);
        region.write(0, &pattern);
        io(conn, disk, true, lba, region)?;
        disk.flush(&KERNEL).map_err(err)?;
        region.write(0, &vec![0u8; CHECK_BYTES]);
        io(conn, disk, false, lba, region)?;
        region.read(0, &mut data);
        if data != pattern {
            return Err(format!(
                "relid {relid}: read back differs from what was written"
            ));
        }
        println!("serve-disk-verified relid={relid} lba={lba}");
    }
    Ok(())
}

/// The bytes `verify-writes` writes for `relid`: `viridian relid R block K` per 512-byte block.
pub fn pattern(relid: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; CHECK_BYTES];
    for (k, chunk) in bytes.chunks_mut(512).enumerate() {
        let text = format!("viridian relid {relid} block {k}\n");
        chunk[..text.len()].copy_from_slice(text.as_bytes());
    }
    bytes
}

/// One request on `region`, waited for — or given up when the host rescinds the controller (a
/// failed device's channel is rescinded, and its requests never complete).
fn io(
    conn: &mut Conn,
    disk: &mut StorvscDisk,
    write: bool,
    lba: u64,
    region: &guest_drivers::platform::DmaRegion,
) -> Outcome {
    disk.submit(1, write, lba, region.pa, region.len)
        .map_err(err)?;
    disk.kick().map_err(err)?;
    let mut done: Vec<Completion> = Vec::with_capacity(1);
    loop {
        // Read before looking, so a completion or rescind that lands after the look still wakes us.
        let seen = Kernel.interrupt_total();
        disk.poll(&mut done).map_err(err)?;
        if let Some(c) = done.pop() {
            return c
                .result
                .map(|_| ())
                .map_err(|e| format!("{} failed: {e:?}", if write { "write" } else { "read" }));
        }
        conn.poll_messages().map_err(err)?;
        if conn.is_rescinded(disk.relid()) {
            return Err("the host rescinded the controller".into());
        }
        Kernel.wait_for_interrupt(seen);
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
