//! The worker table: every child the master has forked and not yet reaped, each in a slot.
//! Data and lookups only; runs in the master.
//!
//! A slot is a worker's place in the cluster, numbered from 0: it owns a listening socket (see
//! `socket.rs`) and survives its workers. A crashed worker's replacement, and the new worker of a
//! rolling restart, take the same slot, so they accept on the same socket.

use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::unistd::Pid;

/// One forked worker.
pub struct Worker {
    /// Unique id, in fork order, never reused (the `x-clusterd-worker` header).
    pub id: u64,
    /// The slot it serves.
    pub slot: usize,
    /// Process id.
    pub pid: Pid,
    /// When it was forked.
    pub started: Instant,
    /// Read end of the worker's pipe (readiness and health messages) until EOF.
    pub pipe: Option<OwnedFd>,
    /// Last health the worker reported, if it reports any.
    pub healthy: Option<bool>,
    /// It reported that it serves.
    pub ready: bool,
    /// When it reported that.
    pub ready_at: Option<Instant>,
    /// Set when the master asked it to stop: its death is then expected.
    pub retiring: Option<Retiring>,
    /// The serial of its slot's socket when the slot went away and this worker holds the socket
    /// last, until the worker reports it shut the socket down (or dies).
    pub closing_socket: Option<u64>,
    /// Its record on the scoreboard (`None` for a worker of an image that had none).
    pub record: Option<usize>,
    /// Recycle it after this many requests (0: never).
    pub max_requests: u64,
    /// Resident memory at the last sample, in bytes.
    pub rss: u64,
    /// Consecutive samples over `--max-worker-memory`.
    pub over_memory: u32,
    /// Being replaced for its request count or memory (recycling).
    pub recycling: bool,
}

/// A worker the master asked to stop.
pub struct Retiring {
    /// When it gets SIGKILL if it is still there.
    pub kill_at: Instant,
    /// SIGKILL was sent.
    pub killed: bool,
}

/// The workers, in fork order.
#[derive(Default)]
pub struct Table {
    /// Every child not yet reaped.
    pub workers: Vec<Worker>,
}

impl Table {
    /// Workers that are not being stopped.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.retiring.is_none())
    }

    /// A worker by id.
    pub fn get(&self, id: u64) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// A worker by id, to change it.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    /// Whether a worker is live (forked, not reaped, not asked to stop).
    pub fn is_live(&self, id: u64) -> bool {
        self.live().any(|w| w.id == id)
    }

    /// Removes and returns the worker with this pid.
    pub fn remove_pid(&mut self, pid: Pid) -> Option<Worker> {
        let i = self.workers.iter().position(|w| w.pid == pid)?;
        Some(self.workers.remove(i))
    }

    /// Slots below `target` with no live worker, lowest first.
    pub fn empty_slots(&self, target: usize) -> Vec<usize> {
        (0..target)
            .filter(|s| !self.live().any(|w| w.slot == *s))
            .collect()
    }

    /// Live workers in slots at or above `target`, highest slot first: the ones to retire when
    /// the cluster shrinks.
    pub fn surplus(&self, target: usize) -> Vec<(u64, usize)> {
        let mut out: Vec<(u64, usize)> = self
            .live()
            .filter(|w| w.slot >= target)
            .map(|w| (w.id, w.slot))
            .collect();
        out.sort_by_key(|w| std::cmp::Reverse(w.1));
        out
    }

    /// Live workers that serve.
    pub fn ready(&self) -> usize {
        self.live().filter(|w| w.ready).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u64, slot: usize, retiring: bool) -> Worker {
        Worker {
            id,
            slot,
            pid: Pid::from_raw(1000 + id as i32),
            started: Instant::now(),
            pipe: None,
            healthy: None,
            ready: true,
            ready_at: None,
            retiring: retiring.then(|| Retiring {
                kill_at: Instant::now(),
                killed: false,
            }),
            closing_socket: None,
            record: None,
            max_requests: 0,
            rss: 0,
            over_memory: 0,
            recycling: false,
        }
    }

    #[test]
    fn empty_slots_ignore_retiring_workers_and_count_overlaps_once() {
        let t = Table {
            workers: vec![
                worker(1, 0, false),
                worker(2, 1, true),
                worker(3, 2, false),
                // A rolling restart's replacement shares slot 2 with worker 3.
                worker(4, 2, false),
            ],
        };
        assert_eq!(t.empty_slots(3), vec![1]);
        assert_eq!(t.empty_slots(5), vec![1, 3, 4]);
    }

    #[test]
    fn surplus_is_the_highest_slots_first() {
        let t = Table {
            workers: vec![
                worker(1, 0, false),
                worker(2, 3, false),
                worker(3, 1, false),
                worker(4, 2, true),
                worker(5, 2, false),
            ],
        };
        assert_eq!(t.surplus(1), vec![(2, 3), (5, 2), (3, 1)]);
        assert!(t.surplus(4).is_empty());
    }
}
