//! The Hyper-V enlightenment surface as a guest sees it: detection through CPUID, the hypercall page,
//! and the synthetic interrupt controller (SynIC). Numbers follow the Hyper-V TLFS.

pub mod detect;
pub mod hypercall;
pub mod synic;

/// Synthetic MSR numbers.
pub mod msr {
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    pub const HYPERCALL: u32 = 0x4000_0001;
    pub const VP_INDEX: u32 = 0x4000_0002;
    /// The partition reference counter: 100 ns units since the partition started (read-only).
    pub const TIME_REF_COUNT: u32 = 0x4000_0020;
    pub const SCONTROL: u32 = 0x4000_0080;
    pub const SVERSION: u32 = 0x4000_0081;
    pub const SIEFP: u32 = 0x4000_0082;
    pub const SIMP: u32 = 0x4000_0083;
    pub const EOM: u32 = 0x4000_0084;
    pub const SINT0: u32 = 0x4000_0090;
}

/// Hypercall status codes (TLFS).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const INVALID_HYPERCALL_CODE: u16 = 2;
    pub const INVALID_PARAMETER: u16 = 5;
    pub const INVALID_CONNECTION_ID: u16 = 0x12;
    pub const INSUFFICIENT_BUFFERS: u16 = 0x13;
}
