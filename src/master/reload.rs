//! Reloads and upgrades, as decisions: what a new configuration changes, and what the upgrade's
//! check means. Pure; runs in the master. The edge reads the file and runs the check.

use super::clock::Ms;
use super::cluster::{CHECK_TIMEOUT, CheckRun, Cluster, Pending, Why};
use super::event::{Action, Notify};
use crate::config::ClusterConfig;
use crate::process::Death;

/// A new configuration from SIGHUP: the process-model part, and the names of settings that
/// changed but need a full restart.
pub struct Reloaded {
    /// The new process-model settings (worker and thread counts, timeouts take effect).
    pub cluster: ClusterConfig,
    /// Settings that changed but only apply after a restart; logged as such.
    pub needs_restart: Vec<&'static str>,
}

/// The settings a reload runs: the new file's, except what is bound or resolved once at start
/// (see `ClusterConfig::keep_restart_only`), which stays as it runs.
pub fn merge(running: &ClusterConfig, new: ClusterConfig) -> ClusterConfig {
    new.keep_restart_only(running).0
}

impl Cluster {
    /// The configuration the edge read for a reload (`Action::Reload`), or why it could not.
    /// A good one starts a rollout; a bad one changes nothing.
    pub fn reloaded(&mut self, new: Result<Reloaded, String>, out: &mut Vec<Action>) {
        if self.stopping() {
            return;
        }
        let new = match new {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running configuration and workers");
                self.note = Some(format!("reload failed: {e}"));
                out.push(Action::Notify(Notify::Ready(self.status_line())));
                return;
            }
        };
        for name in &new.needs_restart {
            tracing::warn!(
                setting = name,
                "changed in the config, takes effect after a full restart"
            );
        }
        let base = self.forking_config().0.clone();
        let restore = self
            .pending
            .as_ref()
            .map_or(self.target, |p| p.restore_target);
        if new.cluster.workers != base.workers {
            let to = self.clamp(new.cluster.workers, "the reloaded configuration");
            tracing::info!(from = self.target, to, "worker count changed");
            self.target = to;
        }
        let config = merge(&base, new.cluster);
        self.note = None;
        self.roll(Why::Reload, config, restore);
    }

    /// A worker count within what the running master can hold: at least one per socket from
    /// systemd, at most `--max-workers` (which sized the scoreboard and needs a restart).
    pub fn clamp(&self, workers: usize, from: &str) -> usize {
        let max = self.config.max_workers;
        if workers > max {
            tracing::warn!(
                asked = workers,
                max_workers = max,
                "{from} asks for more workers than the running --max-workers; running {max} (raising --max-workers needs a restart)"
            );
        }
        workers.min(max).max(self.min_workers)
    }

    /// The edge started the new binary's `--check-config` as `pid`.
    pub fn check_started(&mut self, pid: i32, now: Ms) {
        self.check = Some(CheckRun {
            pid,
            deadline: now.plus(CHECK_TIMEOUT),
        });
    }

    /// The check ended (`said`: its last line on standard error). Exit 0 re-executes at the
    /// end of this turn, after every death of the batch was handled; anything else fails the
    /// upgrade and changes nothing.
    pub fn check_done(&mut self, death: Death, said: &str, out: &mut Vec<Action>) {
        if self.check.take().is_none() {
            return;
        }
        match death {
            Death::Exited(0) => self.exec = !self.stopping(),
            Death::Exited(code) => self.upgrade_failed(
                &format!("the new binary's --check-config exited with {code}: {said}"),
                out,
            ),
            Death::Signaled(sig) => self.upgrade_failed(
                &format!(
                    "the new binary's --check-config was killed by {} (it has {CHECK_TIMEOUT:?} to answer)",
                    sig.as_str()
                ),
                out,
            ),
        }
    }

    /// The running version keeps serving; the service manager hears why the upgrade failed.
    pub fn upgrade_failed(&mut self, why: &str, out: &mut Vec<Action>) {
        tracing::error!("upgrade failed, the running version keeps serving: {why}");
        self.note = Some(format!("upgrade failed: {why}"));
        out.push(Action::Notify(Notify::Ready(self.status_line())));
    }

    /// Starts a rollout of `config`. One under way is replaced, but the replacements it has
    /// booting are carried over: each still retires its old worker once ready, and is itself
    /// an old worker of the new rollout.
    pub fn roll(&mut self, why: Why, config: ClusterConfig, restore_target: usize) {
        let carried: Vec<(u64, u64)> = self
            .pending
            .take()
            .map(|p| p.replacing)
            .unwrap_or_default()
            .into_iter()
            .filter(|(new, _)| self.table.is_live(*new))
            .collect();
        let old: Vec<u64> = self
            .table
            .live()
            .map(|w| w.id)
            .filter(|id| !carried.iter().any(|(_, old)| old == id))
            .collect();
        if why != Why::Recycle {
            tracing::info!(
                workers = old.len() + carried.len(),
                "reload: replacing workers one at a time"
            );
        }
        self.generations += 1;
        self.pending = Some(Pending {
            generation: self.generations,
            why,
            config,
            old,
            replacing: carried,
            restore_target,
        });
    }
}
