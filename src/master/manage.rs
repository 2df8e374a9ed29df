//! Keeping the worker count, and moving a rollout on: pure decisions, run every turn of the
//! master loop after the events were handled. Runs in the master.
//!
//! [`plan`] forks into empty slots (after the crash-loop delay), retires surplus slots outside
//! a rollout, and steps a rollout: fork a replacement into the slot of the next old worker; once
//! it is ready, retire the old one; commit when none is left. A fork's outcome comes back through
//! [`Cluster::spawned`] or [`Cluster::spawn_failed`].

use nix::sys::signal::Signal;

use super::clock::Ms;
use super::cluster::{BOOT_TIMEOUT, Cluster, Halt, KILL_MARGIN, Phase, Why};
use super::event::{Action, Notify, Spawn};
use super::table::{Worker, WorkerPhase};

/// This turn's forks and retirements.
pub fn plan(c: &mut Cluster, now: Ms, out: &mut Vec<Action>) {
    if c.stopping() {
        return;
    }
    for slot in c.table.empty_slots(c.target) {
        if now < c.respawn_at || !fork(c, slot, now, out) {
            break;
        }
    }
    if c.pending.is_none() {
        for (id, slot) in c.table.surplus(c.target) {
            tracing::info!(worker = id, slot, "retiring a surplus worker");
            c.retire_slot(id, now, out);
        }
    }
    step_rollout(c, now, out);
    let ready = c.table.ready();
    let all = ready >= c.target && c.pending.is_none();
    if all && !c.all_ready {
        tracing::info!(workers = ready, "all workers ready");
        if c.phase == Phase::Starting {
            c.phase = Phase::Serving;
            out.push(Action::Notify(Notify::Ready(c.status_line())));
        }
    }
    c.all_ready = all;
}

/// Puts a worker into the table, booting, and asks the edge to fork it. `false` if there is no
/// scoreboard record for it (more workers alive than the board holds).
fn fork(c: &mut Cluster, slot: usize, now: Ms, out: &mut Vec<Action>) -> bool {
    let Some(record) = c.table.free_record(c.capacity) else {
        let delay = c.backoff.on_death(false, std::time::Duration::ZERO);
        tracing::error!(
            "no free scoreboard record (more workers alive than 2 x --max-workers); retrying in {delay:?}"
        );
        c.delay(delay, now);
        return false;
    };
    let id = c.next_id;
    c.next_id += 1;
    let (config, generation) = c.forking_config();
    let config = config.clone();
    c.table.workers.push(Worker {
        id,
        slot,
        pid: 0,
        generation,
        started: now,
        phase: WorkerPhase::Booting {
            deadline: now.plus(BOOT_TIMEOUT),
        },
        healthy: None,
        record: Some(record),
        max_requests: 0,
        over_memory: 0,
    });
    out.push(Action::Spawn(Box::new(Spawn {
        id,
        slot,
        record,
        config,
    })));
    true
}

/// A rollout's next step: wait for the booting replacements, retire the workers they replace,
/// fork the next one, or commit.
fn step_rollout(c: &mut Cluster, now: Ms, out: &mut Vec<Action>) {
    let Some(mut p) = c.pending.take() else {
        return;
    };
    let mut retire = Vec::new();
    let mut again = Vec::new();
    p.replacing.retain(|(new, old)| match c.table.get(*new) {
        Some(w) if w.is_live() && w.is_ready() => {
            retire.push((*new, *old));
            false
        }
        Some(w) if w.is_live() => true,
        // Stopped before it served (it broke the pipe protocol, or it is gone): the worker it
        // was to replace is replaced by another.
        _ => {
            again.push(*old);
            false
        }
    });
    p.old.extend(again);
    let grace = c.config.graceful_timeout + KILL_MARGIN;
    for (new, old) in retire {
        if c.table.is_live(old) {
            tracing::info!(worker = old, replaced_by = new, "retiring the old worker");
            c.retire(old, Signal::SIGTERM, grace, now, out);
        }
    }
    p.old.retain(|id| c.table.is_live(*id));
    if !p.replacing.is_empty() {
        c.pending = Some(p);
        return;
    }
    let Some(&old) = p.old.last() else {
        if p.why == Why::Recycle {
            tracing::info!("recycling complete");
        } else {
            tracing::info!("reload complete: every worker replaced");
        }
        c.config = p.config;
        c.generation = p.generation;
        if p.why != Why::Recycle {
            out.push(Action::Notify(Notify::Ready(c.status_line())));
        }
        return;
    };
    let slot = c.table.get(old).map_or(0, |w| w.slot);
    c.pending = Some(p);
    if now >= c.respawn_at && fork(c, slot, now, out) {
        let new = c.next_id - 1;
        if let Some(p) = c.pending.as_mut() {
            p.old.pop();
            p.replacing.push((new, old));
        }
    }
}

impl Cluster {
    /// The edge forked worker `id` as `pid`.
    pub fn spawned(&mut self, id: u64, pid: i32, max_requests: u64) {
        if let Some(w) = self.table.get_mut(id) {
            w.pid = pid;
            w.max_requests = max_requests;
            tracing::info!(worker = id, slot = w.slot, pid, "worker started");
        }
    }

    /// The edge could not fork worker `id` (or refused to: `threads` when the master has
    /// more than one). The slot is tried again after the back-off; a rollout waiting on it
    /// forks it anew then. Several failures in one turn count once.
    pub fn spawn_failed(
        &mut self,
        id: u64,
        why: &str,
        threads: Option<usize>,
        now: Ms,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.table.remove(id) else {
            return;
        };
        if let Some(p) = self.pending.as_mut()
            && let Some(i) = p.replacing.iter().position(|(new, _)| *new == id)
        {
            let (_, old) = p.replacing.remove(i);
            p.old.push(old);
        }
        if let Some(n) = threads {
            // A bug, not a condition to retry: stop rather than fork into undefined state.
            tracing::error!(
                threads = n,
                "the master has threads; refusing to fork and stopping"
            );
            self.stop(false, Some(Halt::Threaded(n)), now, out);
            return;
        }
        if now >= self.respawn_at {
            let delay = self.backoff.on_death(false, std::time::Duration::ZERO);
            self.delay(delay, now);
        }
        tracing::error!(
            slot = w.slot,
            error = why,
            "fork failed; retrying in {:?}",
            self.respawn_at.since(now)
        );
    }
}
