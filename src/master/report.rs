//! The document of `clusterd status --json`: the cluster, and each worker with what the edge
//! just observed. Pure; runs in the master.

use super::clock::Ms;
use super::cluster::Cluster;
use super::event::Seen;
use crate::counter::Desc;

/// `clusterd status --json`: the cluster, each worker with what the edge just observed, and
/// the app's counters summed over the workers (`name{label="value"}`: total).
pub fn document(
    c: &Cluster,
    seen: &[Seen],
    counters: &[(Desc, u64)],
    pid: i32,
    now: Ms,
) -> serde_json::Value {
    let counters: serde_json::Map<String, serde_json::Value> = counters
        .iter()
        .map(|(d, n)| {
            let labels: Vec<String> = d
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            // As `/metrics` names them: counters end in _total.
            let name = match labels.is_empty() {
                true => format!("{}_total", d.name),
                false => format!("{}_total{{{}}}", d.name, labels.join(",")),
            };
            (name, serde_json::json!(n))
        })
        .collect();
    let workers: Vec<serde_json::Value> = c
        .table
        .workers
        .iter()
        .map(|w| {
            let o = seen.iter().find(|o| o.id == w.id);
            serde_json::json!({
                "slot": w.slot,
                "id": w.id,
                "pid": w.pid,
                "state": w.phase.name(),
                "uptime_s": now.since(w.started).as_secs(),
                "restarts": c.slot_restarts.get(w.slot).copied().unwrap_or(0),
                "connections": o.and_then(|o| o.connections),
                "queue": o.and_then(|o| o.queue).map(|q| q.0),
                "queue_max": o.and_then(|o| o.queue).map(|q| q.1),
                "requests": o.and_then(|o| o.requests),
                "rss_bytes": o.and_then(|o| o.rss),
                "heartbeat_age_ms": o.and_then(|o| o.heartbeat_age_ms),
                "oldest_request": o.and_then(|o| o.request.as_ref()).map(|r| {
                    let (method, path) = r.what.split_once(' ').unwrap_or((&r.what, ""));
                    serde_json::json!({
                        "method": method,
                        "path": path,
                        "age_ms": now.0.saturating_sub(r.started_ms),
                    })
                }),
                "store": w.healthy.map(|h| if h { "up" } else { "down" }),
            })
        })
        .collect();
    let health: Vec<bool> = c.table.live().filter_map(|w| w.healthy).collect();
    serde_json::json!({
        "master": {
            "pid": pid,
            "uptime_s": now.since(c.started).as_secs(),
            "workers": c.table.ready(),
            "target": c.target,
            "max_workers": c.config.max_workers,
            "restarts": c.restarts,
            "reloading": c.reloading(),
            "generation": c.generation,
            "note": c.note,
            "status": c.status_line(),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "store": {
            "kind": c.label.as_deref().map(|l| l.trim_start_matches("store ")),
            "up": health.iter().filter(|h| **h).count(),
            "down": health.iter().filter(|h| !**h).count(),
        },
        "workers": workers,
        "counters": counters,
    })
}
