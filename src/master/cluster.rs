//! The master's state and the decisions that answer events: pure, no system call, no clock read
//! (the time comes in as an argument). Runs in the master; the edge (`mod.rs`) feeds it events
//! and carries out the [`Action`]s it returns.
//!
//! More of its decisions live beside it: `command.rs` (an operator's commands), `reload.rs`,
//! `handover.rs`; and the planners that run every turn: `manage.rs` (fill slots, retire
//! surplus, move a rollout on) and `deadlines.rs` (kills, hangs, recycling, when to wake up).

use std::time::Duration;

use nix::sys::signal::Signal;

use super::clock::Ms;
use super::event::{Action, Message, Notify};
use super::policy::Backoff;
use super::status::Snapshot;
use super::table::{Table, WorkerPhase};
use crate::config::ClusterConfig;
use crate::process::{Death, Policy};

/// How long a new worker may take to report ready.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers get after SIGQUIT before SIGKILL.
pub const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time past the graceful timeout before SIGKILL, for the worker's own forced close.
pub const KILL_MARGIN: Duration = Duration::from_secs(1);
/// How long the new binary's `--check-config` may take on an upgrade.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Forking the first workers; READY=1 not sent yet.
    Starting,
    /// Serving (READY=1 was sent, by this image or the one before an upgrade).
    Serving,
    /// Stopping: nothing is forked any more; the master exits once every worker is reaped.
    Stopping {
        /// SIGQUIT: workers got SIGQUIT and a short deadline.
        fast: bool,
        /// Why the master stops on its own, if it does.
        halt: Option<Halt>,
    },
}

/// Why the master stopped itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// A worker exited with code 4: the configuration cannot work.
    WorkerConfig(u64),
    /// The master found a second thread of its own and refused to fork.
    Threaded(usize),
}

/// What a rollout is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// SIGHUP or `clusterd reload`: new settings.
    Reload,
    /// The new image of an upgrade replacing the old image's workers.
    Upgrade,
    /// Replacing workers over `--max-requests` or `--max-worker-memory`.
    Recycle,
}

/// A rollout: a new generation of workers replacing the old, one slot at a time. It commits
/// when no old worker is left, or aborts and restores what it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The generation its workers get.
    pub generation: u64,
    /// What it is for.
    pub why: Why,
    /// The settings its workers run; the running ones once it commits.
    pub config: ClusterConfig,
    /// Workers still to replace; the last is next.
    pub old: Vec<u64>,
    /// Replacements booting, as (new, old): `old` retires once `new` is ready.
    pub replacing: Vec<(u64, u64)>,
    /// The worker count to go back to if it aborts.
    pub restore_target: usize,
}

/// The upgrade's configuration check, run as a child of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRun {
    /// Its pid.
    pub pid: i32,
    /// When it is killed and the upgrade given up.
    pub deadline: Ms,
}

/// Everything the master decides with.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The settings in force (a committed reload replaces them).
    pub config: ClusterConfig,
    /// Every forked, unreaped worker.
    pub table: Table,
    /// How many slots should have a worker.
    pub target: usize,
    /// The fewest workers that serve every socket systemd passed.
    pub min_workers: usize,
    /// Scoreboard records (each worker holds one).
    pub capacity: usize,
    /// The id the next worker gets.
    pub next_id: u64,
    /// The generation the running settings belong to.
    pub generation: u64,
    /// The newest generation handed out.
    pub generations: u64,
    /// Crash-loop back-off.
    pub backoff: Backoff,
    /// No fork before this moment.
    pub respawn_at: Ms,
    /// Starting, serving or stopping.
    pub phase: Phase,
    /// A rollout under way.
    pub pending: Option<Pending>,
    /// The upgrade's check, while it runs.
    pub check: Option<CheckRun>,
    /// The check passed: re-execute at the end of this turn.
    pub exec: bool,
    /// Unplanned deaths (and hangs) since start.
    pub restarts: u64,
    /// Unplanned deaths by slot.
    pub slot_restarts: Vec<u64>,
    /// Why the last reload or upgrade failed, for the status line until the next one.
    pub note: Option<String>,
    /// What the workers' health reports are about ("store redis").
    pub label: Option<String>,
    /// Every wanted worker served at the end of the last turn (for the log line's edge).
    pub all_ready: bool,
    /// When the master started (over all its images).
    pub started: Ms,
    /// When worker memory was last counted against `--max-worker-memory`.
    pub memory_counted: Ms,
}

