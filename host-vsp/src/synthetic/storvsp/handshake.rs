//! The storvsc init handshake, host side, sans-I/O: each control request (a [`VstorPacket`]) goes
//! in, the completion's packet comes out.
//!
//! Linux's sequence: BEGIN_INIT; QUERY_PROTOCOL_VERSION proposing 0x0602, then 0x0600, then 0x0501 while
//! the host answers a non-zero status (we answer `REVISION_MISMATCH` for versions we do not serve);
//! QUERY_PROPERTIES (we report `max_transfer_bytes`, a non-zero multiple of 4096, and — when the
//! controller has sub-channels — the multi-channel flag and how many sub-channels it can create);
//! END_INIT; then, on the primary channel of a multi-channel controller, CREATE_SUB_CHANNELS (a count
//! in 1..=max, taken by the device with [`Handshake::take_sub_channel_request`]). SRBs are accepted
//! only after END_INIT. A sub-channel carries SRBs only: its handshake starts ready with the version
//! the primary agreed ([`Handshake::for_sub_channel`]). Requests out of order get
//! `INVALID_DEVICE_STATE`; operations we do not implement (or do not allow on this channel) get
//! `INVALID_DEVICE_REQUEST`.

use storvsp_protocol::{
    vstor_packet_size, ChannelProperties, NtStatus, Operation, ProtocolVersion, VstorPacket,
    PRE_WIN8_VSTOR_PACKET_SIZE, STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
};
use zerocopy::byteorder::little_endian::{U16, U32, U64};

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeState {
    /// Waiting for BEGIN_INIT.
    Idle,
    /// BEGIN_INIT seen; a version may have been agreed.
    Initializing {
        /// The version accepted by QUERY_PROTOCOL_VERSION, if any yet.
        version: Option<ProtocolVersion>,
    },
    /// END_INIT seen: SRBs are served.
    Ready {
        /// The agreed version.
        version: ProtocolVersion,
    },
}

/// The host's handshake state machine.
#[derive(Debug, Clone)]
pub struct Handshake {
    state: HandshakeState,
    versions: Vec<ProtocolVersion>,
    max_transfer_bytes: u32,
    /// Sub-channels the controller can create (0: not a multi-channel controller).
    max_sub_channels: u16,
    /// This is a sub-channel's handshake (no control requests beyond the properties).
    sub_channel: bool,
    /// A CREATE_SUB_CHANNELS count accepted and not yet taken by the device.
    sub_channel_request: Option<u16>,
}

impl Handshake {
    /// A primary channel's handshake accepting `versions` and reporting `max_transfer_bytes` (a
    /// multiple of 4096), with no sub-channels.
    pub fn new(versions: Vec<ProtocolVersion>, max_transfer_bytes: u32) -> Self {
        Self {
            state: HandshakeState::Idle,
            versions,
            max_transfer_bytes,
            max_sub_channels: 0,
            sub_channel: false,
            sub_channel_request: None,
        }
    }

    /// The same, for a controller that can create up to `max` sub-channels (reported in
    /// QUERY_PROPERTIES with the multi-channel flag when non-zero).
    pub fn with_sub_channels(mut self, max: u16) -> Self {
        self.max_sub_channels = max;
        self
    }

    /// A sub-channel's handshake: ready with `version`, the one the primary channel agreed (still idle
    /// when there is none yet, so SRBs are refused until the guest initialises the primary).
    pub fn for_sub_channel(
        versions: Vec<ProtocolVersion>,
        max_transfer_bytes: u32,
        version: Option<ProtocolVersion>,
    ) -> Self {
        let mut handshake = Self::new(versions, max_transfer_bytes);
        handshake.sub_channel = true;
        if let Some(version) = version.filter(|v| handshake.versions.contains(v)) {
            handshake.state = HandshakeState::Ready { version };
        }
        handshake
    }

