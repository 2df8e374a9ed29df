//! Table-driven tests of the master's decisions: a cluster before, an event or a moment, the
//! actions and the cluster after. No process is forked and no clock is read: pids are made up
//! (1000 + worker id) and time is whatever `Ms` a test passes.

mod protocol;
mod rollout;
mod stop;
mod timing;
mod upgrade;

use std::time::Duration;

use nix::sys::signal::Signal;

use super::clock::Ms;
use super::cluster::Cluster;
use super::event::{Action, Command, Message, Notify};
use super::manage;
use super::reload::Reloaded;
use crate::config::ClusterConfig;
use crate::process::Death;

/// Settings with `workers` workers, at most 8, a 30 s graceful timeout.
fn config(workers: usize) -> ClusterConfig {
    ClusterConfig {
        workers,
        max_workers: 8,
        graceful_timeout: Duration::from_secs(30),
        worker_timeout: Duration::from_secs(30),
        ..ClusterConfig::default()
    }
}

/// The made-up pid of worker `id`.
fn pid(id: u64) -> i32 {
    1000 + id as i32
}

/// Runs the planner at `now` and "forks" every worker it asks for.
fn plan(c: &mut Cluster, now: Ms) -> Vec<Action> {
    let mut out = Vec::new();
    manage::plan(c, now, &mut out);
    fork(c, &out);
    out
}

/// Plays the edge for the Spawn actions: every fork succeeds.
fn fork(c: &mut Cluster, actions: &[Action]) {
    for a in actions {
        if let Action::Spawn(s) = a {
            c.spawned(s.id, pid(s.id), s.config.max_requests);
        }
    }
}

/// The (id, slot) of every fork asked for.
fn spawns(actions: &[Action]) -> Vec<(u64, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(s) => Some((s.id, s.slot)),
            _ => None,
        })
        .collect()
}

/// The (worker id, signal) of every signal sent.
fn signals(actions: &[Action]) -> Vec<(u64, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { id, sig, .. } => Some((*id, *sig)),
            Action::CloseSlot { id, .. } => Some((*id, Signal::SIGUSR1)),
            _ => None,
        })
        .collect()
}

/// How many READY=1 the actions send.
fn readies(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Notify(Notify::Ready(_))))
        .count()
}

/// Worker `id` reports ready at `now`.
fn ready(c: &mut Cluster, id: u64, now: Ms) -> Vec<Action> {
    let mut out = Vec::new();
    c.message(id, Message::Ready, now, &mut out);
    out
}

/// Worker `id` is reaped at `now`.
fn die(c: &mut Cluster, id: u64, death: Death, now: Ms) -> Vec<Action> {
    let mut out = Vec::new();
    c.death(pid(id), death, now, &mut out);
    out
}

/// An operator's command at `now`.
fn command(c: &mut Cluster, cmd: Command, now: Ms) -> Vec<Action> {
    let mut out = Vec::new();
    c.command(cmd, now, &mut out);
    out
}

/// A HUP whose configuration asks for `workers` workers.
fn hup(c: &mut Cluster, workers: usize, now: Ms) -> Vec<Action> {
    let mut out = command(c, Command::Reload, now);
    assert!(out.contains(&Action::Reload), "{out:?}");
    let new = Reloaded {
        cluster: ClusterConfig {
            threads: 2,
            ..config(workers)
        },
        needs_restart: Vec::new(),
    };
    c.reloaded(Ok(new), &mut out);
    out
}

/// A cluster of `n` workers, all forked at 0 ms and ready at 100 ms (ids 1..=n).
fn serving(n: usize) -> Cluster {
    let mut c = Cluster::new(config(n), 1, 2 * 8 + 2, Ms(0));
    let out = plan(&mut c, Ms(0));
    assert_eq!(spawns(&out).len(), n);
    for id in 1..=n as u64 {
        ready(&mut c, id, Ms(100));
    }
    plan(&mut c, Ms(100));
    c
}

/// Live workers as (slot, id), by slot.
fn slots(c: &Cluster) -> Vec<(usize, u64)> {
    let mut s: Vec<(usize, u64)> = c.table.live().map(|w| (w.slot, w.id)).collect();
    s.sort();
    s
}

/// Moves a rollout on to its end: every booting worker becomes ready at once, every retired
/// worker exits at once. Returns the moment it ended.
fn finish_rollout(c: &mut Cluster, mut now: Ms) -> Ms {
    for _ in 0..50 {
        if c.pending.is_none() {
            return now;
        }
        now = now.plus(Duration::from_millis(10));
        let out = plan(c, now);
        let booting: Vec<u64> = c
            .table
            .live()
            .filter(|w| w.phase.name() == "booting")
            .map(|w| w.id)
            .collect();
        for id in booting {
            ready(c, id, now);
        }
        for (id, _) in signals(&out) {
            die(c, id, Death::Exited(0), now);
        }
    }
    panic!("the rollout never ended: {:?}", c.pending);
}
