//! `viridian`: the host service. `viridian run CONFIG.toml` runs one guest with its synthetic devices
//! until it ends, managed through a REST API on a Unix socket; `viridian ctl --socket PATH ...` is
//! that API's client.
//!
//! Exit status of `run`:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the guest powered off cleanly (by itself, through `ctl shutdown` or SIGTERM), or `ctl stop` stopped it |
//! | 1 | the host failed (KVM, an image, the API socket) |
//! | 2 | the command line or the config is wrong (nothing was started) |
//! | 3 | the guest powered off reporting failure |
//! | 4 | the guest crashed (triple fault, CPU exception, a vCPU KVM could not run) |
//! | 5 | a graceful shutdown timed out and the guest was stopped hard |

mod api;
mod config;
mod confine;
mod console;
mod ctl;
mod inject;
mod machine;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::confine::{Confinement, Kind};
use crate::machine::{Ending, Machine};

#[derive(Debug, Parser)]
#[command(name = "viridian", version, about = "The viridian host service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the guest a config describes, until it ends.
    Run {
        /// The TOML config (see examples/).
        config: PathBuf,
        /// The API socket (overrides `api.socket`).
        #[arg(long)]
        api_socket: Option<PathBuf>,
        /// A tracing filter (overrides `log.level`; `RUST_LOG` overrides both).
        #[arg(long)]
        log_level: Option<String>,
        /// Log one JSON object per line.
        #[arg(long)]
        log_json: bool,
        /// Drop to this user (name or id) once /dev/kvm and the images are open.
        #[arg(long)]
        user: Option<String>,
        /// ... and this group (default: the user's).
        #[arg(long)]
        group: Option<String>,
    },
    /// Manage a running service through its API socket.
    Ctl {
        /// The service's API socket.
        #[arg(long)]
        socket: PathBuf,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// The status document (JSON).
    Status,
    /// Prometheus metrics.
    Metrics,
    /// Ask the guest to shut down through the shutdown IC; stop it hard after the timeout.
    Shutdown,
    /// Stop the guest hard.
    Stop,
    /// Hot-add or remove a disk.
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
    /// The guest's key-value pairs (KVP exchange IC); without a subcommand: list its values.
    Kvp {
        #[command(subcommand)]
        command: Option<KvpCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum KvpCommand {
    /// Enumerate a pool of the guest's values (default: its intrinsic values, the `auto` pool).
    List {
        /// `auto`, `guest`, `external` or 0-4.
        #[arg(long, default_value = "auto")]
        pool: String,
    },
    /// Read a key from the guest (default: the `external` pool, what the host pushed).
    Get {
        key: String,
        #[arg(long, default_value = "external")]
        pool: String,
    },
    /// Push a key-value pair into the guest.
    Set {
        key: String,
        value: String,
        #[arg(long, default_value = "external")]
        pool: String,
    },
    /// Remove a key from the guest's pool.
    Delete {
        key: String,
        #[arg(long, default_value = "external")]
        pool: String,
    },
}

#[derive(Debug, Subcommand)]
enum DiskCommand {
    /// Offer a new SCSI controller with this disk as LUN 0.
    Add {
        /// The disk's name.
        name: String,
        /// The raw image.
        path: PathBuf,
        /// Refuse the guest's writes.
        #[arg(long)]
        read_only: bool,
        /// Bypass the host page cache.
        #[arg(long)]
        direct: bool,
        /// Create the image, sparse, with this size if it does not exist.
        #[arg(long)]
        create_size_mib: Option<u64>,
    },
    /// Rescind the disk's controller.
    Remove {
        /// The disk's name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Run {
            config,
            api_socket,
            log_level,
            log_json,
            user,
            group,
        } => {
            let mut config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("viridian: {}", chain(&e));
                    return ExitCode::from(2);
                }
            };
            if let Some(socket) = api_socket {
                config.api.socket = Some(socket);
            }
            if user.is_some() {
                config.security.user = user;
            }
            if group.is_some() {
                config.security.group = group;
            }
            let identity = match &config.security.user {
                Some(user) => match confine::identity(user, config.security.group.as_deref()) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        eprintln!("viridian: `security.user`: {e}");
                        return ExitCode::from(2);
                    }
                },
                None if config.security.group.is_some() => {
                    eprintln!("viridian: `security.group` needs `security.user`");
                    return ExitCode::from(2);
                }
                None => None,
            };
            let confinement = confine::Confinement {
                seccomp: config.security.seccomp,
                identity,
            };
            init_logging(
                log_level.as_deref().unwrap_or(&config.log.level),
                log_json || config.log.json,
            );
            match run(&config, confinement) {
                Ok(ending) => report(&ending),
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("viridian: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ctl { socket, command } => match ctl(&socket, command) {
            Ok(text) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("viridian ctl: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// An error and its sources, each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(config: &Config, confinement: Confinement) -> Result<Ending> {
    // Every device thread (the VMBus service's and each channel's) is confined as it starts.
    let threads = host_vsp::device_threads::DeviceThreads::new();
    threads.on_thread_start(Arc::new(move |_name: &str| {
        confinement.confine(Kind::Device).map_err(|e| e.to_string())
    }));
    let _registry = threads.enter();
    let mut machine = Machine::build(config)?;
    let shared = machine.shared();
    let _api = match &config.api.socket {
        Some(path) => {
            let api = api::Api::start(path, shared.clone(), confinement)?;
            if let Some(id) = confinement.identity {
                std::os::unix::fs::chown(path, Some(id.uid), Some(id.gid))
                    .with_context(|| format!("giving {} to the service's user", path.display()))?;
            }
            Some(api)
        }
        None => None,
    };
    let _console = console::Console::start(shared.ram.clone(), machine.serial(), confinement)
        .context("starting the console reader")?;
    if let Some(identity) = confinement.identity {
        confine::drop_privileges(identity)?;
        tracing::info!(uid = identity.uid, gid = identity.gid, "dropped privileges");
    }
    // The main thread starts and waits for the vCPUs; they (and the signal thread) inherit this.
    confinement.confine(Kind::Vcpu)?;
    {
        // SIGTERM and SIGINT: a graceful shutdown; a second one stops the guest hard.
        let shared = shared.clone();
        let signals = Arc::new(std::sync::atomic::AtomicU32::new(0));
        ctrlc::set_handler(move || {
            let n = signals.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let shared = shared.clone();
            if n == 0 {
                tracing::info!("signal: shutting the guest down");
                std::thread::spawn(move || shared.shutdown_gracefully());
            } else {
                tracing::warn!("second signal: stopping the guest hard");
                shared.stop_hard();
            }
        })
        .context("installing the signal handler")?;
    }
    machine.start()?;
    tracing::info!(
        memory_mib = config.guest.memory_mib,
        disks = config.disks.len(),
        seccomp = confinement.seccomp,
        "guest started"
    );
    machine.join()
}

fn report(ending: &Ending) -> ExitCode {
    match ending {
        Ending::PoweredOff => {
            tracing::info!("the guest powered off");
            ExitCode::SUCCESS
        }
        Ending::Stopped {
            after_timeout: false,
        } => {
            tracing::info!("the guest was stopped");
            ExitCode::SUCCESS
        }
        Ending::GuestFailed(code) => {
            tracing::error!(code, "the guest powered off reporting failure");
            eprintln!("viridian: the guest powered off reporting failure (code {code})");
            ExitCode::from(3)
        }
        Ending::Crashed(what) => {
            tracing::error!("{what}");
            eprintln!("viridian: {what}");
            ExitCode::from(4)
        }
        Ending::Stopped {
            after_timeout: true,
        } => {
            eprintln!("viridian: the guest did not shut down in time and was stopped hard");
            ExitCode::from(5)
        }
    }
}

/// `text` if it can go into a request path as it is ([A-Za-z0-9._-]+), else an error naming `what`.
fn path_part<'a>(what: &str, text: &'a str) -> Result<&'a str> {
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        anyhow::bail!("{what} `{text}` is not [A-Za-z0-9._-]+");
    }
    Ok(text)
}

