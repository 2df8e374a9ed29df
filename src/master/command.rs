//! An operator's commands (signals and control-socket requests alike), as decisions. Pure;
//! runs in the master.

use super::clock::Ms;
use super::cluster::{Cluster, Phase};
use super::event::{Action, Command, Notify};

impl Cluster {
    /// An operator's command. Returns the control socket's answer (`Null` for `status`, which
    /// the edge builds from what it observes).
    pub fn command(&mut self, cmd: Command, now: Ms, out: &mut Vec<Action>) -> serde_json::Value {
        use serde_json::json;
        let stopping = json!({ "ok": false, "error": "stopping" });
        match cmd {
            Command::Status => serde_json::Value::Null,
            Command::Ignore(name) => {
                tracing::info!(
                    signal = name,
                    "ignored: the master has no use for this signal (HUP reloads, TERM stops)"
                );
                serde_json::Value::Null
            }
            Command::Stop { fast, by } => {
                match (&self.phase, fast) {
                    (Phase::Stopping { fast: true, .. }, _) => {}
                    (Phase::Stopping { .. }, false) => {
                        tracing::info!(signal = by, "already stopping; send SIGQUIT to stop now")
                    }
                    (_, false) => {
                        tracing::info!(
                            signal = by,
                            timeout_s = self.config.graceful_timeout.as_secs(),
                            "graceful stop: workers finish their requests, then exit"
                        );
                        self.stop(false, None, now, out);
                    }
                    (_, true) => {
                        tracing::info!(signal = by, "fast stop: closing connections now");
                        self.stop(true, None, now, out);
                    }
                }
                serde_json::Value::Null
            }
            Command::Reload if self.stopping() => stopping,
            Command::Reload => {
                if self.check.is_some() {
                    tracing::info!("SIGHUP: an upgrade is being checked already");
                } else {
                    // The service manager hears of every reload, also of one that fails at
                    // once: under Type=notify-reload, `systemctl reload` waits for READY=1.
                    out.push(Action::Notify(Notify::Reloading));
                    out.push(Action::Reload);
                }
                json!({ "ok": true, "reloading": true })
            }
            Command::More | Command::Fewer | Command::Scale(_) if self.stopping() => stopping,
            Command::More if self.target >= self.config.max_workers => {
                tracing::info!(
                    workers = self.target,
                    "SIGTTIN: already at --max-workers, keeping them"
                );
                json!({ "ok": false, "error": "already at --max-workers" })
            }
            Command::More => {
                self.set_target(self.target + 1);
                tracing::info!(workers = self.target, "SIGTTIN: one worker more");
                json!({ "ok": true, "workers": self.target })
            }
            Command::Fewer if self.target <= self.min_workers => {
                tracing::info!(
                    workers = self.target,
                    "SIGTTOU: already at the fewest workers (one, or one per socket from systemd), keeping them"
                );
                json!({ "ok": false, "error": "already at the fewest workers" })
            }
            Command::Fewer => {
                self.set_target(self.target - 1);
                tracing::info!(workers = self.target, "SIGTTOU: one worker fewer");
                json!({ "ok": true, "workers": self.target })
            }
            Command::Scale(n) => {
                let (min, max) = (self.min_workers, self.config.max_workers);
                if n < min || n > max {
                    return json!({ "ok": false, "error": format!("{n} workers: choose from {min} to {max} (--max-workers)") });
                }
                tracing::info!(
                    from = self.target,
                    to = n,
                    "scale asked on the control socket"
                );
                self.set_target(n);
                json!({ "ok": true, "workers": n })
            }
        }
    }

    /// An operator's worker count wins over a rollout's: an abort keeps it.
    fn set_target(&mut self, n: usize) {
        self.target = n;
        if let Some(p) = self.pending.as_mut() {
            p.restore_target = n;
        }
    }
}
