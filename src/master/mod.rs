//! The master loop. Runs only in the master: one thread, no runtime.
//!
//! Each turn reads like a checklist (after gunicorn's arbiter and nginx's master cycle):
//! 1. fork whatever is missing (empty slots after the crash-loop delay, the next step of a
//!    rolling restart) and retire surplus slots;
//! 2. wait, at most until the next deadline, for a signal or a worker's readiness byte;
//! 3. handle each signal as a [`MasterEvent`];
//! 4. note which workers became ready;
//! 5. reap every dead child and decide what its death means;
//! 6. enforce deadlines: a stopping worker that overstays its graceful timeout gets SIGKILL.
//!
//! The parts: [`table`] (workers in slots), [`policy`] (crash-loop back-off), [`status`]
//! (systemd's status line), [`upgrade`] (re-executing a replaced binary on SIGHUP). Forks,
//! signals to workers and the `execve` happen only in this file.

pub mod control;
pub mod policy;
pub mod status;
pub mod table;
pub mod upgrade;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, pipe2};

use self::control::{Control, Request};
pub use self::policy::Backoff;
use self::status::Snapshot;
use self::table::{Retiring, Table, Worker};
use self::upgrade::{Binary, Check, WorkerState};
use crate::config::ClusterConfig;
use crate::process::{self, Death, Policy, ProcessError, exit_code};
use crate::scoreboard::Scoreboard;
use crate::signals::{MasterEvent, Signals};
use crate::socket::{SocketMode, Sockets};
use crate::systemd::Notifier;
use crate::worker::{self, WorkerApp, WorkerSpec, message};

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

/// A new configuration from SIGHUP: the process-model part, and the names of settings that
/// changed but need a full restart.
pub struct Reloaded {
    /// The new process-model settings (worker and thread counts, timeouts take effect).
    pub cluster: ClusterConfig,
    /// Settings that changed but only apply after a restart; logged as such.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads the configuration on SIGHUP; an error keeps the running configuration.
pub type ReloadFn = Box<dyn FnMut() -> Result<Reloaded, String>>;

/// How long a new worker may take to report ready before a rolling restart gives up on it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers get after SIGQUIT before SIGKILL.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time past the graceful timeout before SIGKILL, for the worker's own forced close.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// How often heartbeats, boot deadlines and recycling limits are checked.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(500);
/// A hung worker's time between SIGABRT (for a backtrace) and SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(1);
/// Samples over --max-worker-memory in a row before a worker is recycled.
const MEMORY_SAMPLES: u32 = 3;
/// The longest the loop sleeps with nothing to do, so it stays observable (watchdog, status).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A rolling restart: the old workers still to replace, one slot at a time, and the settings
/// the new ones run with. The settings become the running ones only when every old worker is
/// replaced; an aborted rollout drops them, so a configuration that failed never outlives it.
struct Rollout {
    /// Workers of the old configuration still to be replaced.
    old: Vec<u64>,
    /// The replacement currently booting.
    pending: Option<Pending>,
    /// The settings of the new workers.
    config: ClusterConfig,
    /// Every worker this rollout forked: one that dies right after it became ready stops it.
    spawned: Vec<u64>,
    /// A reload (or upgrade), which systemd hears the end of; else it only recycles workers.
    reload: bool,
}

/// A replacement booting in the slot of an old worker.
#[derive(Clone, Copy)]
struct Pending {
    /// The new worker.
    new: u64,
    /// The worker it replaces (same slot), retired once `new` is ready.
    old: u64,
    /// When `new` must be ready, or the reload is aborted.
    deadline: Instant,
}

#[derive(Clone, Copy)]
enum Stopping {
    Graceful,
    Fast,
}

/// The master: owns the sockets, the worker table, the signals and the restart policy.
pub struct Master<A: WorkerApp> {
    /// The app every worker runs.
    app: A,
    /// The process-model settings in force (a reload replaces what it may change).
    config: ClusterConfig,
    /// Re-reads the configuration on SIGHUP.
    reload: Option<ReloadFn>,
    /// The listening sockets, by slot.
    sockets: Sockets,
    /// Resolved `--user`/`--group` for the workers, when the master runs as root.
    credentials: Option<(Uid, Gid)>,
    /// Where signals are read from.
    signals: Signals,
    /// sd_notify, when run by systemd.
    notifier: Notifier,
    /// This process, so a worker can tell its master from a new parent.
    pid: Pid,
    /// Every forked, unreaped worker, in its slot.
    table: Table,
    /// The id the next forked worker gets.
    next_id: u64,
    /// How many slots should have a worker.
    target: usize,
    /// The fewest workers that serve every socket systemd passed.
    min_workers: usize,
    /// Crash-loop back-off.
    backoff: Backoff,
    /// No fork before this moment (back-off after a crash or a failed fork).
    respawn_at: Instant,
    /// A rolling restart under way.
    rollout: Option<Rollout>,
    /// Set once a stop began: nothing is forked any more.
    stopping: Option<Stopping>,
    /// Why the master stops on its own; returned by `run`.
    halt: Option<MasterError>,
    /// Unplanned deaths since start.
    restarts: u64,
    /// Every wanted worker served at the end of the last turn (for the "all ready" log line).
    all_ready: bool,
    /// READY=1 was sent once already.
    announced_ready: bool,
    /// What the workers' health reports are about, for the status line.
    health_label: Option<String>,
    /// Why the last reload failed, shown in the status line until the next one.
    reload_error: Option<String>,
    /// The binary this master runs, to notice on SIGHUP that a deploy replaced it.
    binary: Option<Binary>,
    /// The replaced binary checking the configuration before the master re-executes it.
    check: Option<Check>,
    /// This image was started by an upgrade and adopted the previous image's workers.
    upgraded: bool,
    /// Shared counters and heartbeats of the workers.
    board: Scoreboard,
    /// `clusterd status|scale|reload`.
    control: Option<Control>,
    /// The metrics socket every worker also serves (`--metrics-bind`).
    metrics: Option<std::net::TcpListener>,
    /// Unplanned deaths (and hangs) by slot.
    slot_restarts: Vec<u64>,
    /// When the master started (this image, or the first one before an upgrade).
    started: Instant,
    /// When worker memory was last sampled.
    sampled_at: Instant,
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
        let target = config.workers.max(min_workers);
        // Room for every worker at the limit, plus the old generation of a rolling restart.
        let board = Scoreboard::create(2 * config.max_workers.max(target) + 2)?;
        if target > config.workers {
            tracing::warn!(
                workers = target,
                sockets = sockets.passed(),
                "more sockets from systemd than --workers: running one worker per socket"
            );
        }
        Ok(Master {
            app,
            target,
            min_workers,
            config,
            reload: None,
            sockets,
            credentials: None,
            signals,
            notifier: Notifier::from_env(),
            pid: nix::unistd::getpid(),
            table: Table::default(),
            next_id: 1,
            backoff: Backoff::default(),
            respawn_at: Instant::now(),
            rollout: None,
            stopping: None,
            halt: None,
            restarts: 0,
            all_ready: false,
            announced_ready: false,
            health_label: None,
            reload_error: None,
            binary: None,
            check: None,
            upgraded: false,
            board,
            control: None,
            metrics: None,
            slot_restarts: Vec::new(),
            started: Instant::now(),
            sampled_at: Instant::now(),
        })
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