    /// The sub-channel count of an accepted CREATE_SUB_CHANNELS, once: the device offers them.
    pub fn take_sub_channel_request(&mut self) -> Option<u16> {
        self.sub_channel_request.take()
    }

    /// The current state.
    pub fn state(&self) -> HandshakeState {
        self.state
    }

    /// The agreed version once END_INIT is done.
    pub fn ready_version(&self) -> Option<ProtocolVersion> {
        match self.state {
            HandshakeState::Ready { version } => Some(version),
            _ => None,
        }
    }

    /// Smallest vstor packet accepted for an SRB now: the full size from Windows 8 on.
    pub fn srb_packet_size(&self) -> usize {
        self.ready_version()
            .map_or(PRE_WIN8_VSTOR_PACKET_SIZE, vstor_packet_size)
    }

    /// Handles a control request (anything but EXECUTE_SRB) and returns the completion packet: the
    /// request echoed with operation COMPLETE_IO and the status (and payload) of the answer.
    pub fn handle(&mut self, request: &VstorPacket) -> VstorPacket {
        let mut reply = *request;
        reply.operation.set(Operation::COMPLETE_IO.0);
        let status = match request.operation() {
            Operation::BEGIN_INIT => {
                self.state = HandshakeState::Initializing { version: None };
                NtStatus::SUCCESS
            }
            Operation::QUERY_PROTOCOL_VERSION => match self.state {
                HandshakeState::Initializing { .. } => {
                    let proposed = ProtocolVersion(request.version().major_minor.get());
                    if self.versions.contains(&proposed) {
                        self.state = HandshakeState::Initializing {
                            version: Some(proposed),
                        };
                        NtStatus::SUCCESS
                    } else {
                        tracing::debug!(?proposed, "storvsp: refusing protocol version");
                        NtStatus::REVISION_MISMATCH
                    }
                }
                _ => NtStatus::INVALID_DEVICE_STATE,
            },
            Operation::QUERY_PROPERTIES => match self.state {
                HandshakeState::Initializing { version: Some(_) }
                | HandshakeState::Ready { .. } => {
                    let multi = self.max_sub_channels > 0;
                    reply.set_properties(&ChannelProperties {
                        reserved: U32::new(0),
                        max_channel_count: U16::new(self.max_sub_channels),
                        reserved1: U16::new(0),
                        flags: U32::new(if multi {
                            STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
                        } else {
                            0
                        }),
                        max_transfer_bytes: U32::new(self.max_transfer_bytes),
                        reserved2: U64::new(0),
                    });
                    NtStatus::SUCCESS
                }
                _ => NtStatus::INVALID_DEVICE_STATE,
            },
            Operation::END_INIT => match self.state {
                HandshakeState::Initializing {
                    version: Some(version),
                } => {
                    self.state = HandshakeState::Ready { version };
                    NtStatus::SUCCESS
                }
                _ => NtStatus::INVALID_DEVICE_STATE,
            },
            // Requests complete on their own; a reset only has to be acknowledged once served.
            Operation::RESET_LUN | Operation::RESET_ADAPTER | Operation::RESET_BUS => {
                match self.state {
                    HandshakeState::Ready { .. } => NtStatus::SUCCESS,
                    _ => NtStatus::INVALID_DEVICE_STATE,
                }
            }
            Operation::CREATE_SUB_CHANNELS if self.max_sub_channels > 0 && !self.sub_channel => {
                match self.state {
                    HandshakeState::Ready { .. } => {
                        let count = request.sub_channel_count();
                        if (1..=self.max_sub_channels).contains(&count) {
                            self.sub_channel_request = Some(count);
                            NtStatus::SUCCESS
                        } else {
                            tracing::debug!(count, "storvsp: sub-channel count refused");
                            NtStatus::INVALID_PARAMETER
                        }
                    }
                    _ => NtStatus::INVALID_DEVICE_STATE,
                }
            }
            Operation::EXECUTE_SRB => NtStatus::INVALID_DEVICE_STATE,
            other => {
                tracing::debug!(operation = ?other, "storvsp: unsupported operation");
                NtStatus::INVALID_DEVICE_REQUEST
            }
        };
        reply.set_status(status);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storvsp_protocol::{LINUX_PROTOCOL_VERSIONS, REQUEST_COMPLETION_FLAG};

    fn op(o: Operation) -> VstorPacket {
        VstorPacket::new(o, REQUEST_COMPLETION_FLAG)
    }

    fn version(v: u16) -> VstorPacket {
        let mut p = op(Operation::QUERY_PROTOCOL_VERSION);
        p.set_version(ProtocolVersion(v));
        p
    }

    #[test]
    fn full_handshake_with_newest_version() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 0x20_0000);
        let r = h.handle(&op(Operation::BEGIN_INIT));
        assert_eq!(r.operation(), Operation::COMPLETE_IO);
        assert_eq!(r.status(), NtStatus::SUCCESS);
        let r = h.handle(&version(0x0602));
        assert_eq!(r.status(), NtStatus::SUCCESS);
        assert_eq!(r.version().major_minor.get(), 0x0602);
        let r = h.handle(&op(Operation::QUERY_PROPERTIES));
        assert_eq!(r.status(), NtStatus::SUCCESS);
        let props = r.properties();
        assert_eq!(props.max_transfer_bytes.get(), 0x20_0000);
        assert_eq!(props.max_channel_count.get(), 0);
        assert_eq!(props.flags.get(), 0);
        assert_eq!(
            h.handle(&op(Operation::END_INIT)).status(),
            NtStatus::SUCCESS
        );
        assert_eq!(h.ready_version(), Some(ProtocolVersion::WIN10));
        assert_eq!(h.srb_packet_size(), 64);
    }

    #[test]
    fn version_fallback_and_refusal() {
        // A host that serves only 0x0501: Linux's first two proposals are refused.
        let mut h = Handshake::new(vec![ProtocolVersion::WIN8], 4096);
        h.handle(&op(Operation::BEGIN_INIT));
        assert_eq!(
            h.handle(&version(0x0602)).status(),
            NtStatus::REVISION_MISMATCH
        );
        assert_eq!(
            h.handle(&version(0x0600)).status(),
            NtStatus::REVISION_MISMATCH
        );
        assert_eq!(h.handle(&version(0x0501)).status(), NtStatus::SUCCESS);
        // Unknown versions are refused too.
        assert_eq!(
            h.handle(&version(0x0402)).status(),
            NtStatus::REVISION_MISMATCH
        );
        assert_eq!(
            h.handle(&version(0xFFFF)).status(),
            NtStatus::REVISION_MISMATCH
        );
        assert_eq!(
            h.handle(&op(Operation::END_INIT)).status(),
            NtStatus::SUCCESS
        );
        assert_eq!(h.ready_version(), Some(ProtocolVersion::WIN8));
    }

    #[test]
    fn out_of_order_requests_are_refused() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096);
        assert_eq!(
            h.handle(&version(0x0602)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        assert_eq!(
            h.handle(&op(Operation::QUERY_PROPERTIES)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        assert_eq!(
            h.handle(&op(Operation::END_INIT)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        h.handle(&op(Operation::BEGIN_INIT));
        // END_INIT before a version was agreed.
        assert_eq!(
            h.handle(&op(Operation::END_INIT)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        assert_eq!(
            h.handle(&op(Operation::RESET_BUS)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        assert_eq!(h.state(), HandshakeState::Initializing { version: None });
        assert_eq!(h.srb_packet_size(), PRE_WIN8_VSTOR_PACKET_SIZE);
    }

    #[test]
    fn unknown_and_unsupported_operations() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096);
        for o in [
            Operation(0),
            Operation(99),
            Operation::CREATE_SUB_CHANNELS,
            Operation::FCHBA_DATA,
        ] {
            let r = h.handle(&op(o));
            assert_eq!(r.status(), NtStatus::INVALID_DEVICE_REQUEST, "{o:?}");
            assert_eq!(r.operation(), Operation::COMPLETE_IO);
        }
    }

    fn create(count: u16) -> VstorPacket {
        let mut p = op(Operation::CREATE_SUB_CHANNELS);
        p.set_sub_channel_count(count);
        p
    }

    fn ready(h: &mut Handshake) {
        h.handle(&op(Operation::BEGIN_INIT));
        h.handle(&version(0x0602));
        h.handle(&op(Operation::END_INIT));
        assert_eq!(h.ready_version(), Some(ProtocolVersion::WIN10));
    }

    #[test]
    fn multi_channel_controller_reports_and_creates_sub_channels() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096).with_sub_channels(3);
        // Before END_INIT the request is out of order.
        h.handle(&op(Operation::BEGIN_INIT));
        h.handle(&version(0x0602));
        let props = h.handle(&op(Operation::QUERY_PROPERTIES)).properties();
        assert_eq!(props.max_channel_count.get(), 3);
        assert_eq!(props.flags.get(), STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL);
        assert_eq!(
            h.handle(&create(2)).status(),
            NtStatus::INVALID_DEVICE_STATE
        );
        assert_eq!(h.take_sub_channel_request(), None);
        h.handle(&op(Operation::END_INIT));
        // None, or more than the controller has, is refused; a count in range is taken once.
        for bad in [0, 4, u16::MAX] {
            let r = h.handle(&create(bad));
            assert_eq!(r.status(), NtStatus::INVALID_PARAMETER, "{bad}");
            assert_eq!(r.operation(), Operation::COMPLETE_IO);
        }
        assert_eq!(h.take_sub_channel_request(), None);
        assert_eq!(h.handle(&create(3)).status(), NtStatus::SUCCESS);
        assert_eq!(h.take_sub_channel_request(), Some(3));
        assert_eq!(h.take_sub_channel_request(), None);
        assert_eq!(h.handle(&create(1)).status(), NtStatus::SUCCESS);
        assert_eq!(h.take_sub_channel_request(), Some(1));
    }

    #[test]
    fn sub_channels_start_ready_and_create_none() {
        let mut h = Handshake::for_sub_channel(
            LINUX_PROTOCOL_VERSIONS.to_vec(),
            4096,
            Some(ProtocolVersion::WIN8),
        )
        .with_sub_channels(3);
        assert_eq!(h.ready_version(), Some(ProtocolVersion::WIN8));
        assert_eq!(
            h.handle(&create(1)).status(),
            NtStatus::INVALID_DEVICE_REQUEST
        );
        assert_eq!(h.take_sub_channel_request(), None);
        // Before the primary agreed a version (or with one this host does not serve) it is idle.
        let idle = Handshake::for_sub_channel(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096, None);
        assert_eq!(idle.ready_version(), None);
        let foreign = Handshake::for_sub_channel(
            vec![ProtocolVersion::WIN8],
            4096,
            Some(ProtocolVersion::WIN10),
        );
        assert_eq!(foreign.ready_version(), None);
    }

    #[test]
    fn single_channel_controller_refuses_sub_channels() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096);
        ready(&mut h);
        assert_eq!(
            h.handle(&create(1)).status(),
            NtStatus::INVALID_DEVICE_REQUEST
        );
        assert_eq!(h.take_sub_channel_request(), None);
    }

    #[test]
    fn begin_init_restarts_the_handshake() {
        let mut h = Handshake::new(LINUX_PROTOCOL_VERSIONS.to_vec(), 4096);
        h.handle(&op(Operation::BEGIN_INIT));
        h.handle(&version(0x0600));
        h.handle(&op(Operation::END_INIT));
        assert_eq!(
            h.handle(&op(Operation::RESET_ADAPTER)).status(),
            NtStatus::SUCCESS
        );
        h.handle(&op(Operation::BEGIN_INIT));
        assert_eq!(h.ready_version(), None);
    }
}
