//! Assembles and links every `tests/guests/*.S` into a freestanding ELF (`$OUT_DIR/guests/<name>.elf`, linked at
//! 0x100000 by a generated linker script, `.text.entry` first, entry `_start`) and writes `$OUT_DIR/guests.rs` listing them for `hypervisor_lite::testing`.
//! A guest that fails to assemble fails the build; a host without an assembler gets a warning and no guests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One loadable segment at 0x100000 (ELF headers not loaded), `.text.entry` first, .bss zeroed by the loader.
const LINKER_SCRIPT: &str = "ENTRY(_start)
SECTIONS
{
  . = 0x100000;
  .text : { *(.text.entry) *(.text .text.*) }
  .rodata : { *(.rodata .rodata.*) }
  .data : { *(.data .data.*) }
  .bss : { *(.bss .bss.*) *(COMMON) }
  /DISCARD/ : { *(.note .note.*) *(.comment) *(.eh_frame*) }
}
";

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src_dir = manifest.join("tests/guests");
    let guest_dir = out.join("guests");
    std::fs::create_dir_all(&guest_dir).expect("create guest output dir");
    let script = out.join("guest.ld");
    std::fs::write(&script, LINKER_SCRIPT).expect("write guest linker script");
    println!("cargo:rerun-if-changed={}", src_dir.display());
    println!("cargo:rerun-if-env-changed=CC");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "S"));
    sources.sort();
    for entry in std::fs::read_dir(&src_dir).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let toolchain_ok = Command::new(&cc).arg("--version").output().is_ok()
        && Command::new("ld").arg("--version").output().is_ok();
    let mut names = Vec::new();
    if !toolchain_ok {
        println!("cargo:warning=no C compiler ({cc}) or ld: test guests not built");
    } else {
        for src in &sources {
            let name = src
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("guest file name is UTF-8")
                .to_string();
            build_guest(&cc, &src_dir, &script, src, &guest_dir, &name)
                .unwrap_or_else(|e| panic!("test guest {name}: {e}"));
            names.push(name);
        }
    }
    let list = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let generated = format!(
        "/// Directory holding the built test guests.\npub const GUEST_DIR: &str = {:?};\n\
         /// Names of the built test guests (file stems of `tests/guests/*.S`).\npub const GUESTS: &[&str] = &[{list}];\n",
        guest_dir.display().to_string()
    );
    std::fs::write(out.join("guests.rs"), generated).expect("write guests.rs");
}

fn build_guest(
    cc: &str,
    include: &Path,
    script: &Path,
    src: &Path,
    dir: &Path,
    name: &str,
) -> Result<(), String> {
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    run(Command::new(cc)
        .args([
            "-c",
            "-nostdlib",
            "-ffreestanding",
            "-Wa,--noexecstack",
            "-I",
        ])
        .arg(include)
        .arg("-o")
        .arg(&obj)
        .arg(src))?;
    run(Command::new("ld")
        .args([
            "-static",
            "-nostdlib",
            "--build-id=none",
            "-z",
            "max-page-size=0x1000",
            "-z",
            "noexecstack",
        ])
        .arg("--no-warn-rwx-segments")
        .arg("-T")
        .arg(script)
        .arg("-o")
        .arg(&elf)
        .arg(&obj))
}
