//! Carrying out the decisions: fork, kill, close a slot, notify, run the upgrade's check,
//! `execve`, and feeding each outcome back to the cluster. Runs in the master, at the edge.
//! Forks, signals to workers and the `execve` happen only here.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, pipe2};

use super::clock::Ms;
use super::event::{Action, Command, Notify, Spawn};
use super::table::WorkerPhase;
use super::upgrade::{self, Check};
use super::{Master, Reloaded, observe, report};
use crate::process::{self, ProcessError};
use crate::scoreboard::Scoreboard;
use crate::worker::{self, WorkerApp, WorkerSpec};

impl<A: WorkerApp> Master<A> {
    /// Carries out `actions`, and what their outcomes lead to, in order.
    pub(super) fn apply(&mut self, actions: Vec<Action>, now: Ms) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let mut more = Vec::new();
            match action {
                // A stop or a failed fork earlier in this queue: this fork is not wanted now.
                Action::Spawn(spawn) if self.cluster.stopping() => {
                    self.cluster.table.remove(spawn.id);
                }
                Action::Spawn(spawn) => self.spawn(*spawn, now, &mut more),
                // Only to a worker still in the table: never to a pid reaped meanwhile.
                Action::Signal { id, pid, .. } | Action::CloseSlot { id, pid, .. }
                    if self.cluster.table.get(id).is_none_or(|w| w.pid != pid) =>
                {
                    tracing::debug!(worker = id, pid, "not signalling a worker already reaped");
                }
                Action::Signal { id, pid, sig } => signal(id, pid, sig),
                Action::CloseSlot { id, pid, slot } => {
                    // The master closes its copy first; the worker, then the socket's last
                    // holder, is told with SIGUSR1 to shut it while still accepting (see
                    // `worker/`). Where the socket stays (shared, from systemd): SIGTERM.
                    let serial = self.sockets.close_slot(slot);
                    self.cluster.closing_socket(id, serial);
                    let sig = if serial.is_some() {
                        Signal::SIGUSR1
                    } else {
                        Signal::SIGTERM
                    };
                    signal(id, pid, sig);
                }
                Action::SocketGone(serial) => self.sockets.gone(serial),
                Action::Release(record) => {
                    if let Some(r) = self.board.board().records.get(record) {
                        r.pid.store(0, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Action::DropPipe(id) => self.pipes.remove(id),
                Action::Notify(Notify::Ready(line)) => self.notifier.ready(&line),
                Action::Notify(Notify::Reloading) => self.notifier.reloading(),
                Action::Notify(Notify::Stopping) => self.notifier.stopping(),
                Action::Reload if self.cluster.stopping() => {}
                Action::Reload => self.reload(now, &mut more),
                Action::KillCheck => {
                    if let Some(c) = &self.check {
                        let _ = kill(c.pid, Signal::SIGKILL);
                    }
                }
            }
            queue.extend(more);
        }
    }

    /// Forks one worker with the settings the decision chose.
    fn spawn(&mut self, s: Spawn, now: Ms, out: &mut Vec<Action>) {
        let listener = match self.sockets.for_slot(s.slot) {
            Ok(fd) => fd,
            Err(e) => {
                let why = format!("opening the slot's socket: {e}");
                return self.cluster.spawn_failed(s.id, &why, None, now, out);
            }
        };
        let (read, write) = match pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok(p) => p,
            Err(e) => {
                let why = format!("creating a readiness pipe: {e}");
                return self.cluster.spawn_failed(s.id, &why, None, now, out);
            }
        };
        self.board.board().records[s.record].reset(s.id, s.slot);
        self.counters.fold(s.record);
        let app = self.app_for(self.cluster.forking_config().1);
        let max_requests = match (s.config.max_requests, s.config.max_requests_jitter) {
            (0, _) => 0,
            (n, 0) => n,
            (n, j) => n + rand::random_range(0..=j),
        };
        let spec = WorkerSpec {
            id: s.id,
            slot: s.slot,
            app: &self.apps[&app],
            listener,
            ready: write,
            master: nix::unistd::getpid(),
            threads: s.config.threads,
            graceful_timeout: s.config.graceful_timeout,
            read_timeout: s.config.read_timeout,
            credentials: self.credentials,
            board: self.board.board(),
            counters: self.counters.board(),
            record: s.record,
            metrics: self.metrics.as_ref().map(AsRawFd::as_raw_fd),
            metrics_hosts: s.config.metrics_allowed_hosts.clone(),
            trusted_proxies: s.config.trusted_proxies.clone(),
            proxy_protocol: s.config.proxy_protocol,
            health_path: s.config.health_path.clone(),
            access_log: s.config.access_log,
        };
        // The closure (and the pipe's write end in it) is dropped in the master when `spawn`
        // returns, so the master holds only the read end.
        match process::spawn(|| worker::run(spec)) {
            Ok(pid) => {
                self.pipes.insert(s.id, read);
                self.cluster.spawned(s.id, pid.as_raw(), max_requests);
            }
            Err(ProcessError::Threaded(n)) => {
                self.cluster
                    .spawn_failed(s.id, "the master has threads", Some(n), now, out)
            }
            Err(e) => self
                .cluster
                .spawn_failed(s.id, &e.to_string(), None, now, out),
        }
    }

