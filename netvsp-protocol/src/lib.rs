//! Wire format of Hyper-V synthetic networking (netvsc ⇄ netvsp over VMBus), byte-compatible with
//! Linux's `hv_netvsc`.
//!
//! - [`nvsp`]: NVSP messages (version negotiation, receive/send buffers, RNDIS carriage,
//!   sub-channels, VF), versions, status codes, the sizes Linux sends and accepts;
//! - [`rndis`]: RNDIS messages inside SEND_RNDIS_PKT, and the checked helpers both ends use to walk
//!   batched messages, locate a PACKET's frame and PPIs and a request's information buffer;
//! - [`ppi`]: per-packet info records and their value bit layouts;
//! - [`ndis`]: OIDs, the packet filter, offload and RSS structures with their per-version sizes.
//!
//! Host→guest frames travel in VMBus transfer-page packets whose header is
//! [`TransferPageHeader`] + [`TransferPageRange`]s (defined once, in `vmbus`), with transfer page
//! set id [`nvsp::RECEIVE_BUFFER_ID`]; each range is one RNDIS message in the receive buffer.
//!
//! Numeric codes from the peer are open newtypes so unknown values stay representable. Nothing
//! here panics on peer input.
#![no_std]
#![forbid(unsafe_code)]

pub mod ndis;
pub mod nvsp;
pub mod ppi;
pub mod rndis;

pub use vmbus::packet::{TransferPageHeader, TransferPageRange, DESCRIPTOR_SIZE};
pub use vmbus::protocol::Guid;

/// Interface (class) GUID of the synthetic NIC, f8615163-df3e-46c5-913f-f2d2f965ed0e.
pub const NIC_CLASS_GUID: Guid = vmbus::protocol::interface::NETWORK;

/// Bytes of a transfer-page packet's header before its ranges: the VMBus descriptor,
/// `xfer_pageset_id`, `sender_owns`, reserved, `range_cnt` (`vmtransfer_page_packet_header`).
pub const TRANSFER_PAGE_HEADER_LEN: usize = DESCRIPTOR_SIZE + size_of::<TransferPageHeader>();

/// Bytes of a transfer-page packet's header with `ranges` ranges (`NETVSC_XFER_HEADER_SIZE`).
pub const fn transfer_page_header_len(ranges: usize) -> usize {
    TRANSFER_PAGE_HEADER_LEN + ranges * size_of::<TransferPageRange>()
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn transfer_page_layout_matches_linux() {
        assert_eq!(TRANSFER_PAGE_HEADER_LEN, 24);
        assert_eq!(offset_of!(TransferPageHeader, transfer_page_set_id), 0);
        assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 2);
        assert_eq!(offset_of!(TransferPageHeader, range_count), 4);
        assert_eq!(size_of::<TransferPageRange>(), 8);
        assert_eq!(offset_of!(TransferPageRange, byte_offset), 4);
        assert_eq!(transfer_page_header_len(2), 40);
    }

    #[test]
    fn nic_guid() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            NIC_CLASS_GUID.to_string(),
            "f8615163-df3e-46c5-913f-f2d2f965ed0e"
        );
    }
}
