//! What `ctl status` and `ctl metrics` report: one [`status`] JSON document (state, uptime, per-vCPU
//! exits by reason, per-channel state and counters, per-controller disk I/O, heartbeat health, time
//! sync, the guest's KVP values) and the same numbers in the Prometheus text format ([`metrics`]).

use std::fmt::Write;
use std::time::Instant;

use host_vsp::vmbus_service::ChannelState;
use serde_json::{json, Value};

use crate::machine::Shared;

fn channel_state(shared: &Shared, relid: u32) -> &'static str {
    match shared.vmbus.channel_state(relid) {
        Some(ChannelState::Offered) => "offered",
        Some(ChannelState::Open) => "open",
        Some(ChannelState::Rescinded) => "rescinded",
        None => "gone",
    }
}

fn failed(shared: &Shared, relid: u32) -> Option<String> {
    shared
        .vmbus
        .failures()
        .into_iter()
        .find(|f| f.relid == relid)
        .map(|f| f.what)
}

/// Heartbeat health: `healthy` while the guest answered within three intervals (or, before its
/// first answer, within ten seconds of the start), `late` otherwise.
fn heartbeat(shared: &Shared) -> Value {
    let Some(ic) = &shared.heartbeat else {
        return Value::Null;
    };
    let s = ic.snapshot();
    let now = Instant::now();
    let since_start = shared
        .started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| now - t)
        .unwrap_or_default();
    let since_answer = s.last_answered.map(|t| now - t);
    let limit = shared.heartbeat_interval * 3;
    let health = match since_answer {
        Some(age)
            if age <= limit.max(shared.heartbeat_interval + std::time::Duration::from_secs(1)) =>
        {
            "healthy"
        }
        None if since_start <= std::time::Duration::from_secs(10) => "starting",
        _ => "late",
    };
    json!({
        "health": health,
        "negotiated": s.negotiated,
        "sent": s.heartbeats_sent,
        "answered": s.heartbeats_answered,
        "last_answer_ms_ago": since_answer.map(|d| d.as_millis() as u64),
        "errors": s.errors,
        "channel": channel_json(&s.channel),
    })
}

/// The time-sync IC: messages sent and answered, and the offset of the last answered sample (its
/// UTC minus the guest reference time it was taken at, 100 ns units).
fn timesync(shared: &Shared) -> Value {
    let Some(ic) = &shared.timesync else {
        return Value::Null;
    };
    let s = ic.snapshot();
    json!({
        "negotiated": s.negotiated,
        "version": s.version.map(|(major, minor)| format!("{major}.{minor}")),
        "syncs": s.syncs,
        "samples": s.samples,
        "answered": s.answered,
        "last_offset_100ns": s.last_offset,
        "last_answer_ms_ago": s.last_answered.map(|t| t.elapsed().as_millis() as u64),
        "errors": s.errors,
        "last_error": s.last_error,
        "channel": channel_json(&s.channel),
    })
}

/// The KVP IC: the guest's values as last enumerated, and the transaction counters.
fn kvp(shared: &Shared) -> Value {
    let Some(ic) = &shared.kvp else {
        return Value::Null;
    };
    let s = ic.state();
    let values: serde_json::Map<String, Value> = s
        .guest_values
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "negotiated": s.negotiated,
        "version": s.version.map(|(major, minor)| format!("{major}.{minor}")),
        "values": values,
        "enumerations": s.enumerations,
        "transactions": s.transactions,
        "timeouts": s.timeouts,
        "errors": s.errors,
        "last_error": s.last_error,
        "channel": channel_json(&s.channel),
    })
}

fn channel_json(c: &host_vsp::vmbus_service::HostChannelStats) -> Value {
    json!({
        "guest_signals": c.guest_signals,
        "interrupts": c.interrupts,
        "coalesced": c.coalesced,
        "wakeups": c.wakeups,
    })
}