    /// A reload the cluster accepted: the new binary's check if a deploy replaced it, else the
    /// configuration re-read.
    fn reload(&mut self, now: Ms, out: &mut Vec<Action>) {
        if let Some(binary) = self.binary.as_ref().filter(|b| b.replaced()) {
            // The new binary reads the configuration itself once it runs.
            let started = upgrade::open_trusted(&binary.path).and_then(|image| {
                Check::start(binary, image)
                    .map_err(|e| format!("cannot run {}: {e}", binary.path.display()))
            });
            match started {
                Ok(check) => {
                    tracing::info!(binary = %binary.path.display(), "SIGHUP: the binary was replaced; checking the new one before re-executing it");
                    self.cluster.check_started(check.pid.as_raw(), now);
                    self.check = Some(check);
                }
                Err(why) => self.cluster.upgrade_failed(&why, out),
            }
            return;
        }
        let (new, app) = match self.reload.as_mut().map(|reload| reload()) {
            Some(Ok((new, app))) => (Ok(new), app),
            Some(Err(e)) => (Err(e), None),
            None => (
                Ok(Reloaded {
                    cluster: self.cluster.forking_config().0.clone(),
                    needs_restart: Vec::new(),
                }),
                None,
            ),
        };
        let before = self.cluster.generations;
        self.cluster.reloaded(new, out);
        if let Some(app) = app
            && self.cluster.generations > before
        {
            // systemd's status line names what the new workers report on.
            self.cluster.label = app.health_label();
            self.apps.insert(self.cluster.generations, app);
        }
    }

    /// The app a worker of `generation` (the one being forked) is forked with: the newest at
    /// or under it. Only that one and the running workers' (a rollout may still abort back to
    /// it) are kept: apps above it belong to rollouts that aborted, apps between the two to
    /// rollouts a newer one replaced.
    fn app_for(&mut self, generation: u64) -> u64 {
        self.apps.split_off(&(generation + 1));
        let newest = *self
            .apps
            .keys()
            .next_back()
            .expect("the app the master started with is kept");
        let running = self
            .apps
            .range(..=self.cluster.generation)
            .next_back()
            .map_or(newest, |(g, _)| *g);
        self.apps.retain(|g, _| *g == running || *g == newest);
        newest
    }

    /// Answers the control clients whose request is complete.
    pub(super) fn serve_control(&mut self, now: Ms, out: &mut Vec<Action>) {
        let Some(mut control) = self.control.take() else {
            return;
        };
        for (client, asked) in control.read(now) {
            let reply = match asked {
                Ok(Command::Status) => {
                    let sockets = &self.sockets;
                    let queue = |slot| sockets.queue(slot);
                    let seen =
                        observe::observe(&self.cluster.table, self.board.board(), queue, now);
                    let counters = crate::counter::totals(self.counters.board());
                    let pid = std::process::id() as i32;
                    report::document(&self.cluster, &seen, &counters, pid, now)
                }
                Ok(Command::Reload) => {
                    tracing::info!("reload asked on the control socket");
                    self.cluster.command(Command::Reload, now, out)
                }
                Ok(cmd) => self.cluster.command(cmd, now, out),
                Err(e) => serde_json::json!({ "ok": false, "error": e }),
            };
            control.answer(client, &reply);
        }
        control.flush();
        self.control = Some(control);
    }

    /// Every child that ended: the upgrade's check, or a worker.
    pub(super) fn reap(&mut self, now: Ms, out: &mut Vec<Action>) {
        for (pid, death) in process::reap() {
            if self.check.as_ref().is_some_and(|c| c.pid == pid) {
                if let Some((said, image)) = self.check.take().map(Check::finish) {
                    self.image = Some(image);
                    self.cluster.check_done(death, &said, out);
                }
            } else {
                self.cluster.death(pid.as_raw(), death, now, out);
            }
        }
    }

