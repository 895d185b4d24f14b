//! The service's TOML configuration: what guest to run (kernel, command line, memory, vCPUs), its
//! disks, its integration components, the API socket and logging. [`Config::load`] parses and checks
//! everything before anything starts; every error names the key it is about and why, once. Paths are
//! relative to the config file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest guest memory the service runs.
pub const MAX_MEMORY_MIB: u64 = 32 << 10;
/// Most vCPUs a guest may be given.
pub const MAX_VCPUS: u32 = 4;
/// `guest.kernel` values naming a kernel embedded in the binary rather than a file.
pub const EMBEDDED_KERNELS: [&str; 2] = ["builtin", "sdk-example"];

/// Controllers (and so disks on LUN 0) the guest kernel drives.
pub const MAX_CONTROLLERS: u32 = 64;

/// A configuration error: the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, missing key).
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's description, with the key and line.
        message: String,
    },
    /// A value is out of range or names something unusable.
    #[error("{path}: `{key}`: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, e.g. `disk[1].path`.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The guest.
    #[serde(default)]
    pub guest: GuestConfig,
    /// The management API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Integration components.
    #[serde(default)]
    pub ic: IcConfig,
    /// Confinement.
    #[serde(default)]
    pub security: SecurityConfig,
    /// Disks, each a synthetic SCSI LUN.
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskConfig>,
    /// Network adapters, each a synthetic NIC on a TAP interface.
    #[serde(default, rename = "net")]
    pub nets: Vec<NetConfig>,
    /// The directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[guest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The guest kernel: `"builtin"` (viridian's guest kernel), `"sdk-example"` (the guest SDK's
    /// example guest, `guest-drivers/sdk-example`, embedded too) or the path of an ELF that links
    /// guest-drivers.
    #[serde(default = "builtin")]
    pub kernel: String,
    /// The kernel's command line (for the builtin kernel: its scenarios; `serve` runs it as a
    /// long-lived guest).
    #[serde(default = "serve")]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Virtual processors, 1 to [`MAX_VCPUS`]; the guest's power-off or a crash of any vCPU ends
    /// them all.
    #[serde(default = "one")]
    pub vcpus: u32,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            kernel: builtin(),
            cmdline: serve(),
            memory_mib: default_memory(),
            vcpus: 1,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The Unix socket the REST API listens on (none: no API).
    pub socket: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `viridian=debug,host_vsp=warn`, ...); `RUST_LOG` overrides it.
    #[serde(default = "info")]
    pub level: String,
    /// One JSON object per line instead of text.
    #[serde(default)]
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: info(),
            json: false,
        }
    }
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Run every thread under its seccomp filter.
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Drop to this user (name or id) once /dev/kvm and the images are open.
    pub user: Option<String>,
    /// ... and this group (default: the user's).
    pub group: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            seccomp: true,
            user: None,
            group: None,
        }
    }
}

/// `[ic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcConfig {
    /// Offer the heartbeat IC.
    #[serde(default = "yes")]
    pub heartbeat: bool,
    /// Milliseconds between heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Offer the shutdown IC (graceful shutdown needs it).
    #[serde(default = "yes")]
    pub shutdown: bool,
    /// Seconds a graceful shutdown waits for the guest before stopping it hard.
    #[serde(default = "default_shutdown_s")]
    pub shutdown_timeout_s: u64,
    /// Offer the time-sync IC (a SYNC of the host's UTC at open, then a SAMPLE every interval).
    #[serde(default = "yes")]
    pub timesync: bool,
    /// Milliseconds between time-sync SAMPLEs.
    #[serde(default = "default_timesync_ms")]
    pub timesync_interval_ms: u64,
    /// Offer the key-value pair exchange IC (`ctl kvp`).
    #[serde(default = "yes")]
    pub kvp: bool,
}

impl Default for IcConfig {
    fn default() -> Self {
        Self {
            heartbeat: true,
            heartbeat_interval_ms: default_heartbeat_ms(),
            shutdown: true,
            shutdown_timeout_s: default_shutdown_s(),
            timesync: true,
            timesync_interval_ms: default_timesync_ms(),
            kvp: true,
        }
    }
}

/// One `[[disk]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The name status and the API use (default `disk<N>`).
    pub name: Option<String>,
    /// The raw image.
    pub path: PathBuf,
    /// Refuse the guest's writes (the image is opened read-only).
    #[serde(default)]
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    #[serde(default)]
    pub direct: bool,
    /// The SCSI controller (one VMBus channel each); default: the disk's index.
    pub controller: Option<u32>,
    /// The LUN on the controller.
    #[serde(default)]
    pub lun: u8,
    /// Create the image, sparse, with this size (MiB) if it does not exist.
    pub create_size_mib: Option<u64>,
}

