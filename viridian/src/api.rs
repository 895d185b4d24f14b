//! The management API: REST over a Unix socket (as Firecracker and Cloud Hypervisor serve theirs),
//! by tiny_http. Routes:
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/status` | the status document ([`crate::status::status`]) |
//! | `GET /v1/metrics` | Prometheus text |
//! | `POST /v1/shutdown` | graceful shutdown through the shutdown IC, hard stop after the timeout |
//! | `POST /v1/stop` | hard stop |
//! | `PUT /v1/disks/{name}` | hot-add a disk on a new SCSI controller (body: [`DiskRequest`]) |
//! | `DELETE /v1/disks/{name}` | rescind the controller of a hot-added disk |
//! | `GET /v1/kvp` | enumerate the guest's KVP values again (`?pool=auto` by default) |
//! | `GET /v1/kvp/{key}` | read a key from the guest (`?pool=external` by default: what the host pushed) |
//! | `PUT /v1/kvp/{key}` | push a key into the guest (body: `{"value": "..."}`; `?pool=`) |
//! | `DELETE /v1/kvp/{key}` | remove a key from the guest's pool |
//!
//! Errors are JSON `{"error": "..."}` with a 4xx/5xx status. Every request is answered on its own
//! thread, so a shutdown that waits for the guest never holds up `status`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use ic_protocol::kvp::KvpPool;

use crate::config::{DiskConfig, MAX_CONTROLLERS};
use crate::confine::{Confinement, Kind};
use crate::machine::{controller_device, Controller, RunState, Shared};

/// Largest request body read.
const MAX_BODY: u64 = 64 << 10;

/// The body of `PUT /v1/disks/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    /// The raw image (absolute, or relative to the service's working directory).
    pub path: PathBuf,
    /// Refuse the guest's writes.
    #[serde(default)]
    pub read_only: bool,
    /// Bypass the host page cache.
    #[serde(default)]
    pub direct: bool,
    /// Create the image, sparse, with this size (MiB) if it does not exist.
    pub create_size_mib: Option<u64>,
}

/// The body of `PUT /v1/kvp/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvpPush {
    /// The value (a string).
    pub value: String,
}

/// How long a KVP call waits for the guest.
const KVP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running API server; dropping it stops it and removes the socket.
pub struct Api {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    /// Listens on `path` (a stale socket nobody serves is replaced; a live one is an error). The
    /// API threads are confined as [`Kind::Api`] before the socket is made.
    pub fn start(path: &Path, shared: Arc<Shared>, confine: Confinement) -> Result<Self> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is served by another process", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("viridian-api".into())
                .spawn(move || {
                    if let Err(e) = confine.confine(Kind::Api) {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e)));
                        return;
                    }
                    match Server::http_unix(&path) {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(()));
                            serve(server, shared, &stop);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
                        }
                    }
                })
                .context("starting the API thread")?
        };
        ready_rx
            .recv()
            .context("the API thread ended before listening")?
            .with_context(|| format!("listening on {}", path.display()))?;
        tracing::info!(socket = %path.display(), "API listening");
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(server: Server, shared: Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => {
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("viridian-api-request".into())
                    .spawn(move || handle(request, &shared));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a thread for an API request");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "API socket failed");
                return;
            }
        }
    }
}

fn json_response(code: u16, body: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("Content-Type", "application/json").expect("static header");
    Response::from_string(body.to_string())
        .with_status_code(code)
        .with_header(header)
}

fn error(code: u16, message: impl std::fmt::Display) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(code, &json!({ "error": message.to_string() }))
}

fn handle(mut request: Request, shared: &Shared) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let mut body = Vec::new();
    if let Err(e) = request.as_reader().take(MAX_BODY).read_to_end(&mut body) {
        let _ = request.respond(error(400, format!("reading the body: {e}")));
        return;
    }
    tracing::debug!(%method, %url, "API request");
    let response = route(&method, &url, &body, shared);
    let _ = request.respond(response);
}