/// The status document.
pub fn status(shared: &Shared) -> Value {
    let uptime = shared
        .started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    let stats = shared.probe.snapshot();
    let vcpus: Vec<Value> = stats
        .vcpus
        .iter()
        .map(|v| {
            let u = &v.user_exits;
            json!({
                "vp_index": v.vp_index,
                "user_exits": {
                    "io": u.io, "mmio": u.mmio, "msr_read": u.msr_read, "msr_write": u.msr_write,
                    "hlt": u.hlt, "shutdown": u.shutdown, "internal_error": u.internal_error,
                    "fail_entry": u.fail_entry, "interrupted": u.interrupted,
                    "system_event": u.system_event, "other": u.other,
                },
                "kvm_exits": v.kvm_exits,
                "halt_exits": v.halt_exits,
                "irq_injections": v.irq_injections,
            })
        })
        .collect();
    let mut channels = Vec::new();
    let mut disks = Vec::new();
    for c in shared.controllers().iter() {
        let s = *c.stats.lock().unwrap_or_else(|e| e.into_inner());
        channels.push(json!({
            "relid": c.relid,
            "device": "storvsp",
            "controller": c.index,
            "state": channel_state(shared, c.relid),
            "failed": failed(shared, c.relid),
            "packets": s.worker.packets,
            "counters": channel_json(&s.channel),
        }));
        for (name, lun, path, read_only) in &c.disks {
            disks.push(json!({
                "name": name,
                "path": path,
                "controller": c.index,
                "lun": lun,
                "read_only": read_only,
                "relid": c.relid,
                // storvsp counts per controller: a controller's disks share these.
                "requests": s.worker.requests,
                "failed_requests": s.worker.failed_requests,
                "io_panics": s.worker.io_panics,
                "bytes": s.worker.bytes,
            }));
        }
    }
    for (name, ic) in [
        ("heartbeat", &shared.heartbeat),
        ("shutdown", &shared.shutdown),
    ] {
        if let Some(ic) = ic {
            let s = ic.snapshot();
            channels.push(json!({
                "device": name,
                "state": if s.serving { "open" } else { "offered" },
                "counters": channel_json(&s.channel),
            }));
        }
    }
    if let Some(ic) = &shared.timesync {
        let s = ic.snapshot();
        channels.push(json!({
            "device": "timesync",
            "state": if s.serving { "open" } else { "offered" },
            "counters": channel_json(&s.channel),
        }));
    }
    if let Some(ic) = &shared.kvp {
        let s = ic.state();
        channels.push(json!({
            "device": "kvp",
            "state": if s.serving { "open" } else { "offered" },
            "counters": channel_json(&s.channel),
        }));
    }
    let nets: Vec<Value> = shared
        .nets
        .iter()
        .map(|n| {
            let s = n.stats.get();
            let w = &s.netvsp;
            json!({
                "name": n.name,
                "tap": n.tap,
                "mac": n.mac,
                "relid": n.relid,
                "state": channel_state(shared, n.relid),
                "failed": failed(shared, n.relid),
                "tx_frames": w.tx_frames, "tx_bytes": w.tx_bytes,
                "rx_frames": w.rx_frames, "rx_bytes": w.rx_bytes,
                "rx_dropped": w.rx_dropped_filtered + w.rx_dropped_no_buffer + w.rx_dropped_too_large,
                "tx_dropped": w.tx_dropped_backend_full + w.tx_dropped_bad_length + w.tx_dropped_not_initialized,
                "counters": channel_json(&s.channel),
            })
        })
        .collect();
    let failures: Vec<Value> = shared
        .vmbus
        .failures()
        .into_iter()
        .map(|f| json!({"relid": f.relid, "device": f.device, "what": f.what}))
        .collect();
    json!({
        "state": shared.state().name(),
        "uptime_s": uptime,
        "vcpus": vcpus,
        "channels": channels,
        "disks": disks,
        "nets": nets,
        "heartbeat": heartbeat(shared),
        "timesync": timesync(shared),
        "kvp": kvp(shared),
        "device_failures": failures,
    })
}

