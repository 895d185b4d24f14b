//! The JSON document `testbed --json` writes: the rows ([`super::json`]) together with what a reader
//! needs to compare runs — the schema version, the tool's version, the TSC rate, the disk backend and
//! whether the run was interrupted.
//!
//! ```json
//! { "schema_version": 2, "tool": { "name": "testbed", "version": "0.1.0" }, "tsc_hz": 2600000000,
//!   "backend": { "kind": "file", "path": "disk.img", "bytes": 67108864, "read_only": true,
//!                "created": false },
//!   "interrupted": false, "rows": [ ... ] }
//! ```
//! A RAM disk is `{ "kind": "ram", "bytes": N, "read_only": false }`. Each row has a `kind`: `block`
//! (counts per I/O) or `net` (counts per packet, see [`super::Kind::Net`]). `schema_version` grows when a
//! field changes meaning or goes away; new fields may appear without it.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::Row;

/// Version of the document's layout.
/// 2: rows carry `kind`; network rows (`kind: net`) count per packet (`packets`, `pps`, `*_per_packet`)
/// instead of per I/O.
pub const SCHEMA_VERSION: u64 = 2;

/// The disk the devices served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendInfo {
    /// A RAM disk.
    Ram {
        /// Its size.
        bytes: u64,
    },
    /// A raw image file.
    File {
        /// Its path, as given.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// Opened read-only (no workload wrote).
        read_only: bool,
        /// Created by this run.
        created: bool,
    },
}

/// What the document says besides the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The tool's version.
    pub tool_version: String,
    /// TSC ticks per second the run was measured with.
    pub tsc_hz: u64,
    /// The disk.
    pub backend: BackendInfo,
    /// The run was interrupted: rows cover only the workloads that finished.
    pub interrupted: bool,
}

/// The document for `rows`.
pub fn document(rows: &[Row], info: &RunInfo) -> Value {
    let backend = match &info.backend {
        BackendInfo::Ram { bytes } => json!({ "kind": "ram", "bytes": bytes, "read_only": false }),
        BackendInfo::File {
            path,
            bytes,
            read_only,
            created,
        } => json!({
            "kind": "file",
            "path": path.display().to_string(),
            "bytes": bytes,
            "read_only": read_only,
            "created": created,
        }),
    };
    json!({
        "schema_version": SCHEMA_VERSION,
        "tool": { "name": "testbed", "version": info.tool_version },
        "tsc_hz": info.tsc_hz,
        "backend": backend,
        "interrupted": info.interrupted,
        "rows": super::json(rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_the_schema_tool_tsc_backend_and_rows() {
        let rows = super::super::tests::rows();
        let info = RunInfo {
            tool_version: "9.9.9".into(),
            tsc_hz: 2_500_000_000,
            backend: BackendInfo::File {
                path: "/tmp/x.img".into(),
                bytes: 1 << 20,
                read_only: true,
                created: false,
            },
            interrupted: false,
        };
        let v = document(&rows, &info);
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["tool"]["version"], "9.9.9");
        assert_eq!(v["tsc_hz"], 2_500_000_000u64);
        assert_eq!(v["backend"]["kind"], "file");
        assert_eq!(v["backend"]["path"], "/tmp/x.img");
        assert_eq!(v["backend"]["read_only"], true);
        assert_eq!(v["rows"], super::super::json(&rows));
        let ram = document(
            &[],
            &RunInfo {
                backend: BackendInfo::Ram { bytes: 4096 },
                ..info
            },
        );
        assert_eq!(ram["backend"]["kind"], "ram");
        assert_eq!(ram["rows"], json!([]));
    }
}
