//! smoltcp over the NIC over the scripted host: the guest pings a fake peer (ARP first), and the
//! peer's ARP request and ping are answered by smoltcp through the NIC. The peer is written with
//! smoltcp's wire types; nothing here is a stack of ours.

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv4Repr,
};

use super::*;

const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x5e, 0x00, 0x00, 0x01]);
const PEER_IP: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const GUEST_IP: Ipv4Address = Ipv4Address::new(198, 18, 0, 2);

fn ethernet(
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut out = vec![0u8; 14 + payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
    EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut eth);
    fill(eth.payload_mut());
    out
}

fn arp(operation: ArpOperation, target_mac: EthernetAddress, target_ip: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: PEER_IP,
        target_hardware_addr: target_mac,
        target_protocol_addr: target_ip,
    };
    let dst = if operation == ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        target_mac
    };
    ethernet(dst, EthernetProtocol::Arp, repr.buffer_len(), |p| {
        repr.emit(&mut ArpPacket::new_unchecked(p))
    })
}

fn icmp(dst_mac: EthernetAddress, dst: Ipv4Address, repr: Icmpv4Repr<'_>) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Repr {
        src_addr: PEER_IP,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    ethernet(
        dst_mac,
        EthernetProtocol::Ipv4,
        ip.buffer_len() + repr.buffer_len(),
        |p| {
            let mut packet = Ipv4Packet::new_unchecked(p);
            ip.emit(&mut packet, &caps);
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
                &caps,
            );
        },
    )
}

/// What the frame is: an ARP packet or an ICMP message, parsed (checksums verified).
enum Parsed {
    Arp(ArpRepr),
    Icmp(Ipv4Address, Ipv4Address, Vec<u8>),
    Other,
}

fn parse(frame: &[u8]) -> Parsed {
    let caps = ChecksumCapabilities::default();
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Parsed::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => ArpPacket::new_checked(eth.payload())
            .and_then(|p| ArpRepr::parse(&p))
            .map_or(Parsed::Other, Parsed::Arp),
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Parsed::Other;
            };
            let Ok(repr) = Ipv4Repr::parse(&ip, &caps) else {
                return Parsed::Other;
            };
            if repr.next_header != IpProtocol::Icmp {
                return Parsed::Other;
            }
            Parsed::Icmp(repr.src_addr, repr.dst_addr, ip.payload().to_vec())
        }
        _ => Parsed::Other,
    }
}

/// The peer at 198.18.0.1: answers ARP requests and echo requests for its address.
fn responder(frame: &[u8]) -> Vec<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match parse(frame) {
        Parsed::Arp(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) if target_protocol_addr == PEER_IP => {
            vec![arp(
                ArpOperation::Reply,
                source_hardware_addr,
                source_protocol_addr,
            )]
        }
        Parsed::Icmp(src, dst, bytes) if dst == PEER_IP => {
            let packet = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
            match Icmpv4Repr::parse(&packet, &caps).unwrap() {
                Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                } => {
                    let mac = EthernetAddress(MAC);
                    vec![icmp(
                        mac,
                        src,
                        Icmpv4Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        },
                    )]
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

#[test]
fn smoltcp_exchanges_arp_and_icmp_with_a_peer_through_the_nic() {
    let (nic, host) = setup(Box::new(responder), None);
    let mut nic = nic.unwrap();
    let mac = EthernetAddress(nic.info().mac);
    let mut iface = Interface::new(Config::new(mac.into()), &mut nic, Instant::from_millis(0));
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap());
    let mut sockets = SocketSet::new(vec![]);
    let buffer = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let mut socket = icmp::Socket::new(buffer(), buffer());
    socket.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let handle = sockets.add(socket);

    let caps = ChecksumCapabilities::default();
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"viridian netvsc",
    };
    let mut bytes = vec![0u8; request.buffer_len()];
    request.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]), &caps);
    sockets
        .get_mut::<icmp::Socket>(handle)
        .send_slice(&bytes, IpAddress::Ipv4(PEER_IP))
        .unwrap();

    let mut now = 0;
    let mut round =
        |nic: &mut NetvscNic<PeerTransport>, iface: &mut Interface, sockets: &mut SocketSet<'_>| {
            now += 10;
            nic.poll().unwrap();
            iface.poll(Instant::from_millis(now), nic, sockets);
            nic.flush().unwrap();
            host.borrow_mut().step();
        };
    let mut reply = None;
    for _ in 0..50 {
        round(&mut nic, &mut iface, &mut sockets);
        let socket = sockets.get_mut::<icmp::Socket>(handle);
        if socket.can_recv() {
            let (data, from) = socket.recv().unwrap();
            reply = Some((data.to_vec(), from));
            break;
        }
    }
    let (data, from) = reply.expect("an echo reply within 50 rounds");
    assert_eq!(from, IpAddress::Ipv4(PEER_IP));
    let packet = Icmpv4Packet::new_checked(&data[..]).unwrap();
    assert_eq!(
        Icmpv4Repr::parse(&packet, &caps).unwrap(),
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"viridian netvsc"
        }
    );
    let sent: Vec<Parsed> = host.borrow().frames.iter().map(|f| parse(f)).collect();
    assert!(
        matches!(
            sent[0],
            Parsed::Arp(ArpRepr::EthernetIpv4 { operation: ArpOperation::Request, target_protocol_addr, .. })
                if target_protocol_addr == PEER_IP
        ),
        "ARP first"
    );

    // The peer asks for the guest and pings it: smoltcp answers both through the NIC.
    host.borrow_mut().frames.clear();
    {
        let mut h = host.borrow_mut();
        let who_has = arp(ArpOperation::Request, EthernetAddress([0; 6]), GUEST_IP);
        let ping = icmp(
            mac,
            GUEST_IP,
            Icmpv4Repr::EchoRequest {
                ident: 7,
                seq_no: 9,
                data: b"hello guest",
            },
        );
        h.pending
            .push_back((RndisChannelType::DATA, packet_message(&who_has)));
        h.pending
            .push_back((RndisChannelType::DATA, packet_message(&ping)));
        h.deliver();
    }
    for _ in 0..10 {
        round(&mut nic, &mut iface, &mut sockets);
        if host.borrow().frames.len() >= 2 {
            break;
        }
    }
    let frames = host.borrow().frames.clone();
    assert!(frames.iter().any(|f| matches!(
        parse(f),
        Parsed::Arp(ArpRepr::EthernetIpv4 { operation: ArpOperation::Reply, source_hardware_addr, source_protocol_addr, target_protocol_addr, .. })
            if source_hardware_addr == mac && source_protocol_addr == GUEST_IP && target_protocol_addr == PEER_IP
    )), "ARP reply");
    let echo_reply = frames.iter().find_map(|f| match parse(f) {
        Parsed::Icmp(src, dst, bytes) if src == GUEST_IP && dst == PEER_IP => Some(bytes),
        _ => None,
    });
    let bytes = echo_reply.expect("an echo reply from the guest");
    let packet = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        Icmpv4Repr::parse(&packet, &caps).unwrap(),
        Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 9,
            data: b"hello guest"
        }
    );
    nic.poll().unwrap();
    assert_eq!(nic.stats().rx_errors, 0);
    assert_eq!(nic.sends_in_flight(), 0, "every send completed");
}
