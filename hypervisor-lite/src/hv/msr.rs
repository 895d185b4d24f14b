//! Synthetic MSRs: their numbers, decoding of an MSR index into [`SyntheticMsr`], the partition-wide hypercall
//! MSRs (GUEST_OS_ID, HYPERCALL — writing the hypercall page into guest RAM when enabled) and the errors that
//! become a #GP in the guest. The per-VP SynIC registers live in [`super::synic`].

use crate::memory::GuestRam;

use super::hypercall::{hypercall_page, HypercallPorts, HV_PAGE_SIZE};

/// HV_X64_MSR_GUEST_OS_ID (partition-wide).
pub const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// HV_X64_MSR_HYPERCALL (partition-wide): bit 0 enable, bit 1 locked, bits 12–63 page GPA >> 12.
pub const MSR_HYPERCALL: u32 = 0x4000_0001;
/// HV_X64_MSR_VP_INDEX (per VP, read-only).
pub const MSR_VP_INDEX: u32 = 0x4000_0002;
/// HV_X64_MSR_TIME_REF_COUNT (partition-wide, read-only): the partition reference counter, 100 ns units since
/// the partition was created.
pub const MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
/// HV_X64_MSR_VP_ASSIST_PAGE (per VP; accepted and read back, not used by the hypervisor).
pub const MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// HV_X64_MSR_SCONTROL (per VP): bit 0 enables the SynIC.
pub const MSR_SCONTROL: u32 = 0x4000_0080;
/// HV_X64_MSR_SVERSION (per VP, read-only, = 1).
pub const MSR_SVERSION: u32 = 0x4000_0081;
/// HV_X64_MSR_SIEFP (per VP): bit 0 enable, bits 12–63 event-flags page GPA >> 12.
pub const MSR_SIEFP: u32 = 0x4000_0082;
/// HV_X64_MSR_SIMP (per VP): bit 0 enable, bits 12–63 message page GPA >> 12.
pub const MSR_SIMP: u32 = 0x4000_0083;
/// HV_X64_MSR_EOM (per VP, write-only; reads as 0).
pub const MSR_EOM: u32 = 0x4000_0084;
/// HV_X64_MSR_SINT0; SINTn is `MSR_SINT0 + n` for n in 0..16.
pub const MSR_SINT0: u32 = 0x4000_0090;
/// All synthetic MSRs the partition claims (reads/writes of unimplemented ones in this range #GP).
pub const SYNTHETIC_MSR_RANGE: core::ops::Range<u32> = 0x4000_0000..0x4000_0100;

/// HYPERCALL MSR bit 0.
pub const HYPERCALL_ENABLE: u64 = 1 << 0;
/// HYPERCALL MSR bit 1.
pub const HYPERCALL_LOCKED: u64 = 1 << 1;
/// Page-number bits of the HYPERCALL, SIMP, SIEFP and VP_ASSIST_PAGE MSRs.
pub const PAGE_GPA_MASK: u64 = !(HV_PAGE_SIZE - 1);

/// A synthetic MSR we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticMsr {
    /// GUEST_OS_ID.
    GuestOsId,
    /// HYPERCALL.
    Hypercall,
    /// VP_INDEX.
    VpIndex,
    /// TIME_REF_COUNT.
    TimeRefCount,
    /// VP_ASSIST_PAGE.
    VpAssistPage,
    /// SCONTROL.
    Scontrol,
    /// SVERSION.
    Sversion,
    /// SIEFP.
    Siefp,
    /// SIMP.
    Simp,
    /// EOM.
    Eom,
    /// SINTn, n in 0..16.
    Sint(u8),
}

