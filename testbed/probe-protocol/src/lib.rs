//! The probe device's wire format: a VMBus test device that exercises the device model from a real
//! guest — it echoes packets, offers sub-channels on request, and reads, writes or hammers a GPADL the
//! guest names. Both the guest kernel's scenarios and the host device use this one definition.
//!
//! Every packet is in-band and 16 bytes: four little-endian `u32`s `{op, a, b, c}`. A reply carries
//! `op | REPLY` and `{status, a, b}` in place of `{a, b, c}`.
#![no_std]
#![forbid(unsafe_code)]

use vmbus::protocol::Guid;

/// Interface GUID of the probe device.
pub const PROBE_INTERFACE: Guid = Guid::new(
    0x7072_6f62,
    0x6576,
    0x6972,
    [0x69, 0x64, 0x69, 0x61, 0x6e, 0, 0, 1],
);

/// Size of every probe packet.
pub const PACKET_LEN: usize = 16;

/// Set in the op of a reply.
pub const REPLY: u32 = 0x8000_0000;

/// Operations.
pub mod op {
    /// Reply with `a` and `b` as sent.
    pub const ECHO: u32 = 1;
    /// Offer `a` sub-channels (primary channel only).
    pub const SUBCHANNELS: u32 = 2;
    /// Read `b` bytes of range 0 of GPADL `a`, reply with their FNV-1a hash in `a`, then overwrite
    /// each byte with its complement and reply with the bytes written in `b`.
    pub const GPADL_CHECK: u32 = 3;
    /// Write an incrementing `u64` counter at offset 0 of GPADL `a` until a write fails (at most
    /// [`super::HAMMER_MAX_WRITES`] times); reply with the writes that succeeded (low 32 bits in
    /// `a`) and [`super::status::REVOKED`] if the GPADL was torn down meanwhile.
    pub const GPADL_HAMMER: u32 = 4;
    /// Make the device thread panic (to test how the host contains a failed device).
    pub const PANIC: u32 = 5;
}

/// Reply statuses.
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// The GPADL named is not one the guest created for this device.
    pub const NO_GPADL: u32 = 1;
    /// The access was refused (outside the GPADL).
    pub const ACCESS: u32 = 2;
    /// The GPADL was torn down while the device used it.
    pub const REVOKED: u32 = 3;
    /// The request was refused (unknown op, not allowed on this channel).
    pub const REFUSED: u32 = 4;
}

/// Most counter writes one hammer request makes.
pub const HAMMER_MAX_WRITES: u64 = 50_000_000;

/// One probe packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub op: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
}

impl Packet {
    /// A request.
    pub const fn request(op: u32, a: u32, b: u32) -> Self {
        Self { op, a, b, c: 0 }
    }

    /// The reply to `self` with `status`, `a` and `b`.
    pub const fn reply(&self, status: u32, a: u32, b: u32) -> Self {
        Self {
            op: self.op | REPLY,
            a: status,
            b: a,
            c: b,
        }
    }

    /// A reply's status.
    pub const fn status(&self) -> u32 {
        self.a
    }

    /// A reply's two values.
    pub const fn values(&self) -> (u32, u32) {
        (self.b, self.c)
    }

    /// Whether this is a reply.
    pub const fn is_reply(&self) -> bool {
        self.op & REPLY != 0
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> [u8; PACKET_LEN] {
        let mut out = [0u8; PACKET_LEN];
        for (i, word) in [self.op, self.a, self.b, self.c].iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Parse a payload (exactly [`PACKET_LEN`] bytes; a hostile peer's anything else is `None`).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PACKET_LEN {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[4 * i..4 * i + 4]);
            u32::from_le_bytes(w)
        };
        Some(Self {
            op: word(0),
            a: word(1),
            b: word(2),
            c: word(3),
        })
    }
}

/// FNV-1a (32 bit) over `bytes`, continuing from `hash` (start with [`FNV_OFFSET`]).
pub fn fnv1a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u32 = 0x811c_9dc5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_refuse_other_lengths() {
        let p = Packet::request(op::ECHO, 7, 9);
        assert_eq!(Packet::parse(&p.to_bytes()), Some(p));
        let r = p.reply(status::OK, 7, 9);
        assert!(r.is_reply() && r.status() == 0 && r.values() == (7, 9));
        assert_eq!(Packet::parse(&[0; 15]), None);
        assert_eq!(Packet::parse(&[0; 17]), None);
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0x811c_9dc5);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xe40c_292c);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"fo"), b"o"),
            fnv1a(FNV_OFFSET, b"foo")
        );
    }
}