    /// Hands everything over to the new binary with `execve`. Returns only if that failed.
    pub(super) fn exec(&mut self, now: Ms) {
        let (Some(binary), Some(image)) = (self.binary.clone(), self.image.take()) else {
            return;
        };
        let mut state = upgrade::State::new(
            self.sockets.export(),
            self.cluster.export(),
            self.pipes.raw(),
        );
        state.board_fd = Some(self.board.fd());
        self.counters.mark_layout();
        state.counters_fd = Some(self.counters.fd());
        state.table_fd = self.fdstore.as_ref().map(crate::socket::FdStore::table_fd);
        state.metrics_fd = self.metrics.as_ref().map(AsRawFd::as_raw_fd);
        state.image_fd = Some(image.as_raw_fd());
        // The control socket is close-on-exec: the new image binds its path anew.
        tracing::info!(binary = %binary.path.display(), "re-executing the master from the new binary");
        let e = upgrade::exec(&binary, &image, &state);
        let mut out = Vec::new();
        let why = format!("executing {}: {e}", binary.path.display());
        self.cluster.upgrade_failed(&why, &mut out);
        self.apply(out, now);
    }

    /// Takes over the workers of the previous image of this process (an upgrade) and starts
    /// replacing them, one slot at a time, with workers of this binary. The socket table came
    /// through [`Master::new`] already. A pid that is not our child is dropped: it was never
    /// ours, or it was reaped and its number reused.
    pub fn adopt(mut self, mut state: upgrade::State) -> Self {
        let mut board_kept = false;
        if let Some(fd) = state.board_fd {
            match Scoreboard::adopt(fd) {
                Ok(board) => {
                    self.board = board;
                    board_kept = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the previous scoreboard is lost; the adopted workers go unobserved until replaced")
                }
            }
        }
        // What the app counted lives on, if its slab has a row per record of the board kept
        // and its indices mean the counters this image registered; else the counts start over.
        let records = self.board.board().records.len();
        let adopted = match state.counters_fd.map(crate::counter::Slab::adopt) {
            Some(Ok(slab))
                if board_kept && slab.board().rows() == records && slab.same_layout() =>
            {
                Some(slab)
            }
            Some(Ok(_)) => {
                tracing::warn!("the app's counters changed; their totals start again from zero");
                None
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the previous app counters are lost");
                None
            }
            None => None,
        };
        match adopted {
            Some(slab) => self.counters = slab,
            None if self.counters.board().rows() != records => {
                match crate::counter::Slab::create(records) {
                    Ok(slab) => self.counters = slab,
                    Err(e) => tracing::warn!(error = %e, "no app counters for the adopted board"),
                }
            }
            None => {}
        }
        // The descriptor this image was executed from: nothing more to do with it.
        drop(state.image_fd.and_then(crate::fd::adopt));
        if let Some(fd) = state.metrics_fd {
            match crate::fd::adopt(fd) {
                Some(fd) => self.metrics = Some(std::net::TcpListener::from(fd)),
                None => tracing::warn!("the inherited metrics socket is gone"),
            }
        }
        let me = std::process::id() as i32;
        let board = self.board.board();
        state.cluster.workers.retain(|w| {
            let ours = observe::parent(w.pid) == Some(me);
            if !ours {
                if let Some(r) = w
                    .record
                    .and_then(|i| board.records.get(i))
                    .filter(|_| board_kept)
                {
                    r.pid.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::warn!(
                    worker = w.id,
                    pid = w.pid,
                    "the previous image's worker is not a child of this process; dropping it"
                );
            }
            ours
        });
        for (id, fd) in state.pipes {
            let fd = crate::fd::adopt(fd);
            if let Some(fd) = fd
                && state.cluster.workers.iter().any(|w| w.id == id)
            {
                self.pipes.insert(id, fd);
            }
        }
        let mut holding = Vec::new();
        for w in &mut state.cluster.workers {
            if !board_kept {
                w.record = None;
            }
            if let WorkerPhase::Stopping {
                closing: Some(serial),
                ..
            } = w.phase
            {
                holding.push(serial);
            }
        }
        // A retired slot's socket whose worker was reaped while the images changed hands.
        self.sockets.forget_closing(&holding);
        self.cluster.capacity = self.board.board().records.len();
        self.cluster.adopt(state.cluster);
        self.upgraded = true;
        self
    }
}

/// Sends `sig` to worker `id`; a worker already gone is only logged.
fn signal(id: u64, pid: i32, sig: Signal) {
    if pid <= 0 {
        return;
    }
    if let Err(e) = kill(Pid::from_raw(pid), sig) {
        tracing::warn!(worker = id, pid, error = %e, "could not signal worker");
    }
}