impl SyntheticMsr {
    /// Decodes an MSR index; `None` for anything we do not implement.
    pub fn from_index(msr: u32) -> Option<Self> {
        Some(match msr {
            MSR_GUEST_OS_ID => Self::GuestOsId,
            MSR_HYPERCALL => Self::Hypercall,
            MSR_VP_INDEX => Self::VpIndex,
            MSR_TIME_REF_COUNT => Self::TimeRefCount,
            MSR_VP_ASSIST_PAGE => Self::VpAssistPage,
            MSR_SCONTROL => Self::Scontrol,
            MSR_SVERSION => Self::Sversion,
            MSR_SIEFP => Self::Siefp,
            MSR_SIMP => Self::Simp,
            MSR_EOM => Self::Eom,
            m if (MSR_SINT0..MSR_SINT0 + 16).contains(&m) => Self::Sint((m - MSR_SINT0) as u8),
            _ => return None,
        })
    }

    /// The MSR index.
    pub fn index(self) -> u32 {
        match self {
            Self::GuestOsId => MSR_GUEST_OS_ID,
            Self::Hypercall => MSR_HYPERCALL,
            Self::VpIndex => MSR_VP_INDEX,
            Self::TimeRefCount => MSR_TIME_REF_COUNT,
            Self::VpAssistPage => MSR_VP_ASSIST_PAGE,
            Self::Scontrol => MSR_SCONTROL,
            Self::Sversion => MSR_SVERSION,
            Self::Siefp => MSR_SIEFP,
            Self::Simp => MSR_SIMP,
            Self::Eom => MSR_EOM,
            Self::Sint(n) => MSR_SINT0 + u32::from(n),
        }
    }
}

/// Why a synthetic MSR access faults. Every variant is delivered to the guest as #GP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsrError {
    /// Not an MSR we implement.
    #[error("MSR {0:#x} is not an implemented synthetic MSR")]
    Unknown(u32),
    /// A write to a read-only MSR.
    #[error("MSR {0:#x} is read-only")]
    ReadOnly(u32),
    /// The access came from a VP index the partition does not have.
    #[error("VP {0} does not exist")]
    InvalidVp(u32),
    /// An unmasked SINT with a vector below 16.
    #[error("SINT{sint} vector {vector} is reserved (valid vectors are 16-255)")]
    ReservedVector {
        /// SINT number.
        sint: u8,
        /// Vector the guest tried to program.
        vector: u8,
    },
    /// The enlightenments are not attached to a partition yet.
    #[error("synthetic MSR written before the enlightenments were attached")]
    NotAttached,
    /// HYPERCALL enabled with a page that is not guest RAM.
    #[error("hypercall page GPA {0:#x} is not guest RAM")]
    HypercallPageNotRam(u64),
}

/// The partition-wide hypercall MSRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HypercallMsrs {
    guest_os_id: u64,
    hypercall: u64,
}

impl HypercallMsrs {
    /// GUEST_OS_ID as last written.
    pub fn guest_os_id(&self) -> u64 {
        self.guest_os_id
    }

    /// HYPERCALL as the guest reads it back.
    pub fn hypercall(&self) -> u64 {
        self.hypercall
    }

    /// Whether the hypercall page is enabled.
    pub fn hypercall_enabled(&self) -> bool {
        self.hypercall & HYPERCALL_ENABLE != 0
    }

    /// Writes GUEST_OS_ID. Writing 0 disables the hypercall page (TLFS: hypercalls need a guest identity).
    pub fn write_guest_os_id(&mut self, value: u64) {
        self.guest_os_id = value;
        if value == 0 {
            self.hypercall &= !HYPERCALL_ENABLE;
        }
    }

