//! The master: the edge of a pure core. Runs only in the master: one thread, no runtime.
//!
//! Each turn reads like a checklist (after gunicorn's arbiter and nginx's master cycle):
//! sleep until an event or the next deadline; read the clock once; hand every signal, control
//! request, pipe message and death to the decisions; observe the workers (scoreboard, `/proc`)
//! when due; let the planners decide the deadlines and the forks; carry out the actions; report
//! to systemd; re-execute only at the end of a turn.
//!
//! The decisions make no system call and read no clock: [`cluster`] (state, events),
//! `command.rs` (operators' commands), [`manage`] (forks, surplus, rollouts), [`deadlines`] (kills, hangs, recycling, wake-ups),
//! [`reload`], [`handover`] (what crosses an upgrade), [`table`], [`policy`], [`status`], [`report`],
//! [`balance`] (which slots new connections avoid).
//! The effects are here, in `apply.rs` (poll, fork, kill, exec, notify, `/proc`) and in
//! `steering.rs` (sampling the slots for `--balance load`).

mod apply;
pub mod balance;
pub mod clock;
pub mod cluster;
mod command;
pub mod control;
pub mod deadlines;
pub mod event;
pub mod handover;
pub mod manage;
pub mod observe;
pub mod pipes;
pub mod policy;
pub mod reload;
pub mod report;
pub mod status;
mod steering;
pub mod table;
#[cfg(test)]
mod tests;
pub mod upgrade;

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{Gid, Uid};

use self::clock::Ms;
use self::cluster::{Cluster, Halt};
use self::control::Control;
use self::deadlines::OBSERVE_EVERY;
use self::event::Command;
use self::event::Seen;
use self::pipes::Pipes;
pub use self::policy::Backoff;
pub use self::reload::Reloaded;
use self::upgrade::{Binary, Check};
use crate::config::ClusterConfig;
use crate::process::{ProcessError, exit_code};
use crate::scoreboard::Scoreboard;
use crate::signals::Signals;
use crate::socket::{SocketMode, Sockets};
use crate::systemd::Notifier;
use crate::worker::WorkerApp;

/// Errors that end the master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Installing the signalfd or another OS-level setup step failed.
    #[error("{op}: {source}")]
    Os {
        /// The step that failed.
        op: &'static str,
        /// errno.
        source: nix::Error,
    },
    /// Forking was refused.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The scoreboard could not be made or mapped.
    #[error(transparent)]
    Board(#[from] crate::scoreboard::BoardError),
    /// A worker exited with [`exit_code::CONFIG_INVALID`]: the configuration cannot work, so
    /// the master stopped everything rather than respawn forever.
    #[error("worker {id} rejected the configuration (exit code 4); see its log line above")]
    WorkerConfig {
        /// The worker that reported it.
        id: u64,
    },
}

/// Re-reads the configuration on SIGHUP, and builds the app anew if its options are part of
/// it (new workers get it); an error keeps the running configuration and app.
pub type ReloadFn<A> = Box<dyn FnMut() -> Result<(Reloaded, Option<A>), String>>;

/// The master: the pure [`Cluster`] and everything that touches the OS on its behalf.
pub struct Master<A: WorkerApp> {
    /// The app each generation of workers is forked with: the one at the greatest generation
    /// not above the worker's (a reload that rebuilt the app adds one at its generation).
    apps: std::collections::BTreeMap<u64, A>,
    cluster: Cluster,
    sockets: Sockets,
    credentials: Option<(Uid, Gid)>,
    signals: Signals,
    notifier: Notifier,
    board: Scoreboard,
    counters: crate::counter::Slab,
    /// The dashboard's last 5 minutes and events, and what takes its points.
    history: crate::history::Memory,
    sampler: crate::history::Sampler,
    pipes: Pipes,
    control: Option<Control>,
    metrics: Option<std::net::TcpListener>,
    binary: Option<Binary>,
    check: Option<Check>,
    /// The new binary a passed check checked, until the `execve` at the end of the turn.
    image: Option<std::os::fd::OwnedFd>,
    reload: Option<ReloadFn<A>>,
    /// `--watch`: what was seen of the binary's file, when watching it.
    watch: Option<upgrade::watch::Watch>,
    /// When the workers were last observed.
    observed_at: Ms,
    /// systemd's descriptor store, kept in step with the socket table (under systemd).
    fdstore: Option<crate::socket::FdStore>,
    /// The worker count to scale to once the slots restored from the store all serve, and the
    /// count the restore started with (any other change of the target cancels the scale).
    scale_after_restore: Option<(usize, usize)>,
    /// `--balance load`: what the slot samples decided, and when they were last taken.
    balancer: balance::Balancer,
    sampled_at: Ms,
    /// This image was started by an upgrade and adopted the previous image's workers.
    upgraded: bool,
}

