//! Deadlines: pure decisions on what time (and the latest observation of the workers) says.
//! Runs in the master, every turn.
//!
//! [`murder`] (gunicorn's word): SIGKILL for a worker that overstays its stop; a booting worker
//! past its deadline (a rollout's replacement aborts the rollout); a hung worker (SIGABRT for a
//! backtrace, SIGKILL a second later, at once if it is stopped); the upgrade's check past its
//! deadline. [`recycle`] marks workers over `--max-requests` or `--max-worker-memory`.
//! [`next_wakeup`] says how long the loop may sleep.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::clock::Ms;
use super::cluster::{BOOT_TIMEOUT, Cluster, Why};
use super::event::{Action, Seen};
use super::table::WorkerPhase;

/// A hung worker's time between SIGABRT (for a backtrace) and SIGKILL.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);
/// Memory samples (a second apart) over `--max-worker-memory` before a worker is recycled.
pub const MEMORY_SAMPLES: u32 = 3;
/// How often the edge observes the workers (heartbeats, memory, request counts).
pub const OBSERVE_EVERY: Duration = Duration::from_millis(500);
/// The longest the loop sleeps with nothing to do, so it stays observable.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Kills what overstayed. `seen` is the latest observation, when one was made this turn.
pub fn murder(c: &mut Cluster, seen: Option<&[Seen]>, now: Ms, out: &mut Vec<Action>) {
    if let Some(check) = c.check.as_mut()
        && now >= check.deadline
    {
        // Reaped on a later turn; the check then reports the upgrade as failed.
        out.push(Action::KillCheck);
        check.deadline = now.plus(MAX_WAIT);
    }
    for w in &mut c.table.workers {
        if let WorkerPhase::Stopping {
            kill_at, killed, ..
        } = &mut w.phase
            && !*killed
            && now >= *kill_at
            && w.pid > 0
        {
            *killed = true;
            tracing::warn!(
                worker = w.id,
                pid = w.pid,
                signal = "SIGKILL",
                "worker did not stop in time; killing it"
            );
            out.push(Action::Signal {
                id: w.id,
                pid: w.pid,
                sig: Signal::SIGKILL,
            });
        }
    }
    if c.stopping() {
        return;
    }
    let mut hung = Vec::new();
    for w in c.table.live().filter(|w| w.pid > 0) {
        let obs = seen.and_then(|s| s.iter().find(|o| o.id == w.id));
        match w.phase {
            WorkerPhase::Booting { deadline } if now >= deadline => hung.push((
                w.id,
                format!("not ready after {BOOT_TIMEOUT:?}"),
                true,
                None,
            )),
            _ if w.is_ready() => {
                let timeout = c.config.worker_timeout.as_millis() as u64;
                if let Some(age) = obs.and_then(|o| o.heartbeat_age_ms)
                    && age > timeout
                {
                    let why = format!(
                        "no heartbeat for {age} ms (--worker-timeout {}s)",
                        c.config.worker_timeout.as_secs()
                    );
                    // What it was doing: its oldest request in flight, as "GET /path (N ms)".
                    let doing = obs
                        .and_then(|o| o.request.as_ref())
                        .map(|r| format!("{} ({} ms)", r.what, now.0.saturating_sub(r.started_ms)));
                    hung.push((w.id, why, obs.is_some_and(|o| o.stopped), doing));
                }
            }
            _ => {}
        }
    }
    for (id, why, kill_now, doing) in hung {
        let replacement = c
            .pending
            .as_ref()
            .is_some_and(|p| p.replacing.iter().any(|(new, _)| *new == id));
        if replacement {
            tracing::error!(
                worker = id,
                "replacement not ready after {BOOT_TIMEOUT:?}; reload aborted, old workers keep serving"
            );
            c.retire(id, Signal::SIGKILL, Duration::ZERO, now, out);
            c.abort("a new worker was not ready in time", now, out);
            continue;
        }
        let Some(w) = c.table.get(id) else { continue };
        let (pid, slot, ready, uptime) = (w.pid, w.slot, w.is_ready(), now.since(w.started));
        let sig = if kill_now || !ready {
            Signal::SIGKILL
        } else {
            Signal::SIGABRT
        };
        tracing::error!(
            worker = id,
            slot,
            pid,
            signal = sig.as_str(),
            in_flight = doing.as_deref().unwrap_or("no request"),
            "worker hung: {why}; killing it and starting a replacement"
        );
        c.count_restart(slot);
        let delay = c.backoff.on_death(ready, uptime);
        c.delay(delay, now);
        c.retire(id, sig, ABORT_GRACE, now, out);
    }
}

/// Marks workers for recycling: over `--max-requests`, or over `--max-worker-memory` for
/// [`MEMORY_SAMPLES`] samples a second apart. A marked worker serves until its replacement
/// does; if the recycle aborts it is eligible again.
pub fn recycle(c: &mut Cluster, seen: &[Seen], now: Ms) {
    if c.stopping() {
        return;
    }
    let count_memory = now.since(c.memory_counted) >= Duration::from_secs(1);
    if count_memory {
        c.memory_counted = now;
    }
    let limit = c.config.max_worker_memory;
    let mut marked = Vec::new();
    for w in c.table.workers.iter_mut().filter(|w| w.is_live()) {
        let Some(obs) = seen.iter().find(|o| o.id == w.id) else {
            continue;
        };
        if count_memory {
            w.over_memory = if limit > 0 && obs.rss.unwrap_or(0) > limit {
                w.over_memory + 1
            } else {
                0
            };
        }
        let WorkerPhase::Ready { since } = w.phase else {
            continue;
        };
        let requests = obs.requests.unwrap_or(0);
        let why = if w.max_requests > 0 && requests >= w.max_requests {
            format!("it answered {requests} requests (--max-requests)")
        } else if w.over_memory >= MEMORY_SAMPLES {
            format!(
                "its resident memory was {} MiB for {MEMORY_SAMPLES} samples (--max-worker-memory {} MiB)",
                obs.rss.unwrap_or(0) >> 20,
                limit >> 20
            )
        } else {
            continue;
        };
        w.phase = WorkerPhase::Recycling { since };
        tracing::info!(
            worker = w.id,
            slot = w.slot,
            pid = w.pid,
            "recycling the worker: {why}"
        );
        marked.push(w.id);
    }
    for id in marked {
        match c.pending.as_mut() {
            Some(p) => {
                if !p.old.contains(&id) && !p.replacing.iter().any(|(_, old)| *old == id) {
                    p.old.insert(0, id);
                }
            }
            None => {
                let restore = c.target;
                c.roll(Why::Recycle, c.config.clone(), restore);
                if let Some(p) = c.pending.as_mut() {
                    p.old = vec![id];
                }
            }
        }
    }
}

/// The earliest moment the loop has something to do without an event.
pub fn next_wakeup(c: &Cluster, now: Ms) -> Ms {
    let mut at = now.plus(MAX_WAIT);
    let waits_to_fork = !c.stopping()
        && (!c.table.empty_slots(c.target).is_empty()
            || c.pending.as_ref().is_some_and(|p| p.replacing.is_empty()));
    if waits_to_fork {
        at = at.min(c.respawn_at);
    }
    for w in &c.table.workers {
        match w.phase {
            WorkerPhase::Booting { deadline } => at = at.min(deadline),
            WorkerPhase::Stopping {
                kill_at,
                killed: false,
                ..
            } => at = at.min(kill_at),
            _ => {}
        }
    }
    if let Some(check) = &c.check {
        at = at.min(check.deadline);
    }
    at.max(now)
}
