//! The worker table: every child the master has forked and not yet reaped, each in a slot.
//! Data and queries only; runs in the master.
//!
//! A slot is a worker's place in the cluster, numbered from 0: it owns a listening socket (see
//! `socket/`) and survives its workers. A crashed worker's replacement, and the new worker of a
//! rolling restart, take the same slot, so they accept on the same socket.
//!
//! [`Worker`] is also what crosses `execve` on an upgrade (serde): there is one definition of a
//! worker, and its times are [`Ms`], which mean the same in the next image.

use super::clock::Ms;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerPhase {
    /// Forked, not yet serving; killed as hung if still booting at `deadline`.
    Booting {
        /// When it must have reported ready.
        deadline: Ms,
    },
    /// Serving since `since`.
    Ready {
        /// When it reported ready.
        since: Ms,
    },
    /// Serving, and being replaced for its request count or memory: it retires once its
    /// replacement serves.
    Recycling {
        /// When it reported ready.
        since: Ms,
    },
    /// Asked to stop: its death is expected.
    Stopping {
        /// When it gets SIGKILL if it is still there.
        kill_at: Ms,
        /// SIGKILL was sent.
        killed: bool,
        /// The serial of its slot's socket when the slot went away and this worker holds the
        /// socket last, until it reports that it shut the socket down (or dies).
        closing: Option<u64>,
    },
}

impl WorkerPhase {
    /// The name `clusterd status` shows.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerPhase::Booting { .. } => "booting",
            WorkerPhase::Ready { .. } => "ready",
            WorkerPhase::Recycling { .. } => "recycling",
            WorkerPhase::Stopping { .. } => "stopping",
        }
    }
}

/// One forked worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Worker {
    /// Unique id, in fork order, never reused (the `x-clusterd-worker` header).
    pub id: u64,
    /// The slot it serves.
    pub slot: usize,
    /// Process id; 0 between the decision to fork and the fork.
    pub pid: i32,
    /// The generation of settings it runs: a rollout's workers have the rollout's.
    pub generation: u64,
    /// When it was forked.
    pub started: Ms,
    /// Where it is in its life.
    pub phase: WorkerPhase,
    /// Last health the worker reported, if it reports any.
    pub healthy: Option<bool>,
    /// Its record on the scoreboard (`None` for a worker of an image that had none).
    pub record: Option<usize>,
    /// Recycle it after this many requests (0: never).
    pub max_requests: u64,
    /// Consecutive memory samples over `--max-worker-memory`.
    #[serde(default)]
    pub over_memory: u32,
}

impl Worker {
    /// Not asked to stop.
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, WorkerPhase::Stopping { .. })
    }

    /// Serving (ready or recycling).
    pub fn is_ready(&self) -> bool {
        self.ready_since().is_some()
    }

    /// When it reported ready, while it serves.
    pub fn ready_since(&self) -> Option<Ms> {
        match self.phase {
            WorkerPhase::Ready { since } | WorkerPhase::Recycling { since } => Some(since),
            _ => None,
        }
    }
}

/// The workers, in fork order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Every child not yet reaped.
    pub workers: Vec<Worker>,
}

impl Table {
    /// Workers that are not being stopped.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.is_live())
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
        self.get(id).is_some_and(Worker::is_live)
    }

    /// Removes and returns the worker with this pid.
    pub fn remove_pid(&mut self, pid: i32) -> Option<Worker> {
        let i = self.workers.iter().position(|w| w.pid == pid && pid > 0)?;
        Some(self.workers.remove(i))
    }

    /// Removes and returns the worker with this id.
    pub fn remove(&mut self, id: u64) -> Option<Worker> {
        let i = self.workers.iter().position(|w| w.id == id)?;
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
        self.live().filter(|w| w.is_ready()).count()
    }

    /// The lowest scoreboard record below `capacity` that no worker holds.
    pub fn free_record(&self, capacity: usize) -> Option<usize> {
        (0..capacity).find(|i| !self.workers.iter().any(|w| w.record == Some(*i)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ready worker forked at 0 ms, ready at 100 ms.
    pub(crate) fn worker(id: u64, slot: usize) -> Worker {
        Worker {
            id,
            slot,
            pid: 1000 + id as i32,
            generation: 0,
            started: Ms(0),
            phase: WorkerPhase::Ready { since: Ms(100) },
            healthy: None,
            record: Some(id as usize),
            max_requests: 0,
            over_memory: 0,
        }
    }

    fn stopping(mut w: Worker) -> Worker {
        w.phase = WorkerPhase::Stopping {
            kill_at: Ms(5_000),
            killed: false,
            closing: None,
        };
        w
    }

    #[test]
    fn empty_slots_ignore_stopping_workers_and_count_overlaps_once() {
        let t = Table {
            workers: vec![
                worker(1, 0),
                stopping(worker(2, 1)),
                worker(3, 2),
                // A rolling restart's replacement shares slot 2 with worker 3.
                worker(4, 2),
            ],
        };
        assert_eq!(t.empty_slots(3), vec![1]);
        assert_eq!(t.empty_slots(5), vec![1, 3, 4]);
    }

    #[test]
    fn surplus_is_the_highest_slots_first() {
        let t = Table {
            workers: vec![
                worker(1, 0),
                worker(2, 3),
                worker(3, 1),
                stopping(worker(4, 2)),
                worker(5, 2),
            ],
        };
        assert_eq!(t.surplus(1), vec![(2, 3), (5, 2), (3, 1)]);
        assert!(t.surplus(4).is_empty());
    }

    #[test]
    fn a_free_record_is_one_no_worker_holds() {
        let t = Table {
            workers: vec![worker(0, 0), stopping(worker(1, 1)), worker(3, 2)],
        };
        assert_eq!(t.free_record(5), Some(2));
        assert_eq!(t.free_record(2), None);
    }

    #[test]
    fn a_worker_round_trips_through_json() {
        let mut w = worker(7, 3);
        w.phase = WorkerPhase::Stopping {
            kill_at: Ms(9_000),
            killed: true,
            closing: Some(12),
        };
        w.healthy = Some(false);
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Worker>(&text).unwrap(), w);
    }
}
