//! The state format of the release before this one (version 1), read so that HUP on a running
//! master of that release upgrades it to this one. Read-only and frozen: this image never
//! writes it. Its workers carried ages instead of `CLOCK_MONOTONIC` moments, and no generation.

use std::os::fd::RawFd;
use std::time::Duration;

use super::{State, UpgradeError};
use crate::master::clock::Ms;
use crate::master::cluster::BOOT_TIMEOUT;
use crate::master::handover::Handover;
use crate::master::table::{Worker, WorkerPhase};
use crate::socket::Inherited;

/// A worker as version 1 wrote it.
#[derive(serde::Deserialize)]
struct WorkerV1 {
    id: u64,
    slot: usize,
    pid: i32,
    pipe: Option<RawFd>,
    healthy: Option<bool>,
    ready: bool,
    age_ms: u64,
    ready_age_ms: Option<u64>,
    retiring: Option<(u64, bool)>,
    closing_socket: Option<u64>,
    #[serde(default)]
    record: Option<usize>,
    #[serde(default)]
    max_requests: u64,
}

/// Version 1's whole state.
#[derive(serde::Deserialize)]
struct StateV1 {
    sockets: Option<Inherited>,
    workers: Vec<WorkerV1>,
    next_id: u64,
    target: usize,
    configured_workers: usize,
    restarts: u64,
    failures: u32,
    respawn_in_ms: u64,
    #[serde(default)]
    board_fd: Option<RawFd>,
    #[serde(default)]
    metrics_fd: Option<RawFd>,
    #[serde(default)]
    slot_restarts: Vec<u64>,
    #[serde(default)]
    master_age_ms: u64,
}

/// Reads a version 1 state, turning its ages into moments as of `now`.
pub fn parse(text: &[u8], now: Ms) -> Result<State, UpgradeError> {
    let old: StateV1 =
        serde_json::from_slice(text).map_err(|e| UpgradeError::State(e.to_string()))?;
    let ago = |ms: u64| now.minus(Duration::from_millis(ms));
    let pipes = old
        .workers
        .iter()
        .filter_map(|w| Some((w.id, w.pipe?)))
        .collect();
    let workers: Vec<Worker> = old
        .workers
        .into_iter()
        .map(|w| {
            let started = ago(w.age_ms);
            let phase = match (w.retiring, w.ready) {
                (Some((in_ms, killed)), _) => WorkerPhase::Stopping {
                    kill_at: now.plus(Duration::from_millis(in_ms)),
                    killed,
                    closing: w.closing_socket,
                },
                (None, true) => WorkerPhase::Ready {
                    since: ago(w.ready_age_ms.unwrap_or(w.age_ms)),
                },
                (None, false) => WorkerPhase::Booting {
                    deadline: started.plus(BOOT_TIMEOUT),
                },
            };
            Worker {
                id: w.id,
                slot: w.slot,
                pid: w.pid,
                generation: 0,
                started,
                phase,
                healthy: w.healthy,
                record: if old.board_fd.is_some() {
                    w.record
                } else {
                    None
                },
                max_requests: w.max_requests,
                over_memory: 0,
            }
        })
        .collect();
    let replacing = pairs(&workers);
    let mut state = State::new(
        old.sockets
            .ok_or_else(|| UpgradeError::State("no socket table".into()))?,
        Handover {
            workers,
            replacing,
            next_id: old.next_id,
            target: old.target,
            configured_workers: old.configured_workers,
            restarts: old.restarts,
            slot_restarts: old.slot_restarts,
            failures: old.failures,
            respawn_at: now.plus(Duration::from_millis(old.respawn_in_ms)),
            started: ago(old.master_age_ms),
            generations: 0,
        },
        pipes,
    );
    state.board_fd = old.board_fd;
    state.metrics_fd = old.metrics_fd;
    // Version 1 did not say who wrote it; the process that reads it is the one that exec'd.
    state.master_pid = 0;
    Ok(state)
}

/// Version 1 did not write a rollout's booting replacements: a booting worker that shares its
/// slot with a serving one is that one's replacement.
fn pairs(workers: &[Worker]) -> Vec<(u64, u64)> {
    workers
        .iter()
        .filter(|w| matches!(w.phase, WorkerPhase::Booting { .. }))
        .filter_map(|new| {
            let old = workers
                .iter()
                .find(|o| o.id != new.id && o.slot == new.slot && o.is_ready())?;
            Some((new.id, old.id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the previous release's master wrote for one ready worker, one stopping, one booting.
    const V1: &str = r#"{"version":1,"sockets":{"mode":"per-worker","addr":"127.0.0.1:8080","backlog":1024,"slots":[[5,false,1],[6,false,2]],"fallback":[],"group":[1,2],"closing":[],"next_serial":3,"steer":true},
        "workers":[
          {"id":3,"slot":0,"pid":4711,"pipe":9,"healthy":true,"ready":true,"age_ms":5000,"ready_age_ms":4000,"retiring":null,"closing_socket":null,"record":0,"max_requests":0},
          {"id":4,"slot":1,"pid":4712,"pipe":10,"healthy":null,"ready":true,"age_ms":5000,"ready_age_ms":4000,"retiring":[800,false],"closing_socket":7,"record":1,"max_requests":10},
          {"id":5,"slot":1,"pid":4713,"pipe":null,"healthy":null,"ready":false,"age_ms":200,"ready_age_ms":null,"retiring":null,"closing_socket":null,"record":2,"max_requests":0}],
        "next_id":6,"target":2,"configured_workers":2,"restarts":1,"failures":0,"respawn_in_ms":0,"board_fd":11,"metrics_fd":null,"slot_restarts":[1],"master_age_ms":9000}"#;

    #[test]
    fn a_version_1_state_reads_as_this_versions_workers() {
        let now = Ms(100_000);
        let s = parse(V1.as_bytes(), now).expect("parses");
        let w = &s.cluster.workers;
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].started, Ms(95_000));
        assert_eq!(w[0].phase, WorkerPhase::Ready { since: Ms(96_000) });
        assert_eq!(
            w[1].phase,
            WorkerPhase::Stopping {
                kill_at: Ms(100_800),
                killed: false,
                closing: Some(7)
            }
        );
        assert_eq!(
            w[2].phase,
            WorkerPhase::Booting {
                deadline: Ms(99_800).plus(BOOT_TIMEOUT)
            }
        );
        assert_eq!(s.pipes, vec![(3, 9), (4, 10)]);
        // Worker 5 boots in slot 1 beside worker 4, which is stopping: no pair.
        assert!(s.cluster.replacing.is_empty());
        assert_eq!(s.board_fd, Some(11));
        assert_eq!(s.cluster.started, Ms(91_000));
        assert_eq!((s.cluster.next_id, s.cluster.target), (6, 2));
    }

    #[test]
    fn a_version_1_rollout_in_flight_keeps_its_pair() {
        // Worker 5 boots in slot 0 beside worker 3, which serves: it is 3's replacement.
        let text = V1.replace(r#""id":5,"slot":1"#, r#""id":5,"slot":0"#);
        let s = parse(text.as_bytes(), Ms(100_000)).expect("parses");
        assert_eq!(s.cluster.replacing, vec![(5, 3)]);
    }
}
