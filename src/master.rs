//! The master loop. Runs only in the master: one thread, no runtime.
//!
//! Each turn reads like a checklist (after gunicorn's arbiter and nginx's master cycle):
//! 1. fork whatever is missing (initial workers, replacements after the crash-loop delay, the
//!    next step of a rolling restart);
//! 2. wait, at most until the next deadline, for a signal or a worker's readiness byte;
//! 3. handle each signal as a [`MasterEvent`];
//! 4. note which workers became ready;
//! 5. reap every dead child and decide what its death means;
//! 6. enforce deadlines: a stopping worker that overstays its graceful timeout gets SIGKILL.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, pipe2};

use crate::config::ClusterConfig;
use crate::process::{self, Death, Policy, ProcessError, exit_code};
use crate::signals::{MasterEvent, Signals};
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

/// Crash-loop protection: exponential delay for workers that die young, reset by one that
/// lived long enough.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// A worker that dies before being ready or before this uptime counts as a failure.
    pub min_uptime: Duration,
    /// Delay after the first failure; doubles after each further one.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_uptime: Duration::from_secs(1),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            failures: 0,
        }
    }
}

impl Backoff {
    /// Records a death and returns how long to wait before the next fork.
    pub fn on_death(&mut self, was_ready: bool, uptime: Duration) -> Duration {
        if was_ready && uptime >= self.min_uptime {
            self.failures = 0;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32.checked_shl(self.failures - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Consecutive early deaths so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// How long a new worker may take to report ready before a rolling restart gives up on it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers get after SIGQUIT before SIGKILL.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time past the graceful timeout before SIGKILL, for the worker's own forced close.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// The longest the loop sleeps with nothing to do, so it stays observable (watchdog, status).
const MAX_WAIT: Duration = Duration::from_secs(1);

struct Worker {
    id: u64,
    pid: Pid,
    started: Instant,
    /// Read end of the worker's pipe (readiness and health messages) until EOF.
    pipe: Option<OwnedFd>,
    /// Last health the worker reported, if it reports any.
    healthy: Option<bool>,
    ready: bool,
    /// Set when the master asked it to stop: its death is then expected.
    retiring: Option<Retiring>,
}

struct Retiring {
    kill_at: Instant,
    killed: bool,
}

struct Rollout {
    /// Workers of the old configuration still to be replaced.
    old: Vec<u64>,
    /// The replacement currently booting, and when it must be ready.
    pending: Option<(u64, Instant)>,
}

#[derive(Clone, Copy)]
enum Stopping {
    Graceful,
    Fast,
}

/// The master: owns the socket, the worker table, the signals and the restart policy.
pub struct Master<A: WorkerApp> {
    app: A,
    config: ClusterConfig,
    reload: Option<ReloadFn>,
    listener: TcpListener,
    credentials: Option<(Uid, Gid)>,
    signals: Signals,
    notifier: Notifier,
    pid: Pid,
    workers: Vec<Worker>,
    next_id: u64,
    target: usize,
    backoff: Backoff,
    respawn_at: Instant,
    rollout: Option<Rollout>,
    stopping: Option<Stopping>,
    halt: Option<MasterError>,
    restarts: u64,
    all_ready: bool,
    announced_ready: bool,
    health_label: Option<String>,
}

impl<A: WorkerApp> Master<A> {
    /// Prepares a master for `app` on `listener`. Installs the signalfd, so call it in the
    /// process that will fork, before any thread exists.
    pub fn new(app: A, config: ClusterConfig, listener: TcpListener) -> Result<Self, MasterError> {
        let signals = Signals::install().map_err(|source| MasterError::Os {
            op: "installing the signalfd",
            source,
        })?;
        Ok(Master {
            app,
            target: config.workers,
            config,
            reload: None,
            listener,
            credentials: None,
            signals,
            notifier: Notifier::from_env(),
            pid: nix::unistd::getpid(),
            workers: Vec::new(),
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
        })
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
        let addr = self
            .listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        // Short, so it fits in the original command line (`/usr/local/bin/clusterd`).
        crate::title::set("clusterd: master", "clusterd-master");
        tracing::info!(
            pid = self.pid.as_raw(),
            addr = %addr,
            workers = self.target,
            threads = self.config.threads,
            "master started"
        );
        loop {
            self.spawn_missing();
            self.advance_rollout();
            self.update_status();
            if self.stopping.is_some() && self.workers.is_empty() {
                break;
            }
            self.wait();
            for event in self.signals.drain() {
                self.handle(event);
            }
            self.read_ready_pipes();
            for (pid, death) in process::reap() {
                self.on_death(pid, death);
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
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.retire(id, sig, grace);
        }
    }

    fn on_reload(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(reload) = self.reload.as_mut() {
            match reload() {
                Ok(new) => {
                    for name in &new.needs_restart {
                        tracing::warn!(
                            setting = name,
                            "changed in the config, takes effect after a full restart"
                        );
                    }
                    if new.cluster.workers != self.config.workers {
                        tracing::info!(
                            from = self.target,
                            to = new.cluster.workers,
                            "worker count changed"
                        );
                        self.target = new.cluster.workers;
                    }
                    let keep = (
                        self.config.bind,
                        self.config.backlog,
                        self.config.user.clone(),
                        self.config.group.clone(),
                    );
                    self.config = ClusterConfig {
                        bind: keep.0,
                        backlog: keep.1,
                        user: keep.2,
                        group: keep.3,
                        ..new.cluster
                    };
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; keeping the running configuration and workers");
                    return;
                }
            }
        }
        let old: Vec<u64> = self.live().map(|w| w.id).collect();
        tracing::info!(
            workers = old.len(),
            "reload: replacing workers one at a time"
        );
        self.notifier.reloading();
        self.rollout = Some(Rollout { old, pending: None });
    }

    fn on_ttin(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.target += 1;
        tracing::info!(workers = self.target, "SIGTTIN: one worker more");
    }

    fn on_ttou(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.target <= 1 {
            tracing::info!("SIGTTOU: already at one worker, keeping it");
            return;
        }
        self.target -= 1;
        tracing::info!(workers = self.target, "SIGTTOU: one worker fewer");
    }

    // ---- workers ------------------------------------------------------------------------

    /// Workers that are not being stopped.
    fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.retiring.is_none())
    }

    fn pending_id(&self) -> Option<u64> {
        self.rollout
            .as_ref()
            .and_then(|r| r.pending.map(|(id, _)| id))
    }

    /// Keeps the number of live workers at the target: forks replacements (not before the
    /// crash-loop delay) and retires the oldest when there are too many.
    fn spawn_missing(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let extra = usize::from(self.pending_id().is_some());
        let mut live = self.live().count() - extra;
        while live < self.target && Instant::now() >= self.respawn_at {
            if self.spawn().is_none() {
                break;
            }
            live += 1;
        }
        if self.rollout.is_none() && live > self.target {
            let surplus: Vec<u64> = self.live().map(|w| w.id).take(live - self.target).collect();
            for id in surplus {
                tracing::info!(worker = id, "retiring a surplus worker");
                self.retire(
                    id,
                    Signal::SIGTERM,
                    self.config.graceful_timeout + KILL_MARGIN,
                );
            }
        }
    }

    /// Forks one worker. On failure logs, applies the back-off and returns `None`.
    fn spawn(&mut self) -> Option<u64> {
        let id = self.next_id;
        let (read, write) = match pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "creating a readiness pipe failed; retrying after a delay");
                let delay = self.backoff.on_death(false, Duration::ZERO);
                self.delay(delay);
                return None;
            }
        };
        let spec = WorkerSpec {
            id,
            app: &self.app,
            listener: &self.listener,
            ready: write,
            master: self.pid,
            threads: self.config.threads,
            graceful_timeout: self.config.graceful_timeout,
            credentials: self.credentials,
        };
        // The closure (and the pipe's write end in it) is dropped in the master when `spawn`
        // returns, so the master holds only the read end.
        match process::spawn(|| worker::run(spec)) {
            Ok(pid) => {
                self.next_id += 1;
                tracing::info!(worker = id, pid = pid.as_raw(), "worker started");
                self.workers.push(Worker {
                    id,
                    pid,
                    started: Instant::now(),
                    pipe: Some(read),
                    healthy: None,
                    ready: false,
                    retiring: None,
                });
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

    /// Asks a worker to stop with `sig`, and schedules SIGKILL after `grace`.
    fn retire(&mut self, id: u64, sig: Signal, grace: Duration) {
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
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

    /// Moves a rolling restart forward: once the replacement is ready, retire one old worker
    /// and fork the next replacement; give up (keeping the old workers) if a replacement does
    /// not become ready in time.
    fn advance_rollout(&mut self) {
        let Some(mut rollout) = self.rollout.take() else {
            return;
        };
        if let Some((id, deadline)) = rollout.pending {
            match self.workers.iter().find(|w| w.id == id) {
                Some(w) if w.ready => {
                    rollout.pending = None;
                    rollout.old.retain(|old| self.live().any(|w| w.id == *old));
                    if let Some(old) = rollout.old.pop() {
                        tracing::info!(worker = old, replaced_by = id, "retiring the old worker");
                        self.retire(
                            old,
                            Signal::SIGTERM,
                            self.config.graceful_timeout + KILL_MARGIN,
                        );
                    }
                }
                Some(_) if Instant::now() >= deadline => {
                    tracing::error!(
                        worker = id,
                        "replacement not ready after {BOOT_TIMEOUT:?}; reload aborted, old workers keep serving"
                    );
                    self.retire(id, Signal::SIGKILL, Duration::ZERO);
                    self.notifier.ready(&self.status_line());
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
        rollout.old.retain(|old| self.live().any(|w| w.id == *old));
        if rollout.old.is_empty() {
            tracing::info!("reload complete: every worker replaced");
            self.notifier.ready(&self.status_line());
            return;
        }
        if Instant::now() >= self.respawn_at {
            // Set before forking so that `spawn_missing` does not count the replacement as a
            // worker of the target.
            self.rollout = Some(rollout);
            if let Some(id) = self.spawn()
                && let Some(r) = self.rollout.as_mut()
            {
                r.pending = Some((id, Instant::now() + BOOT_TIMEOUT));
            }
            return;
        }
        self.rollout = Some(rollout);
    }

    fn on_death(&mut self, pid: Pid, death: Death) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            tracing::debug!(pid = pid.as_raw(), "reaped an unknown child");
            return;
        };
        let w = self.workers.remove(index);
        let uptime = w.started.elapsed();
        if w.retiring.is_some() {
            tracing::info!(worker = w.id, pid = pid.as_raw(), cause = %death.describe(), "worker stopped");
            return;
        }
        if self.pending_id() == Some(w.id) {
            tracing::error!(
                worker = w.id,
                pid = pid.as_raw(),
                cause = %death.describe(),
                "replacement died before it was ready; reload aborted, old workers keep serving"
            );
            self.rollout = None;
            let delay = self.backoff.on_death(false, uptime);
            self.delay(delay);
            self.notifier.ready(&self.status_line());
            return;
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
                let delay = self.backoff.on_death(w.ready, uptime);
                self.delay(delay);
                let next = if delay.is_zero() {
                    "respawning now".to_string()
                } else {
                    format!("respawning in {delay:?}")
                };
                tracing::warn!(
                    worker = w.id,
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
            && (self.live().count() < self.target + usize::from(self.pending_id().is_some())
                || self.rollout.as_ref().is_some_and(|r| r.pending.is_none()));
        if short {
            at = at.min(self.respawn_at);
        }
        if let Some((_, deadline)) = self.rollout.as_ref().and_then(|r| r.pending) {
            at = at.min(deadline);
        }
        for r in self.workers.iter().filter_map(|w| w.retiring.as_ref()) {
            if !r.killed {
                at = at.min(r.kill_at);
            }
        }
        if let Some(every) = self.notifier.watchdog_interval() {
            at = at.min(now + every);
        }
        at
    }

    fn wait(&mut self) {
        let timeout = self
            .next_deadline()
            .saturating_duration_since(Instant::now());
        // Round up so we do not wake a hair before the deadline and spin.
        let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for w in &self.workers {
            if let Some(p) = &w.pipe {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        // EINTR or a transient error: the loop simply goes round again.
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    fn read_ready_pipes(&mut self) {
        for w in &mut self.workers {
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
                                    tracing::info!(
                                        worker = w.id,
                                        pid = w.pid.as_raw(),
                                        boot_ms = w.started.elapsed().as_millis() as u64,
                                        "worker ready"
                                    );
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
        let ready = self.live().filter(|w| w.ready).count();
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
        for w in &mut self.workers {
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
        // Healthy means the loop turns (it does, we are here) and someone serves.
        if self.stopping.is_none() && self.live().any(|w| w.ready) {
            self.notifier.ping(now);
        }
    }

    fn status_line(&self) -> String {
        let ready = self.live().filter(|w| w.ready).count();
        let mut s = format!(
            "{ready}/{} workers ready, {} restarts",
            self.target, self.restarts
        );
        if self.rollout.is_some() {
            s.push_str(", reloading");
        }
        let reports: Vec<bool> = self.live().filter_map(|w| w.healthy).collect();
        let label = self.health_label.as_deref().unwrap_or("app");
        if !reports.is_empty() {
            let down = reports.iter().filter(|ok| !**ok).count();
            if down == 0 {
                s.push_str(&format!(", {label} ok"));
            } else {
                s.push_str(&format!(
                    ", {label} down on {down}/{} workers",
                    reports.len()
                ));
            }
        } else if self.health_label.is_some() {
            s.push_str(&format!(", {label}"));
        }
        s
    }

    fn update_status(&mut self) {
        if self.stopping.is_none() {
            let line = self.status_line();
            self.notifier.status(&line);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_stable_uptime() {
        let mut b = Backoff::default();
        let young = Duration::from_millis(10);
        assert_eq!(b.on_death(true, young), Duration::from_millis(100));
        assert_eq!(b.on_death(true, young), Duration::from_millis(200));
        assert_eq!(
            b.on_death(false, Duration::from_secs(5)),
            Duration::from_millis(400)
        );
        for _ in 0..20 {
            b.on_death(false, young);
        }
        assert_eq!(b.on_death(false, young), Duration::from_secs(10));
        assert_eq!(b.on_death(true, Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.on_death(true, young), Duration::from_millis(100));
    }

    #[test]
    fn a_stable_worker_is_replaced_at_once() {
        let mut b = Backoff::default();
        assert_eq!(b.on_death(true, Duration::from_secs(60)), Duration::ZERO);
    }
}