    /// Takes over the workers of the previous image of this process (an upgrade) and starts
    /// replacing them, one slot at a time, with workers of this binary. The socket table came
    /// through [`Master::new`] already.
    pub fn adopt(mut self, state: upgrade::State) -> Self {
        let now = Instant::now();
        if let Some(fd) = state.board_fd {
            match Scoreboard::adopt(fd) {
                Ok(board) => self.board = board,
                Err(e) => {
                    tracing::warn!(error = %e, "the previous scoreboard is lost; the adopted workers go unobserved until replaced")
                }
            }
        }
        if let Some(fd) = state.metrics_fd {
            match upgrade::adopt_fd(fd) {
                Some(fd) => self.metrics = Some(std::net::TcpListener::from(fd)),
                None => tracing::warn!("the inherited metrics socket is gone"),
            }
        }
        self.slot_restarts = state.slot_restarts.clone();
        self.started = ago_from(now, state.master_age_ms);
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        let mut holding = Vec::new();
        for w in state.workers {
            holding.extend(w.closing_socket);
            self.table.workers.push(Worker {
                id: w.id,
                slot: w.slot,
                pid: Pid::from_raw(w.pid),
                started: ago(w.age_ms),
                pipe: w.pipe.and_then(upgrade::adopt_fd),
                healthy: w.healthy,
                ready: w.ready,
                ready_at: w.ready_age_ms.map(ago),
                retiring: w.retiring.map(|(in_ms, killed)| Retiring {
                    kill_at: now + Duration::from_millis(in_ms),
                    killed,
                }),
                closing_socket: w.closing_socket,
                record: if state.board_fd.is_some() {
                    w.record
                } else {
                    None
                },
                max_requests: w.max_requests,
                rss: 0,
                over_memory: 0,
                recycling: false,
            });
        }
        // A retired slot's socket whose worker was reaped while the images changed hands.
        self.sockets.forget_closing(&holding);
        self.next_id = state.next_id;
        self.restarts = state.restarts;
        self.backoff.set_failures(state.failures);
        self.respawn_at = now + Duration::from_millis(state.respawn_in_ms);
        // As on a reload: a changed --workers wins over TTIN/TTOU.
        self.target = if state.configured_workers == self.config.workers {
            state.target
        } else {
            self.config.workers
        }
        .max(self.min_workers);
        self.announced_ready = true;
        self.upgraded = true;
        let old: Vec<u64> = self.table.live().map(|w| w.id).collect();
        self.rollout = Some(Rollout {
            old,
            pending: None,
            config: self.config.clone(),
            spawned: Vec::new(),
            reload: true,
        });
        self
    }

    /// What to call on SIGHUP to get the new configuration.
    pub fn with_reload(mut self, reload: ReloadFn) -> Self {
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
        self.backoff = backoff;
        self
    }

    /// What the workers' health reports are about, e.g. "store redis": systemd's STATUS line
    /// then ends in "store redis ok" or "store redis down on 1/4 workers".
    pub fn with_health_label(mut self, label: impl Into<String>) -> Self {
        self.health_label = Some(label.into());
        self
    }

