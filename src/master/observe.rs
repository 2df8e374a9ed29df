//! Observing the workers: the scoreboard and `/proc`, read once per observation. Runs in the
//! master, at the edge; what it returns is plain data for the decisions (`deadlines.rs`) and the
//! status document.

use std::sync::atomic::Ordering::Relaxed;

use super::balance::Sample;
use super::clock::Ms;
use super::event::Seen;
use super::table::Table;
use crate::process;
use crate::scoreboard::Board;

/// Every worker with a pid, as it is now; `queue` reads a slot's accept queue. The queues are
/// also written to the workers' records, for `/metrics` and the dashboard.
pub fn observe(
    table: &Table,
    board: Board,
    queue: impl Fn(usize) -> Option<(u32, u32)>,
    now: Ms,
) -> Vec<Seen> {
    table
        .workers
        .iter()
        .filter(|w| w.pid > 0)
        .map(|w| {
            let record = w.record.and_then(|i| board.records.get(i));
            let queue = queue(w.slot);
            if let (Some(r), Some((len, max))) = (record, queue) {
                r.accept_queue.store(u64::from(len), Relaxed);
                r.accept_queue_max.store(u64::from(max), Relaxed);
            }
            Seen {
                id: w.id,
                heartbeat_age_ms: record.and_then(|r| r.heartbeat_age_ms(now.0)),
                stopped: process_state(w.pid) == Some('T'),
                rss: process::rss_bytes(w.pid),
                requests: record.map(|r| r.requests.load(Relaxed)),
                connections: record.map(|r| r.connections.load(Relaxed).max(0) as u64),
                queue,
                request: record.and_then(|r| r.request()),
            }
        })
        .collect()
}

/// Every open slot, for `--balance load`: whether a worker of it runs and serves (a slot
/// with none, its worker dead and not yet replaced, counts as stopped), the freshest heartbeat
/// among those, and the slot's accept queue.
pub fn sample_slots(
    table: &Table,
    open: &[usize],
    board: Board,
    queue: impl Fn(usize) -> Option<(u32, u32)>,
    now: Ms,
) -> Vec<Sample> {
    let mut slots: std::collections::BTreeMap<usize, Sample> = open
        .iter()
        .map(|&slot| {
            let queue = queue(slot).map_or(0, |q| q.0);
            let s = Sample {
                slot,
                stopped: true,
                heartbeat_age_ms: None,
                queue,
            };
            (slot, s)
        })
        .collect();
    for w in table.live().filter(|w| w.pid > 0) {
        let Some(s) = slots.get_mut(&w.slot) else {
            continue;
        };
        if w.is_ready() && process_state(w.pid) != Some('T') {
            s.stopped = false;
            let age = w
                .record
                .and_then(|i| board.records.get(i))
                .and_then(|r| r.heartbeat_age_ms(now.0));
            s.heartbeat_age_ms = match (s.heartbeat_age_ms, age) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    slots.into_values().collect()
}

/// A process's state letter (R, S, T, ...), from /proc/PID/stat.
pub fn process_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// A process's parent, from /proc/PID/stat: an adopted worker must still be our child.
pub fn parent(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The fields of /proc/PID/stat after the command name (state, ppid, ...).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}