fn route(
    method: &Method,
    url: &str,
    body: &[u8],
    shared: &Shared,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match (method, path) {
        (Method::Get, "/v1/status") => json_response(200, &crate::status::status(shared)),
        (Method::Get, "/v1/metrics") => {
            let header = Header::from_bytes("Content-Type", "text/plain; version=0.0.4")
                .expect("static header");
            Response::from_string(crate::status::metrics(shared)).with_header(header)
        }
        (Method::Post, "/v1/shutdown") => {
            let clean = shared.shutdown_gracefully();
            json_response(
                200,
                &json!({ "result": if clean { "shut-down" } else { "stopped-hard" } }),
            )
        }
        (Method::Post, "/v1/stop") => {
            shared.stop_hard();
            json_response(200, &json!({ "result": "stopped" }))
        }
        (Method::Put, p) if p.starts_with("/v1/disks/") => {
            let name = &p["/v1/disks/".len()..];
            match serde_json::from_slice::<DiskRequest>(body) {
                Ok(req) => match add_disk(shared, name, req) {
                    Ok(relid) => json_response(200, &json!({ "name": name, "relid": relid })),
                    Err(e) => error(400, format!("{e:#}")),
                },
                Err(e) => error(400, format!("the disk request: {e}")),
            }
        }
        (Method::Delete, p) if p.starts_with("/v1/disks/") => {
            match remove_disk(shared, &p["/v1/disks/".len()..]) {
                Ok(relid) => json_response(200, &json!({ "rescinded": relid })),
                Err(e) => error(400, format!("{e:#}")),
            }
        }
        (Method::Get, "/v1/kvp") => match kvp_list(shared, query) {
            Ok(values) => json_response(200, &values),
            Err(e) => error(503, format!("{e:#}")),
        },
        (method, p) if p.starts_with("/v1/kvp/") => {
            match kvp_key(shared, method, &p["/v1/kvp/".len()..], query, body) {
                Ok(answer) => json_response(200, &answer),
                Err(KvpApiError::Request(e)) => error(400, format!("{e:#}")),
                Err(KvpApiError::Guest(e)) => error(503, format!("{e:#}")),
            }
        }
        (_, "/v1/status" | "/v1/metrics" | "/v1/shutdown" | "/v1/stop" | "/v1/kvp") => {
            error(405, format!("{method} is not allowed on {path}"))
        }
        _ => error(404, format!("no route {method} {path}")),
    }
}

fn add_disk(shared: &Shared, name: &str, req: DiskRequest) -> Result<u32> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("disk name `{name}` is not [A-Za-z0-9_-]+");
    }
    if shared.state() != RunState::Running {
        bail!("the guest is {}", shared.state().name());
    }
    let mut controllers = shared.controllers();
    if controllers
        .iter()
        .any(|c| c.disks.iter().any(|d| d.0 == name))
    {
        bail!("a disk named `{name}` exists");
    }
    let index = (0..MAX_CONTROLLERS)
        .find(|i| controllers.iter().all(|c| c.index != *i))
        .context("every SCSI controller is in use")?;
    let disk = DiskConfig {
        name: Some(name.to_string()),
        path: req.path,
        read_only: req.read_only,
        direct: req.direct,
        controller: Some(index),
        lun: 0,
        create_size_mib: req.create_size_mib,
    };
    if disk.create_size_mib.is_none() && !disk.path.exists() {
        bail!("{} does not exist", disk.path.display());
    }
    let backend = crate::machine::open_disk(&disk)?;
    let (device, names) = controller_device(index, &[(&disk, backend.clone())]);
    let stats = device.stats();
    let relid = shared
        .vmbus
        .add_device(crate::inject::wrap_device(
            &names.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
            Arc::new(device),
        ))
        .with_context(|| format!("offering SCSI controller {index}"))?;
    tracing::info!(disk = name, relid, controller = index, path = %disk.path.display(), "disk added");
    controllers.push(Controller {
        index,
        relid,
        disks: names,
        backends: vec![backend],
        stats,
    });
    Ok(relid)
}