fn ctl(socket: &std::path::Path, command: CtlCommand) -> Result<String> {
    if let CtlCommand::Kvp {
        command:
            Some(
                KvpCommand::List { pool }
                | KvpCommand::Get { pool, .. }
                | KvpCommand::Set { pool, .. }
                | KvpCommand::Delete { pool, .. },
            ),
    } = &command
    {
        path_part("pool", pool)?;
    }
    if let CtlCommand::Kvp {
        command:
            Some(
                KvpCommand::Get { key, .. }
                | KvpCommand::Set { key, .. }
                | KvpCommand::Delete { key, .. },
            ),
    } = &command
    {
        path_part("key", key)?;
    }
    match command {
        CtlCommand::Status => ctl::request(socket, "GET", "/v1/status", None),
        CtlCommand::Metrics => ctl::request(socket, "GET", "/v1/metrics", None),
        CtlCommand::Shutdown => ctl::request(socket, "POST", "/v1/shutdown", None),
        CtlCommand::Stop => ctl::request(socket, "POST", "/v1/stop", None),
        CtlCommand::Disk {
            command:
                DiskCommand::Add {
                    name,
                    path,
                    read_only,
                    direct,
                    create_size_mib,
                },
        } => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("resolving {}", path.display()))?;
            let body = serde_json::json!({
                "path": path,
                "read_only": read_only,
                "direct": direct,
                "create_size_mib": create_size_mib,
            });
            ctl::request(
                socket,
                "PUT",
                &format!("/v1/disks/{name}"),
                Some(&body.to_string()),
            )
        }
        CtlCommand::Disk {
            command: DiskCommand::Remove { name },
        } => ctl::request(socket, "DELETE", &format!("/v1/disks/{name}"), None),
        CtlCommand::Kvp { command } => match command.unwrap_or(KvpCommand::List {
            pool: "auto".into(),
        }) {
            KvpCommand::List { pool } => {
                ctl::request(socket, "GET", &format!("/v1/kvp?pool={pool}"), None)
            }
            KvpCommand::Get { key, pool } => {
                ctl::request(socket, "GET", &format!("/v1/kvp/{key}?pool={pool}"), None)
            }
            KvpCommand::Set { key, value, pool } => ctl::request(
                socket,
                "PUT",
                &format!("/v1/kvp/{key}?pool={pool}"),
                Some(&serde_json::json!({ "value": value }).to_string()),
            ),
            KvpCommand::Delete { key, pool } => ctl::request(
                socket,
                "DELETE",
                &format!("/v1/kvp/{key}?pool={pool}"),
                None,
            ),
        },
    }
}