impl<A: WorkerApp> Master<A> {
    /// Prepares a master for `app` on `sockets`. Installs the signalfd, so call it in the
    /// process that will fork, before any thread exists.
    pub fn new(app: A, config: ClusterConfig, sockets: Sockets) -> Result<Self, MasterError> {
        let signals = Signals::install().map_err(|source| MasterError::Os {
            op: "installing the signalfd",
            source,
        })?;
        let min_workers = sockets.min_workers();
        if min_workers > config.workers {
            tracing::warn!(
                workers = min_workers,
                sockets = sockets.passed(),
                "more sockets from systemd than --workers: running one worker per socket"
            );
        }
        // Room for every worker at the limit, plus the old generation of a rolling restart.
        let board = Scoreboard::create(2 * config.max_workers.max(min_workers) + 2)?;
        let capacity = board.board().records.len();
        let counters = crate::counter::Slab::create(capacity)?;
        let history = crate::history::Memory::create(capacity)?;
        Ok(Master {
            apps: [(0, app)].into(),
            cluster: Cluster::new(config, min_workers, capacity, Ms::now()),
            sockets,
            credentials: None,
            signals,
            notifier: Notifier::from_env(),
            board,
            counters,
            history,
            sampler: crate::history::Sampler::default(),
            pipes: Pipes::default(),
            control: None,
            metrics: None,
            binary: None,
            check: None,
            image: None,
            reload: None,
            watch: None,
            observed_at: Ms(0),
            fdstore: None,
            scale_after_restore: None,
            balancer: balance::Balancer::default(),
            sampled_at: Ms(0),
            upgraded: false,
        })
    }

    /// Starts with a worker for each of `slots` slots whose sockets came back from the
    /// descriptor store, if that is more than configured; the count goes back to the configured
    /// one once they all serve.
    pub fn with_restored_slots(mut self, slots: Option<usize>) -> Self {
        let configured = self.cluster.target;
        if let Some(n) = slots.filter(|n| *n > configured) {
            let target = self.cluster.clamp(n, "the restored sockets");
            // Slots past --max-workers (lowered across the restart) will never have a worker.
            let gone = self.sockets.shut_from(target);
            if let Some(f) = self.fdstore.as_mut() {
                f.forget(gone);
            }
            self.cluster.target = target;
            self.scale_after_restore = Some((configured, target));
        }
        self
    }

    /// Keeps the slot sockets and their table in systemd's descriptor store.
    pub fn with_fdstore(mut self, fdstore: Option<crate::socket::FdStore>) -> Self {
        self.fdstore = fdstore;
        self
    }

    /// Answers `clusterd status|scale|reload` on this socket.
    pub fn with_control(mut self, control: Option<Control>) -> Self {
        self.control = control;
        self
    }

