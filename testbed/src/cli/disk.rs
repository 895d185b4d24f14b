//! The disk the devices serve, chosen from the command line: a RAM disk (the testbed's own, pre-filled
//! with the pattern), an existing image (opened read-only unless a workload writes, which needs
//! `--overwrite`; its own contents are what reads are checked against), or a new image (created sparse).
//! Also the default workloads sized to the disk and the checks every workload passes before a guest
//! boots.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use host_vsp::backend::{BlockBackend, FileDisk, FileDiskOptions, RamDisk, SECTOR_SIZE};
use testbed::bench::{self, Backend, DeviceKit, DiskContents};
use testbed::report::document::BackendInfo;
use testbed::vm::MAX_CMDLINE;
use workload::{Plan, WorkloadSpec};

use super::args::Args;

/// The disk of a run.
pub struct Disk {
    /// The backend the devices serve.
    pub backend: Backend,
    /// What it holds at boot.
    pub contents: DiskContents,
    /// What the JSON says about it.
    pub info: BackendInfo,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("contents", &self.contents)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What the command line asks for, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// A RAM disk of this many bytes.
    Ram(u64),
    /// An image that exists, of this many bytes.
    Existing(u64),
    /// An image to create, of this many bytes.
    New(u64),
}

impl DiskPlan {
    /// Decide from the arguments (reads only the image's metadata).
    pub fn from_args(args: &Args) -> Result<Self> {
        let Some(path) = &args.image else {
            return Ok(Self::Ram(args.disk_bytes()));
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => bail!("--image {}: is a directory", path.display()),
            Ok(meta) if meta.len() == 0 || !meta.len().is_multiple_of(SECTOR_SIZE) => bail!(
                "--image {}: its size, {} bytes, is not a non-zero multiple of {SECTOR_SIZE}",
                path.display(),
                meta.len()
            ),
            Ok(meta) => {
                if args.disk_mib.is_some_and(|mib| mib << 20 != meta.len()) {
                    eprintln!(
                        "testbed: note: --disk-mib does not apply: {} exists ({} bytes)",
                        path.display(),
                        meta.len()
                    );
                }
                Ok(Self::Existing(meta.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::New(args.disk_bytes())),
            Err(e) => Err(e).with_context(|| format!("--image {}", path.display())),
        }
    }

    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        match *self {
            Self::Ram(b) | Self::Existing(b) | Self::New(b) => b,
        }
    }
}

/// The default workloads, their ranges cut to a disk smaller than the 64 MiB they cover.
pub fn default_workloads(capacity_bytes: u64) -> Vec<WorkloadSpec> {
    let sectors = capacity_bytes / SECTOR_SIZE;
    let mut specs = workload::default_workloads();
    for spec in &mut specs {
        spec.lba_range.count = spec.lba_range.count.min(sectors);
    }
    specs
}

/// Check every workload against the disk and every device against the disk and the workloads, before
/// any guest boots. Errors name the workload or device and why.
pub fn check_workloads(
    specs: &[WorkloadSpec],
    kits: &[&dyn DeviceKit],
    capacity_bytes: u64,
) -> Result<()> {
    if capacity_bytes == 0 || !capacity_bytes.is_multiple_of(SECTOR_SIZE) {
        bail!("the disk's {capacity_bytes} bytes are not a non-zero multiple of {SECTOR_SIZE}");
    }
    let sectors = capacity_bytes / SECTOR_SIZE;
    for spec in specs {
        Plan::new(spec, sectors).with_context(|| format!("workload `{}`", spec.name))?;
    }
    // The k-th workload of a boot writes generation k + 1.
    if specs.len() > usize::from(workload::pattern::MAX_GENERATION) {
        bail!(
            "{} workloads: at most {} fit one run",
            specs.len(),
            workload::pattern::MAX_GENERATION
        );
    }
    for kit in kits {
        kit.check_disk(capacity_bytes)
            .with_context(|| format!("device {}", kit.name()))?;
        // The widest TSC rate: the real one is not measured yet.
        let line = bench::boot_cmdline(kit.guest_name(), specs, u64::MAX, DiskContents::Image);
        if line.len() > MAX_CMDLINE {
            bail!(
                "{} workloads make a {}-byte guest command line; at most {MAX_CMDLINE} bytes fit \
                 (use fewer or shorter names)",
                specs.len(),
                line.len()
            );
        }
    }
    Ok(())
}

/// Refuse workloads that write to an existing image unless `--overwrite` allows it.
pub fn check_writes(args: &Args, plan: &DiskPlan, writers: &[&str]) -> Result<()> {
    if let (Some(path), DiskPlan::Existing(_)) = (&args.image, plan) {
        if !writers.is_empty() && !args.overwrite {
            bail!(
                "{} exists and workload{} {} would overwrite sectors of it: pass --overwrite to \
                 allow that, or run only read workloads (k=rr or k=sr)",
                path.display(),
                if writers.len() == 1 { "" } else { "s" },
                writers.join(", ")
            );
        }
    }
    Ok(())
}

/// Open (or create) the disk. `writers` are the workloads that write: on an existing image they need
/// `overwrite`, else the image is opened read-only.
pub fn open(args: &Args, plan: &DiskPlan, writers: &[&str]) -> Result<Disk> {
    let Some(path) = &args.image else {
        let bytes = plan.bytes();
        return Ok(Disk {
            backend: Arc::new(RamDisk::new(bytes)),
            contents: DiskContents::Pattern,
            info: BackendInfo::Ram { bytes },
        });
    };
    check_writes(args, plan, writers)?;
    let created = matches!(plan, DiskPlan::New(_));
    if created {
        create_sparse(path, plan.bytes())?;
    }
    let read_only = writers.is_empty() && !created;
    let disk = FileDisk::open(
        path,
        FileDiskOptions {
            read_only,
            direct: false,
        },
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let bytes = disk.capacity();
    tracing::info!(path = %path.display(), bytes, read_only, created, "image opened");
    Ok(Disk {
        backend: Arc::new(disk),
        contents: DiskContents::Image,
        info: BackendInfo::File {
            path: path.clone(),
            bytes,
            read_only,
            created,
        },
    })
}

/// Create `path` (never an existing file: no truncation) as a sparse file of `bytes` bytes.
fn create_sparse(path: &Path, bytes: u64) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    if let Err(e) = file.set_len(bytes) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("sizing {} to {bytes} bytes", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("testbed-cli-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn defaults_fit_small_disks_and_oversized_workloads_are_named() {
        let small = default_workloads(16 << 20);
        assert!(small.iter().all(|s| s.lba_range.count == (16 << 20) / 512));
        let kits = bench::kits();
        let kits: Vec<&dyn DeviceKit> = kits.iter().map(|k| &**k).collect();
        check_workloads(&small, &kits, 16 << 20).unwrap();
        check_workloads(&default_workloads(64 << 20), &kits, 64 << 20).unwrap();
        let big = workload::default_workloads();
        let e = check_workloads(&big, &kits, 16 << 20).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("workload `rr4k-qd1`: "),
            "{e:#}"
        );
        // The in-guest baseline refuses disks it cannot copy into guest RAM.
        let e = check_workloads(&default_workloads(2 << 30), &kits, 2 << 30).unwrap_err();
        assert!(format!("{e:#}").starts_with("device ramdisk: "), "{e:#}");
    }

    #[test]
    fn an_existing_image_is_read_only_and_writes_need_overwrite() {
        let path = temp("existing.img");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let image = path.to_str().unwrap();
        let args = Args::parse_from(["testbed", "--image", image]);
        let plan = DiskPlan::from_args(&args).unwrap();
        assert_eq!(plan, DiskPlan::Existing(1 << 20));
        let disk = open(&args, &plan, &[]).unwrap();
        assert!(disk.backend.read_only());
        assert_eq!(disk.contents, DiskContents::Image);
        let e = open(&args, &plan, &["rw4k-qd32"]).unwrap_err();
        assert!(format!("{e:#}").contains("--overwrite"), "{e:#}");
        let args = Args::parse_from(["testbed", "--image", image, "--overwrite"]);
        assert!(!open(&args, &plan, &["w"]).unwrap().backend.read_only());
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 20]);
        std::fs::write(&path, [0u8; 1000]).unwrap();
        let e = DiskPlan::from_args(&Args::parse_from(["testbed", "--image", image])).unwrap_err();
        assert!(format!("{e:#}").contains("1000 bytes"), "{e:#}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_new_image_is_created_sparse() {
        use std::os::unix::fs::MetadataExt;
        let path = temp("new.img");
        let _ = std::fs::remove_file(&path);
        let args = Args::parse_from([
            "testbed",
            "--image",
            path.to_str().unwrap(),
            "--disk-mib",
            "8",
        ]);
        let plan = DiskPlan::from_args(&args).unwrap();
        assert_eq!(plan, DiskPlan::New(8 << 20));
        let disk = open(&args, &plan, &["w"]).unwrap();
        assert_eq!(disk.backend.capacity(), 8 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        // Never truncates a file that appeared in the meantime.
        assert!(create_sparse(&path, 1 << 20).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
        std::fs::remove_file(&path).unwrap();
    }
}
