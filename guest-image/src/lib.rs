//! viridian's guest kernel as bytes: the freestanding x86-64 ELF of `testbed/guest` (and the guest
//! SDK's example, `guest-drivers/sdk-example`), built by this crate's build script and embedded, so an installed program that boots it (the testbed, the
//! `viridian` service) needs no file from its build directory at run time.

/// The guest kernel ELF.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("VIRIDIAN_GUEST_ELF"));

/// The guest SDK's example guest (`guest-drivers/sdk-example`): the smallest kernel of one's own
/// that links guest-drivers — ICs and a disk over VMBus.
pub static SDK_EXAMPLE_ELF: &[u8] = include_bytes!(env!("VIRIDIAN_SDK_EXAMPLE_ELF"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_kernels_are_64_bit_little_endian_x86_64_executables() {
        for elf in [super::GUEST_ELF, super::SDK_EXAMPLE_ELF] {
            check(elf);
        }
    }

    fn check(elf: &[u8]) {
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little endian");
        assert_eq!(u16::from_le_bytes([elf[16], elf[17]]), 2, "ET_EXEC");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 62, "EM_X86_64");
    }
}