    /// Writes HYPERCALL. A locked register ignores writes; so does one written before GUEST_OS_ID. Enabling it
    /// writes the hypercall page for `ports` into guest RAM at the page GPA, which must be RAM, else #GP.
    pub fn write_hypercall(
        &mut self,
        ram: &GuestRam,
        ports: HypercallPorts,
        value: u64,
    ) -> Result<(), MsrError> {
        if self.hypercall & HYPERCALL_LOCKED != 0 {
            tracing::debug!(value, "write to locked HYPERCALL MSR ignored");
            return Ok(());
        }
        if self.guest_os_id == 0 {
            tracing::debug!(value, "HYPERCALL written before GUEST_OS_ID: ignored");
            return Ok(());
        }
        if value & HYPERCALL_ENABLE != 0 {
            let gpa = value & PAGE_GPA_MASK;
            if ram.write(gpa, &hypercall_page(ports)).is_err() {
                tracing::warn!(gpa, "guest enabled the hypercall page outside RAM");
                return Err(MsrError::HypercallPageNotRam(gpa));
            }
            tracing::debug!(gpa, "hypercall page written");
        }
        self.hypercall = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::hypercall::DEFAULT_PORTS;

    #[test]
    fn indices_round_trip() {
        for msr in SYNTHETIC_MSR_RANGE {
            if let Some(s) = SyntheticMsr::from_index(msr) {
                assert_eq!(s.index(), msr);
            }
        }
        assert_eq!(
            SyntheticMsr::from_index(0x4000_009F),
            Some(SyntheticMsr::Sint(15))
        );
        assert_eq!(SyntheticMsr::from_index(0x4000_00A0), None);
        assert_eq!(
            SyntheticMsr::from_index(0x4000_0020),
            Some(SyntheticMsr::TimeRefCount)
        );
        assert_eq!(SyntheticMsr::from_index(0x4000_0021), None);
        let implemented = SYNTHETIC_MSR_RANGE
            .filter(|m| SyntheticMsr::from_index(*m).is_some())
            .count();
        assert_eq!(implemented, 10 + 16);
    }

    #[test]
    fn hypercall_page_is_written_only_once_enabled_with_a_guest_id() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut m = HypercallMsrs::default();
        m.write_hypercall(&ram, DEFAULT_PORTS, 0x5000 | HYPERCALL_ENABLE)
            .unwrap();
        assert_eq!(m.hypercall(), 0, "ignored without GUEST_OS_ID");
        assert_eq!(ram.read_u32(0x5000).unwrap(), 0);

        m.write_guest_os_id(0x8100_0000_0000_0000);
        m.write_hypercall(&ram, DEFAULT_PORTS, 0x5000 | HYPERCALL_ENABLE)
            .unwrap();
        assert_eq!(m.hypercall(), 0x5001);
        assert!(m.hypercall_enabled());
        let mut page = [0u8; 4096];
        ram.read(0x5000, &mut page).unwrap();
        assert_eq!(page, hypercall_page(DEFAULT_PORTS));

        m.write_guest_os_id(0);
        assert!(
            !m.hypercall_enabled(),
            "clearing the guest id disables hypercalls"
        );
        assert_eq!(m.hypercall(), 0x5000);
    }

    #[test]
    fn hypercall_page_outside_ram_faults_and_keeps_state() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut m = HypercallMsrs::default();
        m.write_guest_os_id(1);
        let err = m
            .write_hypercall(&ram, DEFAULT_PORTS, (1 << 20) | HYPERCALL_ENABLE)
            .unwrap_err();
        assert_eq!(err, MsrError::HypercallPageNotRam(1 << 20));
        assert_eq!(m.hypercall(), 0);
        // Disabled with an out-of-RAM GPA is fine: nothing is written.
        m.write_hypercall(&ram, DEFAULT_PORTS, 1 << 20).unwrap();
        assert_eq!(m.hypercall(), 1 << 20);
    }

    #[test]
    fn locked_hypercall_msr_ignores_writes() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut m = HypercallMsrs::default();
        m.write_guest_os_id(1);
        m.write_hypercall(
            &ram,
            DEFAULT_PORTS,
            0x3000 | HYPERCALL_ENABLE | HYPERCALL_LOCKED,
        )
        .unwrap();
        m.write_hypercall(&ram, DEFAULT_PORTS, 0x4000 | HYPERCALL_ENABLE)
            .unwrap();
        assert_eq!(m.hypercall(), 0x3003);
        assert_eq!(ram.read_u32(0x4000).unwrap(), 0);
    }
}