    /// Runs until a stop signal has been handled and every worker reaped.
    pub fn run(mut self) -> Result<(), MasterError> {
        // Short, so it fits in the original command line (`/usr/local/bin/clusterd`).
        crate::title::set("clusterd: master", "clusterd-master");
        if self.upgraded {
            tracing::info!(
                pid = self.pid.as_raw(),
                binary = %self.binary.as_ref().map_or_else(String::new, |b| b.path.display().to_string()),
                adopted = self.table.workers.len(),
                "master re-executed from the new binary; replacing the old workers one at a time"
            );
        } else {
            tracing::info!(
                pid = self.pid.as_raw(),
                addr = %self.sockets.addr(),
                sockets = %self.sockets.mode(),
                workers = self.target,
                threads = self.config.threads,
                "master started"
            );
        }
        if self.sockets.mode() == SocketMode::PerWorker && !self.upgraded {
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
        loop {
            self.manage();
            self.advance_rollout();
            self.update_status();
            if self.stopping.is_some() && self.table.workers.is_empty() {
                break;
            }
            self.wait();
            for event in self.signals.drain() {
                self.handle(event);
            }
            self.read_ready_pipes();
            self.serve_control();
            for (pid, death) in process::reap() {
                if self.check.as_ref().is_some_and(|c| c.pid == pid) {
                    self.on_check_done(death);
                } else {
                    self.on_death(pid, death);
                }
            }
            self.enforce_deadlines();
        }
        match self.halt.take() {
            Some(err) => Err(err),
            None => {
                tracing::info!("all workers stopped; master exiting");
                Ok(())
            }
        }
    }

    // ---- events -------------------------------------------------------------------------

    fn handle(&mut self, event: MasterEvent) {
        match event {
            MasterEvent::GracefulStop(sig) => self.on_graceful_stop(sig),
            MasterEvent::FastStop => self.on_fast_stop(),
            MasterEvent::Reload => self.on_reload(),
            MasterEvent::IncrementWorkers => self.on_ttin(),
            MasterEvent::DecrementWorkers => self.on_ttou(),
            // Reaping happens on every turn anyway; the signal only woke us up.
            MasterEvent::ChildExited => {}
        }
    }

    fn on_graceful_stop(&mut self, sig: Signal) {
        if self.stopping.is_some() {
            tracing::info!(
                signal = sig.as_str(),
                "already stopping; send SIGQUIT to stop now"
            );
            return;
        }
        tracing::info!(
            signal = sig.as_str(),
            timeout_s = self.config.graceful_timeout.as_secs(),
            "graceful stop: workers finish their requests, then exit"
        );
        self.begin_stop(Stopping::Graceful);
    }

    fn on_fast_stop(&mut self) {
        if matches!(self.stopping, Some(Stopping::Fast)) {
            return;
        }
        tracing::info!(signal = "SIGQUIT", "fast stop: closing connections now");
        self.begin_stop(Stopping::Fast);
    }

    fn begin_stop(&mut self, how: Stopping) {
        self.notifier.stopping();
        self.stopping = Some(how);
        self.rollout = None;
        let (sig, grace) = match how {
            Stopping::Graceful => (Signal::SIGTERM, self.config.graceful_timeout + KILL_MARGIN),
            Stopping::Fast => (Signal::SIGQUIT, FAST_STOP_TIMEOUT),
        };
        let ids: Vec<u64> = self.table.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.retire(id, sig, grace);
        }
    }

    fn on_reload(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.check.is_some() {
            tracing::info!("SIGHUP: an upgrade is being checked already");
            return;
        }
        // The service manager hears of every reload, also of one that fails at once: under
        // Type=notify-reload, `systemctl reload` waits for READY=1 after RELOADING=1.
        self.notifier.reloading();
        if let Some(binary) = self.binary.as_ref().filter(|b| b.replaced()) {
            // The new binary reads the configuration itself once it runs.
            match Check::start(binary) {
                Ok(check) => {
                    tracing::info!(binary = %binary.path.display(), "SIGHUP: the binary was replaced; checking the new one before re-executing it");
                    self.check = Some(check);
                }
                Err(e) => {
                    let why = format!("cannot run {}: {e}", binary.path.display());
                    self.upgrade_failed(&why);
                }
            }
            return;
        }
        let mut config = self
            .rollout
            .as_ref()
            .map_or_else(|| self.config.clone(), |r| r.config.clone());
        if let Some(reload) = self.reload.as_mut() {
            match reload() {
                Ok(new) => {
                    for name in &new.needs_restart {
                        tracing::warn!(
                            setting = name,
                            "changed in the config, takes effect after a full restart"
                        );
                    }
                    if new.cluster.workers != config.workers {
                        let to = new.cluster.workers.max(self.min_workers);
                        tracing::info!(from = self.target, to, "worker count changed");
                        self.target = to;
                    }
                    // What is bound or resolved once at start stays as it is.
                    config = ClusterConfig {
                        bind: config.bind,
                        backlog: config.backlog,
                        sockets: config.sockets,
                        user: config.user.clone(),
                        group: config.group.clone(),
                        control_socket: config.control_socket.clone(),
                        metrics_bind: config.metrics_bind,
                        max_workers: config.max_workers,
                        ..new.cluster
                    };
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; keeping the running configuration and workers");
                    self.reload_error = Some(format!("reload failed: {e}"));
                    self.notifier.ready(&self.status_line());
                    return;
                }
            }
        }
        self.reload_error = None;
        let old: Vec<u64> = self.table.live().map(|w| w.id).collect();
        tracing::info!(
            workers = old.len(),
            "reload: replacing workers one at a time"
        );
        self.rollout = Some(Rollout {
            old,
            pending: None,
            config,
            spawned: Vec::new(),
            reload: true,
        });
    }