    /// Hands this socket to every worker for `/metrics`.
    pub fn with_metrics(mut self, metrics: Option<std::net::TcpListener>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The binary to watch for upgrades (see [`upgrade`]); without it HUP never re-executes.
    pub fn with_binary(mut self, binary: Option<Binary>) -> Self {
        self.binary = binary;
        self
    }

    /// `--watch`: upgrade in place whenever the binary's file is replaced (needs
    /// [`Master::with_binary`]).
    pub fn with_watch(mut self, watch: bool) -> Self {
        self.watch = watch.then(Default::default);
        self
    }

    /// What to call on SIGHUP to get the new configuration.
    pub fn with_reload(mut self, reload: ReloadFn<A>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Runs workers as this uid/gid (resolved by the caller while still root).
    pub fn with_credentials(mut self, credentials: Option<(Uid, Gid)>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Replaces the crash-loop policy (tests and embedders).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.cluster.backoff = backoff;
        self
    }

    /// What the workers' health reports are about, e.g. "store redis": systemd's STATUS line
    /// then ends in "store redis ok" or "store redis down on 1/4 workers".
    pub fn with_health_label(mut self, label: impl Into<String>) -> Self {
        self.cluster.label = Some(label.into());
        self
    }

    /// Runs until a stop signal has been handled and every worker reaped.
    pub fn run(mut self) -> Result<(), MasterError> {
        self.announce();
        let mut timeout = Duration::ZERO;
        loop {
            self.sleep(timeout);
            let now = Ms::now();
            let mut todo = Vec::new();
            for sig in self.signals.drain() {
                if let Some(cmd) = Command::from_signal(sig) {
                    self.cluster.command(cmd, now, &mut todo);
                }
            }
            self.serve_control(now, &mut todo);
            for (id, msg) in self.pipes.read() {
                self.cluster.message(id, msg, now, &mut todo);
            }
            // Signals go out before the reap, while every pid they name is still ours.
            self.apply(todo, now);
            let mut todo = Vec::new();
            self.reap(now, &mut todo);
            // An operator's scale or a reload since the restore decided the count already.
            if self
                .scale_after_restore
                .is_some_and(|(_, restored)| self.cluster.target != restored)
            {
                self.scale_after_restore = None;
            }
            if let Some((n, _)) = self.scale_after_restore
                && self.cluster.table.ready() >= self.cluster.target
                && !self.cluster.reloading()
            {
                self.scale_after_restore = None;
                tracing::info!(
                    from = self.cluster.target,
                    to = n,
                    "every restored socket was served; back to the configured worker count"
                );
                self.cluster.command(Command::Scale(n), now, &mut todo);
            }
            self.balance(now);
            self.sampler
                .tick(self.board.board(), self.history.history(), now.0);
            let seen = self.observe(now);
            if let Some(seen) = &seen {
                deadlines::recycle(&mut self.cluster, seen, now);
                self.watch_binary(now, &mut todo);
            }
            deadlines::murder(&mut self.cluster, seen.as_deref(), now, &mut todo);
            manage::plan(&mut self.cluster, now, &mut todo);
            self.apply(todo, now);
            self.report();
            if let Some(outcome) = self.cluster.outcome() {
                return self.finish(outcome);
            }
            if self.cluster.take_exec() {
                self.exec(now);
            }
            let mut wake = deadlines::next_wakeup(&self.cluster, now)
                .min(self.observed_at.plus(OBSERVE_EVERY));
            if self.balancing() {
                wake = wake.min(self.sampled_at.plus(balance::SAMPLE_EVERY));
            }
            // The dashboard's point a second.
            wake = wake.min(Ms(self.sampler.next_ms()).max(now));
            if let Some(every) = self.notifier.watchdog_interval() {
                wake = wake.min(now.plus(every));
            }
            timeout = wake.since(now);
        }
    }

    /// The workers as they are now, when an observation is due (every [`OBSERVE_EVERY`]).
    fn observe(&mut self, now: Ms) -> Option<Vec<Seen>> {
        if now < self.observed_at.plus(OBSERVE_EVERY) {
            return None;
        }
        self.observed_at = now;
        let sockets = &self.sockets;
        Some(observe::observe(
            &self.cluster.table,
            self.board.board(),
            |slot| sockets.queue(slot),
            now,
        ))
    }

    /// `--watch`, at each observation: a replaced binary that has settled is reloaded into.
    fn watch_binary(&mut self, now: Ms, out: &mut Vec<event::Action>) {
        // A version is looked at only when it could be tried: not while a check runs (its
        // outcome would decide nothing for this one), not while stopping.
        if self.check.is_some() || self.cluster.stopping() {
            return;
        }
        let (Some(watch), Some(binary)) = (self.watch.as_mut(), self.binary.as_ref()) else {
            return;
        };
        let stamp = binary
            .replaced()
            .then(|| upgrade::watch::Stamp::of(&binary.path))
            .flatten();
        if watch.look(stamp) {
            tracing::info!(binary = %binary.path.display(), "--watch: the binary was replaced; upgrading in place");
            self.cluster.command(Command::Reload, now, out);
        }
    }

    /// Waits for a signal, a control client, a worker's pipe, or the timeout.
    fn sleep(&self, timeout: Duration) {
        // Round up so we do not wake a hair before the deadline and spin.
        let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &self.control {
            for (fd, write) in c.poll_set() {
                let flags = if write {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(fd, flags));
            }
        }
        fds.extend(
            self.pipes
                .fds()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        // EINTR or a transient error: the loop simply goes round again.
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// The scoreboard's header, systemd's status line, the watchdog, the descriptor store.
    fn report(&mut self) {
        if let Some(f) = self.fdstore.as_mut() {
            f.sync(&self.sockets);
        }
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.cluster;
        let header = self.board.board().header;
        header.restarts.store(c.restarts, Relaxed);
        header.ready.store(c.table.ready() as u64, Relaxed);
        header.target.store(c.target as u64, Relaxed);
        header
            .reloading
            .store(u64::from(c.pending.is_some()), Relaxed);
        if !c.stopping() {
            let line = c.status_line();
            let serving = c.table.ready() > 0;
            self.notifier.status(&line);
            // Healthy means the loop turns (it does, we are here) and someone serves.
            if serving {
                self.notifier.ping();
            }
        }
    }

    fn announce(&self) {
        // Short, so it fits in the original command line (`/usr/local/bin/clusterd`).
        crate::title::set("clusterd: master", "clusterd-master");
        let pid = std::process::id();
        if self.upgraded {
            let binary = self.binary.as_ref().map(|b| b.path.display().to_string());
            tracing::info!(
                pid,
                binary = binary.unwrap_or_default(),
                adopted = self.cluster.table.workers.len(),
                "master re-executed from the new binary; replacing the old workers one at a time"
            );
            return;
        }
        let c = &self.cluster;
        tracing::info!(pid, addr = %self.sockets.addr(), sockets = %self.sockets.mode(), workers = c.target, threads = c.config.threads, "master started");
        if self.sockets.mode() == SocketMode::PerWorker {
            match crate::socket::tcp_migrate_req() {
                Some(true) => tracing::info!(
                    "net.ipv4.tcp_migrate_req=1: connections queued on a retired worker's socket move to the others"
                ),
                Some(false) => tracing::info!(
                    "net.ipv4.tcp_migrate_req=0: a connection that reaches a retired worker's socket in the instant it closes is reset; set it to 1 to have the kernel move it"
                ),
                None => tracing::info!("net.ipv4.tcp_migrate_req is not available (Linux < 5.14)"),
            }
        }
    }

    fn finish(&mut self, outcome: Result<(), Halt>) -> Result<(), MasterError> {
        match outcome {
            Ok(()) => {
                tracing::info!("all workers stopped; master exiting");
                Ok(())
            }
            Err(Halt::WorkerConfig(id)) => Err(MasterError::WorkerConfig { id }),
            Err(Halt::Threaded(n)) => Err(ProcessError::Threaded(n).into()),
        }
    }
}

/// The exit code `main` should use for a master error.
pub fn exit_code_for(err: &MasterError) -> i32 {
    match err {
        MasterError::WorkerConfig { .. } => exit_code::CONFIG_INVALID,
        _ => exit_code::FAILURE,
    }
}
