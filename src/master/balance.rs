//! `--balance load`: which slots new connections avoid. The master samples every slot every
//! [`SAMPLE_EVERY`] and steers new connections away from a slot whose worker does not keep up;
//! connections already accepted or queued stay where they are. Pure; runs in the master.

use std::collections::BTreeMap;
use std::time::Duration;

/// How often the slots are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// A heartbeat older than this means a stuck server thread (they tick every 500 ms).
const STALE_HEARTBEAT_MS: u64 = 1_000;
/// A queue this long that did not shrink since the last sample: the worker is not keeping up.
const BACKLOGGED: u32 = 8;
/// An avoided slot gets new connections again once its queue is down to this.
const CAUGHT_UP: u32 = 2;

/// One slot as sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The slot.
    pub slot: usize,
    /// No worker of the slot serves: every one is stopped (SIGSTOP) or still booting.
    pub stopped: bool,
    /// The freshest heartbeat age among the slot's serving workers, if any ticked.
    pub heartbeat_age_ms: Option<u64>,
    /// Connections waiting in the slot's accept queue.
    pub queue: u32,
}

/// Why a slot is avoided, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No worker of the slot runs.
    Stopped,
    /// Its heartbeat is stale.
    Stalled,
    /// Its queue grows.
    Backlogged,
}

impl Why {
    /// For the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Stopped => "no worker of it runs (stopped, or starting)",
            Why::Stalled => "its worker's heartbeat is stale",
            Why::Backlogged => "its accept queue grows",
        }
    }
}

/// What the previous samples left: the slots avoided and the queues seen.
#[derive(Debug, Default)]
pub struct Balancer {
    avoided: BTreeMap<usize, Why>,
    queues: BTreeMap<usize, u32>,
}

impl Balancer {
    /// The slots avoided now, with why.
    pub fn avoided(&self) -> &BTreeMap<usize, Why> {
        &self.avoided
    }

    /// The slots to avoid after these samples (every open slot, one each), with why. Never all
    /// of them: when no slot keeps up, the hash over every slot is the best there is. And at
    /// most half of them for a backlog: under an overload every queue grows, and steering the
    /// whole load onto the rest would only move the backlog there.
    pub fn decide(&mut self, samples: &[Sample]) -> &BTreeMap<usize, Why> {
        let mut avoid = BTreeMap::new();
        for s in samples {
            let grew = self
                .queues
                .get(&s.slot)
                .is_some_and(|last| s.queue >= *last);
            let why = if s.stopped {
                Some(Why::Stopped)
            } else if s.heartbeat_age_ms.is_some_and(|a| a > STALE_HEARTBEAT_MS) {
                Some(Why::Stalled)
            } else if s.queue >= BACKLOGGED && grew {
                Some(Why::Backlogged)
            } else if s.queue > CAUGHT_UP {
                // Avoided, and not caught up yet: stays avoided for the same reason.
                self.avoided.get(&s.slot).copied()
            } else {
                None
            };
            if let Some(why) = why {
                avoid.insert(s.slot, why);
            }
        }
        self.queues = samples.iter().map(|s| (s.slot, s.queue)).collect();
        let mut backlogged: Vec<(u32, usize)> = samples
            .iter()
            .filter(|s| avoid.get(&s.slot) == Some(&Why::Backlogged))
            .map(|s| (s.queue, s.slot))
            .collect();
        // The longest queues stay avoided, up to half of the slots.
        backlogged.sort_unstable_by(|a, b| b.cmp(a));
        for (_, slot) in backlogged.iter().skip(samples.len() / 2) {
            avoid.remove(slot);
        }
        if avoid.len() >= samples.len() {
            avoid.clear();
        }
        self.avoided = avoid;
        &self.avoided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(slot: usize, queue: u32) -> Sample {
        Sample {
            slot,
            stopped: false,
            heartbeat_age_ms: Some(100),
            queue,
        }
    }

    fn slots(b: &mut Balancer, samples: &[Sample]) -> Vec<usize> {
        b.decide(samples).keys().copied().collect()
    }

    #[test]
    fn a_stopped_or_stalled_worker_is_avoided_until_it_runs_and_catches_up() {
        let mut b = Balancer::default();
        let healthy = [sample(0, 0), sample(1, 0), sample(2, 0)];
        assert!(slots(&mut b, &healthy).is_empty());
        let mut stopped = healthy;
        stopped[1].stopped = true;
        stopped[1].queue = 5;
        assert_eq!(b.decide(&stopped).get(&1), Some(&Why::Stopped));
        // Running again with its queue still full: avoided until the queue drains.
        let mut resumed = healthy;
        resumed[1].queue = 5;
        assert_eq!(slots(&mut b, &resumed), vec![1]);
        resumed[1].queue = 2;
        assert!(slots(&mut b, &resumed).is_empty());
        let mut stalled = healthy;
        stalled[2].heartbeat_age_ms = Some(1_500);
        assert_eq!(b.decide(&stalled).get(&2), Some(&Why::Stalled));
    }

    #[test]
    fn a_growing_queue_is_avoided_a_burst_that_drains_is_not() {
        let mut b = Balancer::default();
        // The first sight of a long queue is no trend yet.
        assert!(slots(&mut b, &[sample(0, 20), sample(1, 0)]).is_empty());
        // Shrinking since: a burst the worker is working through.
        assert!(slots(&mut b, &[sample(0, 12), sample(1, 0)]).is_empty());
        // Long and not shrinking: backlogged, until it is down to CAUGHT_UP.
        assert_eq!(
            b.decide(&[sample(0, 12), sample(1, 0)]).get(&0),
            Some(&Why::Backlogged)
        );
        assert_eq!(slots(&mut b, &[sample(0, 5), sample(1, 0)]), vec![0]);
        assert!(slots(&mut b, &[sample(0, 1), sample(1, 0)]).is_empty());
        // A short queue that grows is no backlog.
        assert!(slots(&mut b, &[sample(0, 4), sample(1, 0)]).is_empty());
    }

    #[test]
    fn an_overload_backlogs_at_most_half_of_the_slots() {
        let mut b = Balancer::default();
        let q = |n: [u32; 4]| {
            [
                sample(0, n[0]),
                sample(1, n[1]),
                sample(2, n[2]),
                sample(3, n[3]),
            ]
        };
        b.decide(&q([10, 10, 10, 10]));
        assert_eq!(slots(&mut b, &q([20, 12, 30, 15])), vec![0, 2]);
    }

    #[test]
    fn never_every_slot() {
        let mut b = Balancer::default();
        let mut all = [sample(0, 0), sample(1, 0)];
        all[0].stopped = true;
        all[1].stopped = true;
        assert!(slots(&mut b, &all).is_empty());
        all[1].stopped = false;
        assert_eq!(slots(&mut b, &all), vec![0]);
    }
}