/// The same numbers in the Prometheus text exposition format.
pub fn metrics(shared: &Shared) -> String {
    let doc = status(shared);
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
        let _ = writeln!(
            out,
            "# HELP viridian_{name} {help}\n# TYPE viridian_{name} {kind}"
        );
        for (labels, value) in samples {
            let _ = writeln!(out, "viridian_{name}{labels} {value}");
        }
    };
    metric(
        "uptime_seconds",
        "Seconds since the guest started.",
        "gauge",
        &[(String::new(), doc["uptime_s"].as_f64().unwrap_or(0.0))],
    );
    let mut exits = Vec::new();
    for v in doc["vcpus"].as_array().into_iter().flatten() {
        let vp = v["vp_index"].as_u64().unwrap_or(0);
        for (reason, n) in v["user_exits"].as_object().into_iter().flatten() {
            exits.push((
                format!("{{vcpu=\"{vp}\",reason=\"{reason}\"}}"),
                n.as_f64().unwrap_or(0.0),
            ));
        }
    }
    metric(
        "user_exits_total",
        "vCPU exits to user space, by reason.",
        "counter",
        &exits,
    );
    let disk = |field: &str| -> Vec<(String, f64)> {
        doc["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    format!("{{disk=\"{}\"}}", d["name"].as_str().unwrap_or("")),
                    d[field].as_f64().unwrap_or(0.0),
                )
            })
            .collect()
    };
    metric(
        "disk_requests_total",
        "SCSI requests of the disk's controller.",
        "counter",
        &disk("requests"),
    );
    metric(
        "disk_bytes_total",
        "Data bytes moved by the disk's controller.",
        "counter",
        &disk("bytes"),
    );
    let hb = &doc["heartbeat"];
    if !hb.is_null() {
        metric(
            "heartbeats_answered_total",
            "Heartbeats the guest answered.",
            "counter",
            &[(String::new(), hb["answered"].as_f64().unwrap_or(0.0))],
        );
        metric(
            "heartbeat_healthy",
            "1 while the guest answers heartbeats in time.",
            "gauge",
            &[(
                String::new(),
                f64::from(u8::from(hb["health"] == "healthy")),
            )],
        );
    }
    let ts = &doc["timesync"];
    if !ts.is_null() {
        let n = |field: &str| ts[field].as_f64().unwrap_or(0.0);
        metric(
            "timesync_messages_total",
            "Time-sync messages sent, by kind.",
            "counter",
            &[
                ("{kind=\"sync\"}".to_string(), n("syncs")),
                ("{kind=\"sample\"}".to_string(), n("samples")),
            ],
        );
        metric(
            "timesync_answered_total",
            "Time-sync messages the guest answered.",
            "counter",
            &[(String::new(), n("answered"))],
        );
        metric(
            "timesync_errors_total",
            "Time-sync answers refused.",
            "counter",
            &[(String::new(), n("errors"))],
        );
    }
    let kv = &doc["kvp"];
    if !kv.is_null() {
        let n = |field: &str| kv[field].as_f64().unwrap_or(0.0);
        metric(
            "kvp_transactions_total",
            "KVP transactions the guest answered.",
            "counter",
            &[(String::new(), n("transactions"))],
        );
        metric(
            "kvp_timeouts_total",
            "KVP transactions the guest did not answer in time.",
            "counter",
            &[(String::new(), n("timeouts"))],
        );
        metric(
            "kvp_errors_total",
            "KVP answers refused.",
            "counter",
            &[(String::new(), n("errors"))],
        );
        metric(
            "kvp_guest_values",
            "Values in the guest's intrinsic pool as last enumerated.",
            "gauge",
            &[(
                String::new(),
                kv["values"].as_object().map_or(0, |m| m.len()) as f64,
            )],
        );
    }
    metric(
        "device_failures_total",
        "Device threads that failed.",
        "counter",
        &[(
            String::new(),
            doc["device_failures"].as_array().map_or(0, Vec::len) as f64,
        )],
    );
    out
}