/// One `[[net]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The name status uses (default `net<N>`).
    pub name: Option<String>,
    /// The TAP interface (created in the service's network namespace if it does not exist).
    pub tap: String,
    /// The adapter's MAC address, `xx:xx:xx:xx:xx:xx` (default 00:15:5d:00:00:N+1).
    pub mac: Option<String>,
}

impl NetConfig {
    /// The MAC (set for every adapter once loaded).
    pub fn mac_bytes(&self) -> [u8; 6] {
        self.mac
            .as_deref()
            .and_then(parse_mac)
            .unwrap_or([0x00, 0x15, 0x5d, 0, 0, 1])
    }
}

/// `xx:xx:xx:xx:xx:xx` as bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn builtin() -> String {
    "builtin".into()
}
fn serve() -> String {
    "serve".into()
}
fn info() -> String {
    "info".into()
}
fn default_memory() -> u64 {
    128
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_shutdown_s() -> u64 {
    10
}
fn default_timesync_ms() -> u64 {
    5000
}

impl Config {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, path, &base_dir)
    }

    /// Parses and checks `text` (named `path` in errors), resolving paths against `base_dir`.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string() + &location(text, e.span()),
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.check(path)?;
        Ok(config)
    }

    fn check(&mut self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let g = &self.guest;
        if g.memory_mib < 16 || g.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "guest.memory_mib",
                format!("{} is outside 16..={MAX_MEMORY_MIB}", g.memory_mib),
            ));
        }
        if g.vcpus == 0 || g.vcpus > MAX_VCPUS {
            return Err(invalid(
                "guest.vcpus",
                format!("{} is outside 1..={MAX_VCPUS}", g.vcpus),
            ));
        }
        if g.cmdline.len() > guest_abi::MAX_CMDLINE {
            return Err(invalid(
                "guest.cmdline",
                format!(
                    "{} bytes exceed {}",
                    g.cmdline.len(),
                    guest_abi::MAX_CMDLINE
                ),
            ));
        }
        if !EMBEDDED_KERNELS.contains(&g.kernel.as_str()) {
            let kernel = resolve(&self.base_dir, Path::new(&g.kernel));
            if !kernel.is_file() {
                return Err(invalid(
                    "guest.kernel",
                    format!("{} is not a file", kernel.display()),
                ));
            }
            self.guest.kernel = kernel.to_string_lossy().into_owned();
        }
        if self.ic.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "ic.heartbeat_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if self.ic.timesync_interval_ms < 10 {
            return Err(invalid(
                "ic.timesync_interval_ms",
                format!("{} is below 10", self.ic.timesync_interval_ms),
            ));
        }
        if let Some(socket) = &self.api.socket {
            self.api.socket = Some(resolve(&self.base_dir, socket));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut slots = std::collections::BTreeSet::new();
        for (i, disk) in self.disks.iter_mut().enumerate() {
            let key = |field: &str| format!("disk[{i}].{field}");
            disk.path = resolve(&self.base_dir, &disk.path);
            let name = disk.name.clone().unwrap_or_else(|| format!("disk{i}"));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    &key("name"),
                    format!("`{name}` is not [A-Za-z0-9_-]+"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(&key("name"), format!("`{name}` is used twice")));
            }
            disk.name = Some(name);
            let controller = disk.controller.unwrap_or(i as u32);
            if controller >= MAX_CONTROLLERS {
                return Err(invalid(
                    &key("controller"),
                    format!("{controller} is outside 0..{MAX_CONTROLLERS}"),
                ));
            }
            disk.controller = Some(controller);
            if !slots.insert((controller, disk.lun)) {
                return Err(invalid(
                    &key("lun"),
                    format!("controller {controller} LUN {} is used twice", disk.lun),
                ));
            }
            match disk.create_size_mib {
                Some(0) => {
                    return Err(invalid(
                        &key("create_size_mib"),
                        "must be at least 1".into(),
                    ))
                }
                Some(_) if disk.read_only => {
                    return Err(invalid(
                        &key("create_size_mib"),
                        "a read-only disk cannot be created".into(),
                    ))
                }
                Some(_) => {}
                None if !disk.path.exists() => {
                    return Err(invalid(
                        &key("path"),
                        format!(
                            "{} does not exist (set create_size_mib to create it)",
                            disk.path.display()
                        ),
                    ))
                }
                None => {}
            }
        }
        for (i, net) in self.nets.iter_mut().enumerate() {
            let key = |field: &str| format!("net[{i}].{field}");
            if net.tap.is_empty() || net.tap.len() > 15 || net.tap.contains(['/', ' ']) {
                return Err(invalid(
                    &key("tap"),
                    format!("`{}` is not an interface name", net.tap),
                ));
            }
            let mac = match &net.mac {
                Some(text) => parse_mac(text).ok_or_else(|| {
                    invalid(&key("mac"), format!("`{text}` is not xx:xx:xx:xx:xx:xx"))
                })?,
                None => [0x00, 0x15, 0x5d, 0, 0, i as u8 + 1],
            };
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(invalid(&key("mac"), "must be a unicast address".into()));
            }
            net.mac = Some(
                mac.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
            net.name.get_or_insert_with(|| format!("net{i}"));
        }
        Ok(())
    }

    /// Each disk's name (set for every disk once loaded).
    pub fn disk_name(disk: &DiskConfig) -> &str {
        disk.name.as_deref().unwrap_or("disk")
    }
}

