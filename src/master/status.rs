//! What the master shows: the one-line status for systemd (`STATUS=`) and the document of
//! `clusterd status --json`. Pure; runs in the master.

use super::clock::Ms;
use super::cluster::Cluster;
use super::deadlines::Seen;

/// What the status line is made of, taken from the worker table.
#[derive(Debug, Clone, Default)]
pub struct Snapshot<'a> {
    /// Live workers that serve.
    pub ready: usize,
    /// Workers wanted.
    pub target: usize,
    /// Unplanned deaths since start.
    pub restarts: u64,
    /// A rolling restart is under way.
    pub reloading: bool,
    /// The last health report of every live worker that sent one (true = up).
    pub health: Vec<bool>,
    /// What the health reports are about ("store redis"), if the app reports any.
    pub label: Option<&'a str>,
    /// Something the operator should know, e.g. why the last reload failed.
    pub note: Option<&'a str>,
}

impl Snapshot<'_> {
    /// "2/2 workers ready, 0 restarts, store redis ok".
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}/{} workers ready, {} restarts",
            self.ready, self.target, self.restarts
        );
        if self.reloading {
            s.push_str(", reloading");
        }
        let label = self.label.unwrap_or("app");
        if !self.health.is_empty() {
            let down = self.health.iter().filter(|ok| !**ok).count();
            if down == 0 {
                s.push_str(&format!(", {label} ok"));
            } else {
                s.push_str(&format!(
                    ", {label} down on {down}/{} workers",
                    self.health.len()
                ));
            }
        } else if self.label.is_some() {
            s.push_str(&format!(", {label}"));
        }
        if let Some(note) = self.note {
            s.push_str("; ");
            s.push_str(note);
        }
        s
    }
}

/// `clusterd status --json`: the cluster, and each worker with what the edge just observed.
pub fn document(c: &Cluster, seen: &[Seen], pid: i32, now: Ms) -> serde_json::Value {
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
                "requests": o.and_then(|o| o.requests),
                "rss_bytes": o.and_then(|o| o.rss),
                "heartbeat_age_ms": o.and_then(|o| o.heartbeat_age_ms),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_readiness_restarts_and_health() {
        let mut s = Snapshot {
            ready: 1,
            target: 2,
            restarts: 3,
            reloading: true,
            health: vec![true, false],
            label: Some("store redis"),
            note: None,
        };
        assert_eq!(
            s.line(),
            "1/2 workers ready, 3 restarts, reloading, store redis down on 1/2 workers"
        );
        s.health = vec![true];
        s.reloading = false;
        assert_eq!(s.line(), "1/2 workers ready, 3 restarts, store redis ok");
        s.health.clear();
        assert_eq!(s.line(), "1/2 workers ready, 3 restarts, store redis");
        s.note = Some("reload failed: parsing config file x: bad");
        assert_eq!(
            s.line(),
            "1/2 workers ready, 3 restarts, store redis; reload failed: parsing config file x: bad"
        );
    }
}
