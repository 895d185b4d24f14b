//! `cargo xtask`: project automation. `cargo xtask ci` runs exactly what `.ci/run` runs.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ci") => ci(),
        Some(other) => bail!("unknown task `{other}`; tasks: ci"),
        None => bail!("usage: cargo xtask <task>; tasks: ci"),
    }
}

/// Run `.ci/run` itself so the two can never drift apart.
fn ci() -> Result<()> {
    let root = workspace_root();
    let status = Command::new("bash")
        .arg(root.join(".ci/run"))
        .current_dir(&root)
        .status()
        .context("spawning bash .ci/run")?;
    if !status.success() {
        bail!(".ci/run failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