/// `path` relative to `base` unless absolute.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// ", line L" for an error span, if toml gave one.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("/nonexistent-base"))
    }

    #[test]
    fn an_empty_config_runs_the_builtin_kernel_serving_with_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.guest.kernel, "builtin");
        assert_eq!(config.guest.cmdline, "serve");
        assert_eq!(config.guest.memory_mib, 128);
        assert!(config.ic.heartbeat && config.ic.shutdown);
        assert!(config.ic.timesync && config.ic.kvp);
        assert_eq!(config.ic.timesync_interval_ms, 5000);
        assert!(config.disks.is_empty());
        assert!(config.api.socket.is_none());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("[guest]\nmemory_mib = 64\ncolour = \"green\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn a_missing_image_is_named_by_key_and_path() {
        let err = parse("[[disk]]\npath = \"missing.img\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml: `disk[0].path`: /nonexistent-base/missing.img does not exist (set \
             create_size_mib to create it)"
        );
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (text, key) in [
            ("[guest]\nmemory_mib = 65536\n", "guest.memory_mib"),
            ("[guest]\nvcpus = 9\n", "guest.vcpus"),
            (
                "[ic]\nheartbeat_interval_ms = 0\n",
                "ic.heartbeat_interval_ms",
            ),
            (
                "[ic]\ntimesync_interval_ms = 5\n",
                "ic.timesync_interval_ms",
            ),
            ("[guest]\nkernel = \"no-such.elf\"\n", "guest.kernel"),
            (
                "[[disk]]\npath = \"a\"\ncreate_size_mib = 1\nread_only = true\n",
                "disk[0].create_size_mib",
            ),
            (
                "[[disk]]\npath = \"a\"\ncreate_size_mib = 1\n[[disk]]\npath = \"b\"\n\
                 create_size_mib = 1\ncontroller = 0\n",
                "disk[1].lun",
            ),
            (
                "[[disk]]\nname = \"x\"\npath = \"a\"\ncreate_size_mib = 1\n[[disk]]\n\
                 name = \"x\"\npath = \"b\"\ncreate_size_mib = 1\n",
                "disk[1].name",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn paths_resolve_against_the_config_directory_and_disks_get_names_and_controllers() {
        let config = parse(
            "[api]\nsocket = \"api.sock\"\n[[disk]]\npath = \"a.img\"\ncreate_size_mib = 8\n\
             [[disk]]\nname = \"data\"\npath = \"/abs/b.img\"\ncreate_size_mib = 8\n",
        )
        .unwrap();
        assert_eq!(
            config.api.socket.as_deref(),
            Some(Path::new("/nonexistent-base/api.sock"))
        );
        assert_eq!(config.disks[0].path, Path::new("/nonexistent-base/a.img"));
        assert_eq!(config.disks[1].path, Path::new("/abs/b.img"));
        assert_eq!(config.disks[0].name.as_deref(), Some("disk0"));
        assert_eq!(config.disks[1].name.as_deref(), Some("data"));
        assert_eq!(config.disks[1].controller, Some(1));
    }

    #[test]
    fn network_adapters_get_names_and_macs_and_bad_ones_name_their_key() {
        let config =
            parse("[[net]]\ntap = \"vtap0\"\n[[net]]\ntap = \"t1\"\nmac = \"02:00:00:00:00:09\"\n")
                .unwrap();
        assert_eq!(config.nets[0].name.as_deref(), Some("net0"));
        assert_eq!(config.nets[0].mac_bytes(), [0x00, 0x15, 0x5d, 0, 0, 1]);
        assert_eq!(config.nets[1].mac_bytes(), [2, 0, 0, 0, 0, 9]);
        for (text, key) in [
            ("[[net]]\ntap = \"a-much-too-long-name\"\n", "net[0].tap"),
            (
                "[[net]]\ntap = \"t\"\nmac = \"01:00:00:00:00:01\"\n",
                "net[0].mac",
            ),
            ("[[net]]\ntap = \"t\"\nmac = \"zz\"\n", "net[0].mac"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
                "{err}"
            );
        }
    }

    #[test]
    fn the_example_config_loads_as_it_is() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-disks.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.disks.len(), 2);
        assert!(config.api.socket.is_some());
        assert_eq!(config.guest.cmdline, "serve");
        assert!(config.ic.timesync && config.ic.kvp);
        assert_eq!(config.ic.timesync_interval_ms, 5000);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sdk-example.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.guest.kernel, "sdk-example");
        assert_eq!(config.disks.len(), 1);
    }
}