    /// The new binary's configuration check ended: re-execute it, or keep serving as we are.
    fn on_check_done(&mut self, death: Death) {
        let Some(check) = self.check.take() else {
            return;
        };
        let said = check.finish();
        match death {
            Death::Exited(0) if self.stopping.is_none() => self.exec_upgrade(),
            Death::Exited(0) => {}
            Death::Exited(code) => self.upgrade_failed(&format!(
                "the new binary's --check-config exited with {code}: {said}"
            )),
            Death::Signaled(sig) => self.upgrade_failed(&format!(
                "the new binary's --check-config was killed by {} (it has {:?} to answer)",
                sig.as_str(),
                upgrade::CHECK_TIMEOUT
            )),
        }
    }

    /// Hands everything over to the new binary with `execve`. Returns only if that failed.
    fn exec_upgrade(&mut self) {
        let Some(binary) = self.binary.clone() else {
            return;
        };
        let now = Instant::now();
        let workers = self
            .table
            .workers
            .iter()
            .map(|w| WorkerState {
                id: w.id,
                slot: w.slot,
                pid: w.pid.as_raw(),
                pipe: w.pipe.as_ref().map(AsRawFd::as_raw_fd),
                healthy: w.healthy,
                ready: w.ready,
                age_ms: w.started.elapsed().as_millis() as u64,
                ready_age_ms: w.ready_at.map(|at| at.elapsed().as_millis() as u64),
                retiring: w.retiring.as_ref().map(|r| {
                    let left = r.kill_at.saturating_duration_since(now);
                    (left.as_millis() as u64, r.killed)
                }),
                closing_socket: w.closing_socket,
                record: w.record,
                max_requests: w.max_requests,
            })
            .collect();
        let configured = self.rollout.as_ref().map_or(&self.config, |r| &r.config);
        let mut state = upgrade::State::new(
            self.sockets.export(),
            workers,
            self.next_id,
            self.target,
            configured.workers,
            self.restarts,
            self.backoff.failures(),
            self.respawn_at.saturating_duration_since(now).as_millis() as u64,
        );
        state.board_fd = Some(self.board.fd());
        state.metrics_fd = self.metrics.as_ref().map(AsRawFd::as_raw_fd);
        state.slot_restarts = self.slot_restarts.clone();
        state.master_age_ms = self.started.elapsed().as_millis() as u64;
        // The control socket is close-on-exec: the new image binds its path anew.
        tracing::info!(binary = %binary.path.display(), "re-executing the master from the new binary");
        let e = upgrade::exec(&binary, &state);
        self.upgrade_failed(&format!("executing {}: {e}", binary.path.display()));
    }

    /// The running version keeps serving; the service manager hears why the upgrade failed.
    fn upgrade_failed(&mut self, why: &str) {
        tracing::error!("upgrade failed, the running version keeps serving: {why}");
        self.reload_error = Some(format!("upgrade failed: {why}"));
        self.notifier.ready(&self.status_line());
    }

    /// Ends a rolling restart that cannot go on: its settings are dropped, the workers not yet
    /// replaced keep serving, and later forks use the running settings.
    fn abort_rollout(&mut self, why: &str) {
        self.rollout = None;
        self.reload_error = Some(format!("reload aborted: {why}"));
        self.notifier.ready(&self.status_line());
    }

    fn on_ttin(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.target >= self.config.max_workers {
            tracing::info!(
                workers = self.target,
                "SIGTTIN: already at --max-workers, keeping them"
            );
            return;
        }
        self.target += 1;
        tracing::info!(workers = self.target, "SIGTTIN: one worker more");
    }

    fn on_ttou(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.target <= self.min_workers {
            tracing::info!(
                workers = self.target,
                "SIGTTOU: already at the fewest workers (one, or one per socket from systemd), keeping them"
            );
            return;
        }
        self.target -= 1;
        tracing::info!(workers = self.target, "SIGTTOU: one worker fewer");
    }

    // ---- workers ------------------------------------------------------------------------

    /// Keeps a live worker in every slot below the target: forks into empty slots (not before
    /// the crash-loop delay) and, outside a rolling restart, retires workers in slots above it.
    fn manage(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        for slot in self.table.empty_slots(self.target) {
            if Instant::now() < self.respawn_at || self.spawn(slot).is_none() {
                break;
            }
        }
        if self.rollout.is_none() {
            for (id, slot) in self.table.surplus(self.target) {
                tracing::info!(worker = id, slot, "retiring a surplus worker");
                self.retire_slot(id, slot);
            }
        }
    }