impl Cluster {
    /// A cluster about to fork its first workers.
    pub fn new(config: ClusterConfig, min_workers: usize, capacity: usize, now: Ms) -> Cluster {
        let target = config.workers.max(min_workers);
        Cluster {
            config,
            table: Table::default(),
            target,
            min_workers,
            capacity,
            next_id: 1,
            generation: 0,
            generations: 0,
            backoff: Backoff::default(),
            respawn_at: now,
            phase: Phase::Starting,
            pending: None,
            check: None,
            exec: false,
            restarts: 0,
            slot_restarts: Vec::new(),
            note: None,
            label: None,
            all_ready: false,
            started: now,
            memory_counted: now,
        }
    }

    /// Stopping, fast or not.
    pub fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// The settings a worker forked now runs: a rollout's, else the running ones.
    pub fn forking_config(&self) -> (&ClusterConfig, u64) {
        match &self.pending {
            Some(p) => (&p.config, p.generation),
            None => (&self.config, self.generation),
        }
    }

    /// A reload (or upgrade) is under way: what `status` calls `reloading`.
    pub fn reloading(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.why != Why::Recycle)
    }

    /// systemd's one-line status.
    pub fn status_line(&self) -> String {
        Snapshot {
            ready: self.table.ready(),
            target: self.target,
            restarts: self.restarts,
            reloading: self.pending.is_some(),
            draining: self
                .table
                .workers
                .iter()
                .filter(|w| matches!(w.phase, WorkerPhase::Stopping { .. }))
                .count(),
            health: self.table.live().filter_map(|w| w.healthy).collect(),
            label: self.label.as_deref(),
            note: self.note.as_deref(),
        }
        .line()
    }

    /// What the master returns once stopped: `Some` when it may exit.
    pub fn outcome(&self) -> Option<Result<(), Halt>> {
        match &self.phase {
            Phase::Stopping { halt, .. } if self.table.workers.is_empty() => {
                Some(halt.map_or(Ok(()), Err))
            }
            _ => None,
        }
    }

    /// Whether to re-execute now (once per passed check).
    pub fn take_exec(&mut self) -> bool {
        std::mem::take(&mut self.exec) && !self.stopping()
    }

    /// Begins a stop (or makes a graceful one fast): every worker is asked to stop, a rollout
    /// is dropped, nothing is forked from now on.
    pub fn stop(&mut self, fast: bool, halt: Option<Halt>, now: Ms, out: &mut Vec<Action>) {
        let halt = match &self.phase {
            Phase::Stopping { halt: h, .. } => h.or(halt),
            _ => {
                out.push(Action::Notify(Notify::Stopping));
                halt
            }
        };
        self.phase = Phase::Stopping { fast, halt };
        self.pending = None;
        let (sig, grace) = if fast {
            (Signal::SIGQUIT, FAST_STOP_TIMEOUT)
        } else {
            (Signal::SIGTERM, self.config.graceful_timeout + KILL_MARGIN)
        };
        let ids: Vec<u64> = self.table.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.retire(id, sig, grace, now, out);
        }
    }

    /// Asks a worker to stop with `sig`; SIGKILL follows after `grace`. A worker already
    /// stopping keeps the earlier of its deadlines: a fast stop shortens, never extends.
    pub fn retire(
        &mut self,
        id: u64,
        sig: Signal,
        grace: Duration,
        now: Ms,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.table.get_mut(id) else {
            return;
        };
        let deadline = now.plus(grace);
        w.phase = match w.phase {
            WorkerPhase::Stopping {
                kill_at,
                killed,
                closing,
            } => WorkerPhase::Stopping {
                kill_at: kill_at.min(deadline),
                killed,
                closing,
            },
            _ => WorkerPhase::Stopping {
                kill_at: deadline,
                killed: false,
                closing: None,
            },
        };
        if sig == Signal::SIGKILL
            && let WorkerPhase::Stopping { killed, .. } = &mut w.phase
        {
            *killed = true;
        }
        if w.pid > 0 {
            out.push(Action::Signal {
                id,
                pid: w.pid,
                sig,
            });
        }
    }

    /// Retires the worker of a slot that goes away: the edge closes the slot's socket and
    /// signals the worker (SIGUSR1 if it now holds the socket last, else SIGTERM).
    pub fn retire_slot(&mut self, id: u64, now: Ms, out: &mut Vec<Action>) {
        let grace = self.config.graceful_timeout + KILL_MARGIN;
        let mut ignored = Vec::new();
        self.retire(id, Signal::SIGTERM, grace, now, &mut ignored);
        if let Some(w) = self.table.get(id).filter(|w| w.pid > 0) {
            out.push(Action::CloseSlot {
                id,
                pid: w.pid,
                slot: w.slot,
            });
        }
    }

    /// The edge closed a retired slot's socket; `serial` names it until its last holder is gone.
    pub fn closing_socket(&mut self, id: u64, serial: Option<u64>) {
        if let Some(WorkerPhase::Stopping { closing, .. }) =
            self.table.get_mut(id).map(|w| &mut w.phase)
        {
            *closing = serial;
        }
    }

    /// A byte from a worker's pipe. A second READY or an unknown byte breaks the protocol:
    /// logged once, the pipe dropped and the worker replaced.
    pub fn message(&mut self, id: u64, msg: Message, now: Ms, out: &mut Vec<Action>) {
        let Some(w) = self.table.get_mut(id) else {
            return;
        };
        match (msg, w.phase) {
            (Message::Ready, WorkerPhase::Booting { .. }) => {
                w.phase = WorkerPhase::Ready { since: now };
                tracing::info!(
                    worker = w.id,
                    slot = w.slot,
                    pid = w.pid,
                    boot_ms = now.since(w.started).as_millis() as u64,
                    "worker ready"
                );
            }
            (Message::Health(ok), _) => w.healthy = Some(ok),
            (Message::SocketClosed, WorkerPhase::Stopping { closing, .. }) => {
                if let Some(serial) = closing {
                    out.push(Action::SocketGone(serial));
                }
                self.closing_socket(id, None);
            }
            // A worker that stops before its slot went away reports nothing to take back.
            (Message::SocketClosed, _) => {}
            // Told to stop while it booted: it still reports ready once on its way out.
            (Message::Ready, WorkerPhase::Stopping { .. }) => {}
            // Already being replaced (for this or another reason): nothing more to say.
            (Message::Garbage(_) | Message::Flood(_), WorkerPhase::Stopping { .. }) => {
                out.push(Action::DropPipe(id));
            }
            (Message::Ready | Message::Garbage(_) | Message::Flood(_), _) => {
                let what = match msg {
                    Message::Garbage(b) => format!("sent the byte {b:#04x}"),
                    Message::Flood(n) => format!("sent {n} bytes at once"),
                    _ => "reported ready twice".to_string(),
                };
                tracing::error!(
                    worker = w.id,
                    pid = w.pid,
                    "worker broke the pipe protocol ({what}); ignoring its pipe and replacing it"
                );
                out.push(Action::DropPipe(id));
                // Counted as a failure, so a worker that breaks it at every boot backs off.
                let (slot, ready, uptime) = (w.slot, w.is_ready(), now.since(w.started));
                self.count_restart(slot);
                let delay = self.backoff.on_death(ready, uptime);
                self.delay(delay, now);
                let grace = self.config.graceful_timeout + KILL_MARGIN;
                self.retire(id, Signal::SIGTERM, grace, now, out);
            }
        }
    }

    /// Delays the next fork by `delay` from now (never brings it forward).
    pub fn delay(&mut self, delay: Duration, now: Ms) {
        self.respawn_at = self.respawn_at.max(now.plus(delay));
    }

    /// Counts an unplanned death (or hang) of the worker in `slot`.
    pub fn count_restart(&mut self, slot: usize) {
        self.restarts += 1;
        if self.slot_restarts.len() <= slot {
            self.slot_restarts.resize(slot + 1, 0);
        }
        self.slot_restarts[slot] += 1;
    }

    /// A child the reaper collected: expected (a worker asked to stop), or a crash that is
    /// respawned after the back-off, or one that ends a rollout, or a halt.
    pub fn death(&mut self, pid: i32, death: Death, now: Ms, out: &mut Vec<Action>) {
        let Some(w) = self.table.remove_pid(pid) else {
            tracing::debug!(pid, "reaped an unknown child");
            return;
        };
        out.extend(w.record.map(Action::Release));
        let cause = death.describe();
        if let WorkerPhase::Stopping { closing, .. } = w.phase {
            // Dead, so its descriptor is closed too: the socket is out of the group.
            out.extend(closing.map(Action::SocketGone));
            tracing::info!(worker = w.id, slot = w.slot, pid, cause = %cause, "worker stopped");
            return;
        }
        let uptime = now.since(w.started);
        let replacement = self
            .pending
            .as_ref()
            .is_some_and(|p| p.replacing.iter().any(|(new, _)| *new == w.id));
        if replacement {
            tracing::error!(worker = w.id, pid, cause = %cause, "replacement died before it was ready; reload aborted, old workers keep serving");
            let delay = self.backoff.on_death(false, uptime);
            self.delay(delay, now);
            self.abort(&format!("a new worker {cause}"), now, out);
            return;
        }
        let young = w
            .ready_since()
            .is_none_or(|at| now.since(at) < self.backoff.min_uptime);
        let of_rollout = self
            .pending
            .as_ref()
            .is_some_and(|p| p.generation == w.generation);
        if young && of_rollout {
            tracing::error!(worker = w.id, pid, cause = %cause, "a new worker died right after it was ready; reload aborted, the workers not yet replaced keep serving, the slot gets the running configuration");
            self.abort(&format!("a new worker {cause}"), now, out);
        }
        if self.stopping() {
            tracing::info!(worker = w.id, pid, cause = %cause, "worker stopped");
            return;
        }
        match death.policy() {
            // The rollout's settings were rejected, not the running ones: it was aborted.
            Policy::Halt if of_rollout => self.count_restart(w.slot),
            Policy::Halt => {
                tracing::error!(worker = w.id, pid, cause = %cause, "worker cannot run with this configuration; stopping clusterd instead of retrying");
                self.stop(false, Some(Halt::WorkerConfig(w.id)), now, out);
            }
            Policy::Respawn => {
                self.count_restart(w.slot);
                let delay = self.backoff.on_death(w.is_ready(), uptime);
                self.delay(delay, now);
                let next = if delay.is_zero() {
                    "respawning now".to_string()
                } else {
                    format!("respawning in {delay:?}")
                };
                tracing::warn!(worker = w.id, slot = w.slot, pid, cause = %cause, uptime_ms = uptime.as_millis() as u64, failures = self.backoff.failures(), "worker died; {next}");
            }
        }
    }

    /// Ends a rollout that cannot go on, for good: its settings are dropped (later forks use
    /// the running ones), the worker count it changed comes back, a replacement still booting
    /// is stopped (the worker it would replace stays), workers marked for recycling serve on
    /// and stay eligible for the next recycle.
    pub fn abort(&mut self, why: &str, now: Ms, out: &mut Vec<Action>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        self.target = p.restore_target;
        let grace = self.config.graceful_timeout + KILL_MARGIN;
        for (new, _) in &p.replacing {
            if self.table.is_live(*new) {
                self.retire(*new, Signal::SIGTERM, grace, now, out);
            }
        }
        for w in &mut self.table.workers {
            if let WorkerPhase::Recycling { since } = w.phase {
                w.phase = WorkerPhase::Ready { since };
            }
        }
        if p.why == Why::Recycle {
            tracing::warn!("recycling aborted: {why}; the workers serve on");
            return;
        }
        self.note = Some(format!("reload aborted: {why}"));
        out.push(Action::Notify(Notify::Ready(self.status_line())));
    }
}