fn remove_disk(shared: &Shared, name: &str) -> Result<u32> {
    let mut controllers = shared.controllers();
    let at = controllers
        .iter()
        .position(|c| c.disks.iter().any(|d| d.0 == name))
        .with_context(|| format!("no disk named `{name}`"))?;
    if controllers[at].disks.len() > 1 {
        bail!(
            "disk `{name}` shares controller {} with other disks: remove is per controller",
            controllers[at].index
        );
    }
    let relid = controllers[at].relid;
    shared
        .vmbus
        .remove_device(relid)
        .with_context(|| format!("rescinding relid {relid}"))?;
    let controller = controllers.remove(at);
    for backend in &controller.backends {
        backend
            .flush()
            .with_context(|| format!("flushing disk `{name}`"))?;
    }
    tracing::info!(disk = name, relid, "disk removed");
    Ok(relid)
}

/// A KVP API call that failed: the request was wrong (400) or the guest did not answer (503).
enum KvpApiError {
    Request(anyhow::Error),
    Guest(anyhow::Error),
}

/// The pool named by `?pool=` (`auto`, `guest`, `external`, or a number below 5), else `default`.
fn pool(query: &str, default: KvpPool) -> Result<KvpPool> {
    let Some(name) = query.split('&').find_map(|kv| kv.strip_prefix("pool=")) else {
        return Ok(default);
    };
    Ok(match name {
        "external" => KvpPool::EXTERNAL,
        "guest" => KvpPool::GUEST,
        "auto" => KvpPool::AUTO,
        n => match n.parse::<u8>() {
            Ok(n) if n < KvpPool::COUNT => KvpPool(n),
            _ => bail!("pool `{name}` is not auto, guest, external or 0-4"),
        },
    })
}

fn kvp_handle(shared: &Shared) -> Result<&host_vsp::synthetic::ic::KvpHandle> {
    shared
        .kvp
        .as_deref()
        .context("the KVP IC is not offered (`ic.kvp = false`)")
}

fn kvp_list(shared: &Shared, query: &str) -> Result<serde_json::Value> {
    let pool = pool(query, KvpPool::AUTO)?;
    let values = kvp_handle(shared)?.enumerate(pool, KVP_TIMEOUT)?;
    let values: serde_json::Map<String, serde_json::Value> = values
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    Ok(json!({ "pool": pool.0, "values": values }))
}

fn kvp_key(
    shared: &Shared,
    method: &Method,
    key: &str,
    query: &str,
    body: &[u8],
) -> Result<serde_json::Value, KvpApiError> {
    let request = |e: anyhow::Error| KvpApiError::Request(e);
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(request(anyhow::anyhow!(
            "key `{key}` is not [A-Za-z0-9._-]+"
        )));
    }
    let pool = pool(query, KvpPool::EXTERNAL).map_err(request)?;
    let handle = kvp_handle(shared).map_err(request)?;
    let guest = |e: host_vsp::synthetic::ic::KvpCallError| KvpApiError::Guest(e.into());
    match method {
        Method::Get => {
            let value = handle.get(pool, key, KVP_TIMEOUT).map_err(guest)?;
            Ok(json!({ "pool": pool.0, "key": key, "value": value }))
        }
        Method::Put => {
            let push: KvpPush = serde_json::from_slice(body)
                .map_err(|e| request(anyhow::anyhow!("the KVP request: {e}")))?;
            handle
                .push(pool, key, &push.value, KVP_TIMEOUT)
                .map_err(guest)?;
            tracing::info!(key, pool = pool.0, "KVP key pushed to the guest");
            Ok(json!({ "pool": pool.0, "key": key, "value": push.value }))
        }
        Method::Delete => {
            let found = handle.delete(pool, key, KVP_TIMEOUT).map_err(guest)?;
            Ok(json!({ "pool": pool.0, "key": key, "deleted": found }))
        }
        other => Err(request(anyhow::anyhow!(
            "{other} is not allowed on /v1/kvp/{key}"
        ))),
    }
}
