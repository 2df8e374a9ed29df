//! `--balance load` at the edge: every [`balance::SAMPLE_EVERY`] the master samples the slots
//! (`observe::sample_slots`), lets the pure decision (`balance.rs`) name the slots to avoid,
//! and rewrites the steering program when that changed. Runs in the master.

use super::clock::Ms;
use super::{Master, balance, observe};
use crate::socket::{Balance, SocketMode};
use crate::worker::WorkerApp;

impl<A: WorkerApp> Master<A> {
    /// Whether new connections are steered by load: `--balance load` with a socket per worker.
    pub(super) fn balancing(&self) -> bool {
        self.cluster.config.balance == Balance::Load
            && self.sockets.mode() == SocketMode::PerWorker
            && !self.cluster.stopping()
    }

    /// `--balance load`, every [`balance::SAMPLE_EVERY`]: samples the slots and steers new
    /// connections away from those whose worker does not keep up (and back).
    pub(super) fn balance(&mut self, now: Ms) {
        if !self.balancing() {
            // A reload to `hash` (or a stop): every slot gets its share again.
            self.sockets.avoid(&[]);
            return;
        }
        if now < self.sampled_at.plus(balance::SAMPLE_EVERY) {
            return;
        }
        self.sampled_at = now;
        let sockets = &self.sockets;
        let open = sockets.open_slots();
        let samples = observe::sample_slots(
            &self.cluster.table,
            &open,
            self.board.board(),
            |s| sockets.queue(s),
            now,
        );
        let before = self.balancer.avoided().clone();
        let after = self.balancer.decide(&samples).clone();
        let slots: Vec<usize> = after.keys().copied().collect();
        self.sockets.avoid(&slots);
        // A stopped or stalled worker is news; a backlog comes and goes with bursts.
        for (slot, why) in after.iter().filter(|(s, _)| !before.contains_key(s)) {
            if *why == balance::Why::Backlogged {
                tracing::debug!(
                    slot,
                    "steering new connections away from the slot: {}",
                    why.as_str()
                );
            } else {
                tracing::info!(
                    slot,
                    "steering new connections away from the slot: {}",
                    why.as_str()
                );
            }
        }
        for (slot, why) in before.iter().filter(|(s, _)| !after.contains_key(s)) {
            if *why == balance::Why::Backlogged {
                tracing::debug!(slot, "the slot keeps up again: it gets new connections");
            } else {
                tracing::info!(slot, "the slot keeps up again: it gets new connections");
            }
        }
    }
}