    /// Forks one worker into `slot`, with the settings of a rollout under way (it is of the new
    /// generation) or else the running ones. On failure logs, applies the back-off and returns
    /// `None`.
    fn spawn(&mut self, slot: usize) -> Option<u64> {
        let id = self.next_id;
        let config = self.rollout.as_ref().map_or(&self.config, |r| &r.config);
        let (threads, graceful_timeout, read_timeout) =
            (config.threads, config.graceful_timeout, config.read_timeout);
        let listener: RawFd = match self.sockets.for_slot(slot) {
            Ok(fd) => fd,
            Err(e) => {
                let delay = self.backoff.on_death(false, Duration::ZERO);
                tracing::error!(slot, error = %e, "opening the slot's socket failed; retrying in {delay:?}");
                self.delay(delay);
                return None;
            }
        };
        let (read, write) = match pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "creating a readiness pipe failed; retrying after a delay");
                let delay = self.backoff.on_death(false, Duration::ZERO);
                self.delay(delay);
                return None;
            }
        };
        let taken: Vec<usize> = self.table.workers.iter().filter_map(|w| w.record).collect();
        let Some(record) = self.board.free(&taken) else {
            let delay = self.backoff.on_death(false, Duration::ZERO);
            tracing::error!(
                "no free scoreboard record (more workers alive than 2 x --max-workers); retrying in {delay:?}"
            );
            self.delay(delay);
            return None;
        };
        self.board.board().records[record].reset(id, slot);
        let max_requests = match (config.max_requests, config.max_requests_jitter) {
            (0, _) => 0,
            (n, 0) => n,
            (n, j) => n + rand::random_range(0..=j),
        };
        let spec = WorkerSpec {
            id,
            slot,
            app: &self.app,
            listener,
            ready: write,
            master: self.pid,
            threads,
            graceful_timeout,
            read_timeout,
            credentials: self.credentials,
            board: self.board.board(),
            record,
            metrics: self.metrics.as_ref().map(AsRawFd::as_raw_fd),
        };
        // The closure (and the pipe's write end in it) is dropped in the master when `spawn`
        // returns, so the master holds only the read end.
        match process::spawn(|| worker::run(spec)) {
            Ok(pid) => {
                self.next_id += 1;
                tracing::info!(worker = id, slot, pid = pid.as_raw(), "worker started");
                self.table.workers.push(Worker {
                    id,
                    slot,
                    pid,
                    started: Instant::now(),
                    pipe: Some(read),
                    healthy: None,
                    ready: false,
                    ready_at: None,
                    retiring: None,
                    closing_socket: None,
                    record: Some(record),
                    max_requests,
                    rss: 0,
                    over_memory: 0,
                    recycling: false,
                });
                if let Some(r) = self.rollout.as_mut() {
                    r.spawned.push(id);
                }
                Some(id)
            }
            Err(ProcessError::Threaded(n)) => {
                // A bug, not a condition to retry: stop rather than fork into undefined state.
                tracing::error!(
                    threads = n,
                    "the master has threads; refusing to fork and stopping"
                );
                self.halt = Some(ProcessError::Threaded(n).into());
                self.begin_stop(Stopping::Graceful);
                None
            }
            Err(e) => {
                let delay = self.backoff.on_death(false, Duration::ZERO);
                tracing::error!(error = %e, "fork failed; retrying in {delay:?}");
                self.delay(delay);
                None
            }
        }
    }

    fn delay(&mut self, delay: Duration) {
        self.respawn_at = self.respawn_at.max(Instant::now() + delay);
    }

    /// Retires the worker of a slot that goes away. The master closes its copy of the slot's
    /// socket first; the worker, then its last holder, is told with SIGUSR1 to close it while
    /// still accepting, before it drains (see `worker.rs`). Where the socket stays (shared, or
    /// from systemd) it gets the plain graceful stop.
    fn retire_slot(&mut self, id: u64, slot: usize) {
        let closing = self.sockets.close_slot(slot);
        if let Some(w) = self.table.get_mut(id) {
            w.closing_socket = closing;
        }
        let sig = if closing.is_some() {
            Signal::SIGUSR1
        } else {
            Signal::SIGTERM
        };
        self.retire(id, sig, self.config.graceful_timeout + KILL_MARGIN);
    }

    /// Asks a worker to stop with `sig`, and schedules SIGKILL after `grace`.
    fn retire(&mut self, id: u64, sig: Signal, grace: Duration) {
        let Some(w) = self.table.get_mut(id) else {
            return;
        };
        let kill_at = Instant::now() + grace;
        match &mut w.retiring {
            // Already stopping: a fast stop may shorten the deadline, never extend it.
            Some(r) => r.kill_at = r.kill_at.min(kill_at),
            None => {
                w.retiring = Some(Retiring {
                    kill_at,
                    killed: false,
                })
            }
        }
        if let Err(e) = kill(w.pid, sig) {
            tracing::warn!(worker = id, pid = w.pid.as_raw(), error = %e, "could not signal worker");
        }
    }

    /// Moves a rolling restart forward: fork a replacement into the slot of the next old
    /// worker; once it is ready, retire that old worker (the slot's socket stays open, the new
    /// worker already accepts on it) and go on; give up, keeping the old workers, if a
    /// replacement does not become ready in time.
    fn advance_rollout(&mut self) {
        let Some(mut rollout) = self.rollout.take() else {
            return;
        };
        if let Some(p) = rollout.pending {
            match self.table.get(p.new) {
                Some(w) if w.ready => {
                    rollout.pending = None;
                    if self.table.is_live(p.old) {
                        tracing::info!(
                            worker = p.old,
                            replaced_by = p.new,
                            "retiring the old worker"
                        );
                        self.retire(
                            p.old,
                            Signal::SIGTERM,
                            self.config.graceful_timeout + KILL_MARGIN,
                        );
                    }
                }
                Some(_) if Instant::now() >= p.deadline => {
                    tracing::error!(
                        worker = p.new,
                        "replacement not ready after {BOOT_TIMEOUT:?}; reload aborted, old workers keep serving"
                    );
                    self.retire(p.new, Signal::SIGKILL, Duration::ZERO);
                    self.abort_rollout("a new worker was not ready in time");
                    return;
                }
                Some(_) => {
                    self.rollout = Some(rollout);
                    return;
                }
                // It died; `on_death` reported it and aborted the reload already.
                None => return,
            }
        }
        rollout.old.retain(|old| self.table.is_live(*old));
        let Some(&old) = rollout.old.last() else {
            if rollout.reload {
                tracing::info!("reload complete: every worker replaced");
                self.config = rollout.config;
                self.notifier.ready(&self.status_line());
            } else {
                tracing::info!("recycling complete");
            }
            return;
        };
        let slot = self.table.get(old).map_or(0, |w| w.slot);
        // Back in place before forking: `spawn` takes the new settings from it.
        self.rollout = Some(rollout);
        if Instant::now() >= self.respawn_at
            && let Some(new) = self.spawn(slot)
            && let Some(r) = self.rollout.as_mut()
        {
            r.old.pop();
            r.pending = Some(Pending {
                new,
                old,
                deadline: Instant::now() + BOOT_TIMEOUT,
            });
        }
    }

    fn pending_id(&self) -> Option<u64> {
        self.rollout.as_ref().and_then(|r| r.pending.map(|p| p.new))
    }

    fn on_death(&mut self, pid: Pid, death: Death) {
        let Some(w) = self.table.remove_pid(pid) else {
            tracing::debug!(pid = pid.as_raw(), "reaped an unknown child");
            return;
        };
        let uptime = w.started.elapsed();
        if let Some(r) = w.record.and_then(|i| self.board.board().records.get(i)) {
            r.pid.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(serial) = w.closing_socket {
            // Dead, so its descriptor is closed too: the socket is out of the group.
            self.sockets.gone(serial);
        }
        if w.retiring.is_some() {
            tracing::info!(worker = w.id, slot = w.slot, pid = pid.as_raw(), cause = %death.describe(), "worker stopped");
            return;
        }
        if self.pending_id() == Some(w.id) {
            tracing::error!(
                worker = w.id,
                pid = pid.as_raw(),
                cause = %death.describe(),
                "replacement died before it was ready; reload aborted, old workers keep serving"
            );
            let delay = self.backoff.on_death(false, uptime);
            self.delay(delay);
            self.abort_rollout(&format!("a new worker {}", death.describe()));
            return;
        }
        let young = w
            .ready_at
            .is_none_or(|at| at.elapsed() < self.backoff.min_uptime);
        if young
            && self
                .rollout
                .as_ref()
                .is_some_and(|r| r.spawned.contains(&w.id))
        {
            tracing::error!(
                worker = w.id,
                pid = pid.as_raw(),
                cause = %death.describe(),
                "a new worker died right after it was ready; reload aborted, the workers not yet replaced keep serving, the slot gets the running configuration"
            );
            self.abort_rollout(&format!("a new worker {}", death.describe()));
        }
        if self.stopping.is_some() {
            tracing::info!(worker = w.id, pid = pid.as_raw(), cause = %death.describe(), "worker stopped");
            return;
        }
        match death.policy() {
            Policy::Halt => {
                tracing::error!(
                    worker = w.id,
                    pid = pid.as_raw(),
                    cause = %death.describe(),
                    "worker cannot run with this configuration; stopping clusterd instead of retrying"
                );
                self.halt = Some(MasterError::WorkerConfig { id: w.id });
                self.begin_stop(Stopping::Graceful);
            }
            Policy::Respawn => {
                self.restarts += 1;
                self.count_slot_restart(w.slot);
                let delay = self.backoff.on_death(w.ready, uptime);
                self.delay(delay);
                let next = if delay.is_zero() {
                    "respawning now".to_string()
                } else {
                    format!("respawning in {delay:?}")
                };
                tracing::warn!(
                    worker = w.id,
                    slot = w.slot,
                    pid = pid.as_raw(),
                    cause = %death.describe(),
                    uptime_ms = uptime.as_millis() as u64,
                    failures = self.backoff.failures(),
                    "worker died; {next}"
                );
            }
        }
    }

    // ---- waiting ------------------------------------------------------------------------

    /// The earliest moment the loop has something to do without an event.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + MAX_WAIT;
        let short = self.stopping.is_none()
            && (!self.table.empty_slots(self.target).is_empty()
                || self.rollout.as_ref().is_some_and(|r| r.pending.is_none()));
        if short {
            at = at.min(self.respawn_at);
        }
        if let Some(p) = self.rollout.as_ref().and_then(|r| r.pending) {
            at = at.min(p.deadline);
        }
        for r in self
            .table
            .workers
            .iter()
            .filter_map(|w| w.retiring.as_ref())
        {
            if !r.killed {
                at = at.min(r.kill_at);
            }
        }
        if let Some(every) = self.notifier.watchdog_interval() {
            at = at.min(now + every);
        }
        if let Some(c) = &self.check {
            at = at.min(c.deadline);
        }
        // Heartbeats and boot deadlines are looked at at least twice a second.
        at.min(now + HEARTBEAT_CHECK)
    }

    fn wait(&mut self) {
        let timeout = self
            .next_deadline()
            .saturating_duration_since(Instant::now());
        // Round up so we do not wake a hair before the deadline and spin.
        let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &self.control {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        for w in &self.table.workers {
            if let Some(p) = &w.pipe {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        // EINTR or a transient error: the loop simply goes round again.
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    fn read_ready_pipes(&mut self) {
        for w in &mut self.table.workers {
            let Some(pipe) = w.pipe.take() else { continue };
            let mut file = std::fs::File::from(pipe);
            let mut buf = [0u8; 64];
            let open = loop {
                match file.read(&mut buf) {
                    // EOF: the worker is gone (the reaper says why).
                    Ok(0) => break false,
                    Ok(n) => {
                        for &byte in &buf[..n] {
                            match byte {
                                message::READY => {
                                    w.ready = true;
                                    w.ready_at = Some(Instant::now());
                                    tracing::info!(
                                        worker = w.id,
                                        slot = w.slot,
                                        pid = w.pid.as_raw(),
                                        boot_ms = w.started.elapsed().as_millis() as u64,
                                        "worker ready"
                                    );
                                }
                                message::SOCKET_CLOSED => {
                                    if let Some(serial) = w.closing_socket.take() {
                                        self.sockets.gone(serial);
                                    }
                                }
                                message::UP => w.healthy = Some(true),
                                message::DOWN => w.healthy = Some(false),
                                _ => {}
                            }
                        }
                    }
                    // WouldBlock: nothing more for now.
                    Err(_) => break true,
                }
            };
            if open {
                w.pipe = Some(file.into());
            }
        }
        let ready = self.table.ready();
        let all = self.stopping.is_none() && ready >= self.target && self.rollout.is_none();
        if all && !self.all_ready {
            tracing::info!(workers = ready, "all workers ready");
            if !self.announced_ready {
                self.announced_ready = true;
                self.notifier.ready(&self.status_line());
            }
        }
        self.all_ready = all;
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        if let Some(c) = self.check.as_mut()
            && now >= c.deadline
        {
            // Reaped on a later turn; `on_check_done` then reports the upgrade as failed.
            let _ = kill(c.pid, Signal::SIGKILL);
            c.deadline = now + MAX_WAIT;
        }
        for w in &mut self.table.workers {
            if let Some(r) = &mut w.retiring
                && !r.killed
                && now >= r.kill_at
            {
                r.killed = true;
                tracing::warn!(
                    worker = w.id,
                    pid = w.pid.as_raw(),
                    signal = "SIGKILL",
                    "worker did not stop in time; killing it"
                );
                let _ = kill(w.pid, Signal::SIGKILL);
            }
        }
        if self.stopping.is_none() {
            self.find_hung_workers();
            self.sample_workers();
        }
        // Healthy means the loop turns (it does, we are here) and someone serves.
        if self.stopping.is_none() && self.table.ready() > 0 {
            self.notifier.ping(now);
        }
    }

    fn count_slot_restart(&mut self, slot: usize) {
        if self.slot_restarts.len() <= slot {
            self.slot_restarts.resize(slot + 1, 0);
        }
        self.slot_restarts[slot] += 1;
    }

    /// A ready worker whose oldest thread heartbeat is older than `--worker-timeout` is hung (a
    /// blocked runtime, a deadlock, SIGSTOP): SIGABRT for a backtrace in the journal, SIGKILL a
    /// second later (at once if it is stopped, when SIGABRT would wait), and a replacement in
    /// its slot now. A worker that was not ready within the boot timeout is killed the same way.
    fn find_hung_workers(&mut self) {
        let now_ms = crate::scoreboard::now_ms();
        let timeout = self.config.worker_timeout;
        let pending = self.pending_id();
        let mut hung = Vec::new();
        for w in self.table.live() {
            if w.ready {
                let age = w
                    .record
                    .and_then(|i| self.board.board().records.get(i))
                    .and_then(|r| r.heartbeat_age_ms(now_ms));
                if let Some(age) = age
                    && age > timeout.as_millis() as u64
                {
                    hung.push((
                        w.id,
                        format!(
                            "no heartbeat for {age} ms (--worker-timeout {}s)",
                            timeout.as_secs()
                        ),
                    ));
                }
            } else if Some(w.id) != pending && w.started.elapsed() > BOOT_TIMEOUT {
                hung.push((w.id, format!("not ready after {BOOT_TIMEOUT:?}")));
            }
        }
        for (id, why) in hung {
            let Some(w) = self.table.get(id) else {
                continue;
            };
            let (pid, slot, ready, uptime) = (w.pid, w.slot, w.ready, w.started.elapsed());
            let stopped = process_state(pid) == Some('T');
            let sig = if stopped || !ready {
                Signal::SIGKILL
            } else {
                Signal::SIGABRT
            };
            tracing::error!(
                worker = id,
                slot,
                pid = pid.as_raw(),
                signal = sig.as_str(),
                "worker hung: {why}; killing it and starting a replacement"
            );
            self.restarts += 1;
            self.count_slot_restart(slot);
            let delay = self.backoff.on_death(ready, uptime);
            self.delay(delay);
            self.retire(id, sig, ABORT_GRACE);
        }
    }

    /// Once a second: each worker's resident memory (for `status` and `--max-worker-memory`),
    /// and its request count against `--max-requests`. A worker over either is recycled: a
    /// replacement starts in its slot and it retires once that one serves.
    fn sample_workers(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.sampled_at.elapsed() < Duration::from_secs(1) && self.config.max_requests == 0 {
            return;
        }
        let sample_memory = self.sampled_at.elapsed() >= Duration::from_secs(1);
        if sample_memory {
            self.sampled_at = Instant::now();
        }
        let limit = self.config.max_worker_memory;
        let mut recycle = Vec::new();
        for w in self
            .table
            .workers
            .iter_mut()
            .filter(|w| w.retiring.is_none())
        {
            if sample_memory {
                w.rss = process::rss_bytes(w.pid.as_raw()).unwrap_or(0);
                if limit > 0 && w.rss > limit {
                    w.over_memory += 1;
                } else {
                    w.over_memory = 0;
                }
            }
            if !w.ready || w.recycling {
                continue;
            }
            let requests = w
                .record
                .and_then(|i| self.board.board().records.get(i))
                .map_or(0, |r| r.requests.load(Relaxed));
            if w.max_requests > 0 && requests >= w.max_requests {
                recycle.push((
                    w.id,
                    format!("it answered {requests} requests (--max-requests)"),
                ));
            } else if w.over_memory >= MEMORY_SAMPLES {
                recycle.push((w.id, format!("its resident memory was {} MiB for {MEMORY_SAMPLES} samples (--max-worker-memory {} MiB)", w.rss >> 20, limit >> 20)));
            }
        }
        for (id, why) in recycle {
            if let Some(w) = self.table.get_mut(id) {
                w.recycling = true;
                tracing::info!(
                    worker = id,
                    slot = w.slot,
                    pid = w.pid.as_raw(),
                    "recycling the worker: {why}"
                );
            }
            match self.rollout.as_mut() {
                Some(r) => {
                    if !r.old.contains(&id) && r.pending.is_none_or(|p| p.old != id) {
                        r.old.insert(0, id);
                    }
                }
                None => {
                    self.rollout = Some(Rollout {
                        old: vec![id],
                        pending: None,
                        config: self.config.clone(),
                        spawned: Vec::new(),
                        reload: false,
                    })
                }
            }
        }
    }

    fn serve_control(&mut self) {
        let Some(control) = self.control.take() else {
            return;
        };
        control.serve(|req| self.answer(req));
        self.control = Some(control);
    }

    fn answer(&mut self, req: Request) -> serde_json::Value {
        match req {
            Request::Status => self.status_document(),
            Request::Reload => {
                if self.stopping.is_some() {
                    return serde_json::json!({ "ok": false, "error": "stopping" });
                }
                tracing::info!("reload asked on the control socket");
                self.on_reload();
                serde_json::json!({ "ok": true, "reloading": true })
            }
            Request::Scale(n) => {
                let (min, max) = (self.min_workers, self.config.max_workers);
                if self.stopping.is_some() {
                    serde_json::json!({ "ok": false, "error": "stopping" })
                } else if n < min || n > max {
                    serde_json::json!({ "ok": false, "error": format!("{n} workers: choose from {min} to {max} (--max-workers)") })
                } else {
                    tracing::info!(
                        from = self.target,
                        to = n,
                        "scale asked on the control socket"
                    );
                    self.target = n;
                    serde_json::json!({ "ok": true, "workers": n })
                }
            }
        }
    }

    /// `clusterd status --json`.
    fn status_document(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let now_ms = crate::scoreboard::now_ms();
        let board = self.board.board();
        let workers: Vec<serde_json::Value> = self
            .table
            .workers
            .iter()
            .map(|w| {
                let r = w.record.and_then(|i| board.records.get(i));
                let state = match (&w.retiring, w.ready, w.recycling) {
                    (Some(_), _, _) => "stopping",
                    (None, false, _) => "booting",
                    (None, true, true) => "recycling",
                    (None, true, false) => "ready",
                };
                serde_json::json!({
                    "slot": w.slot,
                    "id": w.id,
                    "pid": w.pid.as_raw(),
                    "state": state,
                    "uptime_s": w.started.elapsed().as_secs(),
                    "restarts": self.slot_restarts.get(w.slot).copied().unwrap_or(0),
                    "connections": r.map(|r| r.connections.load(Relaxed)),
                    "requests": r.map(|r| r.requests.load(Relaxed)),
                    "rss_bytes": process::rss_bytes(w.pid.as_raw()),
                    "heartbeat_age_ms": r.and_then(|r| r.heartbeat_age_ms(now_ms)),
                    "store": w.healthy.map(|h| if h { "up" } else { "down" }),
                })
            })
            .collect();
        let health: Vec<bool> = self.table.live().filter_map(|w| w.healthy).collect();
        serde_json::json!({
            "master": {
                "pid": self.pid.as_raw(),
                "uptime_s": self.started.elapsed().as_secs(),
                "workers": self.table.ready(),
                "target": self.target,
                "max_workers": self.config.max_workers,
                "restarts": self.restarts,
                "reloading": self.rollout.as_ref().is_some_and(|r| r.reload),
                "status": self.status_line(),
                "version": env!("CARGO_PKG_VERSION"),
            },
            "store": {
                "kind": self.health_label.as_deref().map(|l| l.trim_start_matches("store ")),
                "up": health.iter().filter(|h| **h).count(),
                "down": health.iter().filter(|h| !**h).count(),
            },
            "workers": workers,
        })
    }

    fn status_line(&self) -> String {
        Snapshot {
            ready: self.table.ready(),
            target: self.target,
            restarts: self.restarts,
            reloading: self.rollout.is_some(),
            health: self.table.live().filter_map(|w| w.healthy).collect(),
            label: self.health_label.as_deref(),
            note: self.reload_error.as_deref(),
        }
        .line()
    }

    fn update_status(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let header = self.board.board().header;
        header.restarts.store(self.restarts, Relaxed);
        header.ready.store(self.table.ready() as u64, Relaxed);
        header.target.store(self.target as u64, Relaxed);
        header
            .reloading
            .store(u64::from(self.rollout.is_some()), Relaxed);
        if self.stopping.is_none() {
            let line = self.status_line();
            self.notifier.status(&line);
        }
    }
}

/// A process's state letter (R, S, T, ...), from /proc/PID/stat.
fn process_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// `now` minus `ms`, or `now` if that is before the clock's start.
fn ago_from(now: Instant, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

/// The exit code `main` should use for a master error.
pub fn exit_code_for(err: &MasterError) -> i32 {
    match err {
        MasterError::WorkerConfig { .. } => exit_code::CONFIG_INVALID,
        _ => exit_code::FAILURE,
    }
}
