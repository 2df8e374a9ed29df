//! What of the cluster crosses `execve` on an upgrade, and how the new image takes it over.
//! Pure; runs in the master. The descriptors that go with it are the edge's (`upgrade/`).
//!
//! Workers cross as they are ([`Worker`] is serde), with their times on `CLOCK_MONOTONIC`,
//! which the next image reads the same.

use super::clock::Ms;
use super::cluster::{Cluster, Pending, Phase, Why};
use super::table::Worker;

/// The cluster's part of the upgrade state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    /// Every unreaped worker.
    pub workers: Vec<Worker>,
    /// Replacements booting in a rollout, as (new, old).
    pub replacing: Vec<(u64, u64)>,
    /// The next worker id.
    pub next_id: u64,
    /// Slots wanted (TTIN/TTOU included).
    pub target: usize,
    /// `--workers` of the settings the old image ran (or was rolling out), to tell whether
    /// the new one changed it (then it wins over TTIN/TTOU, as on a reload).
    pub configured_workers: usize,
    /// Unplanned deaths so far.
    pub restarts: u64,
    /// Restarts by slot.
    pub slot_restarts: Vec<u64>,
    /// Consecutive early deaths (crash-loop back-off).
    pub failures: u32,
    /// No fork before this moment.
    pub respawn_at: Ms,
    /// When the master started.
    pub started: Ms,
    /// The newest generation handed out.
    pub generations: u64,
}

impl Cluster {
    /// What the next image needs.
    pub fn export(&self) -> Handover {
        Handover {
            workers: self.table.workers.clone(),
            replacing: self
                .pending
                .as_ref()
                .map_or_else(Vec::new, |p| p.replacing.clone()),
            next_id: self.next_id,
            target: self.target,
            configured_workers: self.forking_config().0.workers,
            restarts: self.restarts,
            slot_restarts: self.slot_restarts.clone(),
            failures: self.backoff.failures(),
            respawn_at: self.respawn_at,
            started: self.started,
            generations: self.generations,
        }
    }

    /// Takes over the previous image's workers (the edge dropped any that are not our
    /// children) and starts replacing them, one slot at a time, with workers of this binary.
    pub fn adopt(&mut self, h: Handover) {
        self.table.workers = h.workers;
        self.next_id = h.next_id;
        self.restarts = h.restarts;
        self.slot_restarts = h.slot_restarts;
        self.backoff.set_failures(h.failures);
        self.respawn_at = h.respawn_at;
        self.started = h.started;
        self.generations = h.generations;
        self.generation = h.generations;
        // --max-workers sized the scoreboard the old image made, and this image keeps it.
        let board_max = self.capacity.saturating_sub(2) / 2;
        if self.config.max_workers > board_max {
            tracing::warn!(
                max_workers = board_max,
                "--max-workers changed; the running maximum stays until a full restart"
            );
            self.config.max_workers = board_max.max(1);
        }
        let wanted = if h.configured_workers == self.config.workers {
            h.target
        } else {
            self.config.workers
        };
        self.target = self.clamp(wanted, "the new binary's configuration");
        self.phase = Phase::Serving;
        // Carried over like a rollout's booting replacements (see `Cluster::roll`).
        self.pending = Some(Pending {
            generation: self.generations,
            why: Why::Upgrade,
            config: self.config.clone(),
            old: Vec::new(),
            replacing: h.replacing,
            restore_target: self.target,
        });
        self.roll(Why::Upgrade, self.config.clone(), self.target);
    }
}
