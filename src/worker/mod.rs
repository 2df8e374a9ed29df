//! The worker: what a forked child does, from post-fork hygiene to `exit`. Runs only in workers.
//!
//! Order matters and follows the fork rules in ARCHITECTURE.md: first undo what was inherited (signal
//! mask, master-only descriptors, the RNG state), then drop privileges, then arm the
//! parent-death signal (a credential change clears it), and only then build the runtime, the
//! app's state (Redis connections and the like) and the HTTP server on the inherited socket.

//!
//! The parts: `link.rs` (the pipe to the master), `serve.rs` (the HTTP server and its stop),
//! `layer.rs` (the middleware every request passes: counters, heartbeats, deadlines).

mod access;
mod client;
mod inflight;
mod layer;
mod link;
mod proxy;
mod serve;
mod watch;

pub use self::client::{ClientAddr, client_addr};
use self::layer::Timeouts;
pub use self::link::MasterLink;
pub(crate) use self::link::message;
use self::serve::{StopSignals, serve};

use std::future::Future;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::web;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::{Gid, Pid, Uid};

use crate::process::exit_code;
use crate::{signals, title};

/// What a worker knows about itself; handed to the app.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker's id: 1, 2, 3, ... in fork order, never reused (like Node's `worker.id`).
    pub id: u64,
    /// Its slot: 0, 1, ... A replacement takes the slot (and the socket) of the worker it
    /// replaces.
    pub slot: usize,
    /// The worker's process id.
    pub pid: u32,
    /// The line to the master, for health reports.
    pub link: MasterLink,
    /// Request-handling threads in this worker (`--threads`).
    pub threads: usize,
}

/// Why an app could not start in a worker. The variant picks the exit code, and so what the
/// master does next.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// May pass on its own (a dependency not up yet): the master retries with back-off.
    #[error("{0}")]
    Transient(String),
    /// Cannot pass without an operator (bad configuration): the master stops the service.
    #[error("{0}")]
    Config(String),
}

/// An actix-web application that clusterd runs in every worker.
///
/// `init` runs once per worker process, after `fork`, inside the worker's runtime: create
/// connections and other per-process state there, never in the master. `configure` runs once per
/// server thread with a clone of that state and registers the routes.
pub trait WorkerApp: Send + Sync + 'static {
    /// Per-process state shared by the worker's threads (cheap to clone: use `Arc`s inside).
    type State: Clone + Send + 'static;

    /// Builds the per-process state.
    fn init(&self, worker: &WorkerInfo) -> impl Future<Output = Result<Self::State, BootError>>;

    /// Registers routes, default service and app data.
    fn configure(state: &Self::State, cfg: &mut web::ServiceConfig);

    /// What the health route (`--health-path`, `/healthz` by default) says about the app
    /// beside the worker's pid and id. Called on every health request: read flags, do not
    /// wait on I/O. By default: `ok`.
    fn health(state: &Self::State) -> Health {
        let _ = state;
        Health::default()
    }

    /// What the workers' health reports ([`MasterLink::report_health`]) are about, e.g.
    /// "store redis": systemd's status line then says "store redis ok". None by default.
    fn health_label(&self) -> Option<String> {
        None
    }
}

/// The app's part of a health answer.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Something the app needs is down but it still serves (`"status":"degraded"`).
    pub degraded: bool,
    /// More fields of the answer (e.g. `{"store": {...}}`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Everything the master prepared for one child before forking it.
pub(crate) struct WorkerSpec<'a, A> {
    pub id: u64,
    pub slot: usize,
    pub app: &'a A,
    /// The slot's listening socket: a descriptor of the master's, which the child takes over.
    pub listener: RawFd,
    /// Write end of this worker's pipe to the master (readiness, health); the master reads.
    pub ready: OwnedFd,
    pub master: Pid,
    pub threads: usize,
    pub graceful_timeout: Duration,
    /// How long a client may take to send a whole request.
    pub read_timeout: Duration,
    /// Resolved `--user` / `--group`, when the master runs as root.
    pub credentials: Option<(Uid, Gid)>,
    /// The scoreboard and this worker's record on it.
    pub board: crate::scoreboard::Board,
    pub record: usize,
    /// The app counters, whose row `record` is this worker's.
    pub counters: crate::counter::Board,
    /// The metrics socket (`--metrics-bind`), shared by every worker.
    pub metrics: Option<RawFd>,
    /// Host names the metrics server answers to besides its address and `localhost`.
    pub metrics_hosts: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The health route's path, if any.
    pub health_path: Option<String>,
    /// A line per request in the log.
    pub access_log: bool,
}

/// How the worker was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// TERM or HUP from the master (or an operator): finish in-flight requests. The slot's
    /// socket stays open (the master holds it; a replacement may accept on it already).
    Graceful,
    /// USR1 from the master: like `Graceful`, but the slot goes away and this worker holds the
    /// last descriptor of its socket.
    Retire,
    /// QUIT: close everything now.
    Fast,
    /// The master died: stop accepting and leave quickly, whatever is in flight.
    Orphaned,
}

/// How long an orphaned worker lets in-flight requests run before it exits anyway.
const ORPHAN_GRACE: Duration = Duration::from_millis(1000);

/// The child side of `fork`. Returns the exit code; `process::spawn` exits with it.
pub(crate) fn run<A: WorkerApp>(spec: WorkerSpec<'_, A>) -> i32 {
    let pid = std::process::id();
    crate::log::set_role(format!("worker {} pid {pid}", spec.id));
    // Before any log line: the master's events are the master's to record.
    crate::history::in_worker();
    match hygiene(&spec) {
        Ok(()) => {}
        // Retrying cannot make a user switch work: tell the master to stop, not to respawn.
        Err(BootError::Config(e)) => {
            tracing::error!(error = %e, "post-fork setup failed; the configuration cannot work");
            return exit_code::CONFIG_INVALID;
        }
        Err(BootError::Transient(e)) => {
            tracing::error!(error = %e, "post-fork setup failed; exiting");
            return exit_code::BOOT_FAILED;
        }
    }
    large_allocations_go_back_to_the_os();
    title::set(
        &format!("clusterd: worker {}", spec.id),
        &format!("clusterd-w{}", spec.id),
    );
    #[cfg(debug_assertions)]
    if let Some(code) = test_hooks::boot_exit_code() {
        tracing::warn!(code, "test hook: exiting at boot (debug builds only)");
        return code;
    }
    #[cfg(debug_assertions)]
    test_hooks::slow_boot();

    crate::scoreboard::set_mine(spec.board, spec.record);
    crate::counter::set_mine(spec.counters, spec.record);
    client::set_trusted(spec.trusted_proxies.clone());
    if let Some(r) = crate::scoreboard::mine() {
        r.pid.store(pid as i32, Ordering::Relaxed);
    }
    // SAFETY: as for the listener below: the master's metrics socket, copied by fork, owned by
    // nothing else in this process.
    let metrics = spec
        .metrics
        .map(|fd| unsafe { TcpListener::from_raw_fd(fd) });
    let info = WorkerInfo {
        id: spec.id,
        slot: spec.slot,
        pid,
        link: MasterLink::new(spec.ready),
        threads: spec.threads,
    };
    // SAFETY: fork copied the master's descriptor of the slot's socket into this process, and
    // nothing here owns it: the master's own objects, copied with it, are never dropped in the
    // child, which ends in `process::exit`. Owning it here (instead of a duplicate) leaves the
    // worker one descriptor to the socket, closed by actix when it stops accepting, which is
    // what lets a retired slot's socket close while the worker still finishes its requests.
    let listener = unsafe { TcpListener::from_raw_fd(spec.listener) };
    let system = actix_web::rt::System::new();
    let (app, master, threads, graceful) =
        (spec.app, spec.master, spec.threads, spec.graceful_timeout);
    let read_timeout = spec.read_timeout;
    let metrics_hosts = spec.metrics_hosts.clone();
    let proxy_protocol = spec.proxy_protocol;
    let health_path = spec.health_path.clone();
    let access = spec.access_log.then(access::AccessLog::start);
    let result = system.block_on(async {
        // Installed before the app boots (signal handlers need the runtime), so that a TERM
        // during a slow boot is a clean exit rather than the default action.
        let stop = StopSignals::install()
            .map_err(|e| BootError::Transient(format!("installing signal handlers: {e}")))?
            .wait(master);
        let timeouts = Timeouts {
            graceful,
            read: read_timeout,
            proxy_protocol,
            // One string for the life of the worker process.
            health: health_path.map(|p| &*Box::leak(p.into_boxed_str())),
            access,
        };
        let _metrics = match metrics {
            Some(l) => Some(crate::metrics::serve(l, metrics_hosts).map_err(|e| {
                BootError::Transient(format!("listening on the metrics socket: {e}"))
            })?),
            None => None,
        };
        serve(app, &info, listener, threads, timeouts, stop).await
    });
    // The last requests' lines are written before the process ends.
    if let Some(log) = access {
        log.finish();
    }
    match result {
        Ok(()) => exit_code::OK,
        Err(BootError::Transient(e)) => {
            tracing::error!(error = %e, "worker failed to boot");
            exit_code::BOOT_FAILED
        }
        Err(BootError::Config(e)) => {
            tracing::error!(error = %e, "worker rejected the configuration");
            exit_code::CONFIG_INVALID
        }
    }
}

/// Makes allocations of 1 MiB and more come from their own mapping, unmapped again when freed.
///
/// glibc raises its mmap threshold to the size of the largest mapped block freed so far (up to
/// 32 MiB), so after the first argon2 verification (one ~19 MiB block) the next ones come from
/// the thread's arena, whose freed memory is mostly not returned: measured, a worker grew by
/// ~10 MiB per login to 280 MiB after 26 logins in a row. A fixed threshold turns that
/// adjustment off; the price is mapping and faulting in the block on every verification.
fn large_allocations_go_back_to_the_os() {
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    #[cfg(target_env = "gnu")]
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Undoes what `fork` copied from the master and arms the parent-death signal.
fn hygiene<A>(spec: &WorkerSpec<'_, A>) -> Result<(), BootError> {
    signals::reset_in_child()
        .map_err(|e| BootError::Transient(format!("resetting signals: {e}")))?;
    // Ctrl-C in a terminal signals the whole foreground process group, workers included. The
    // master turns it into a graceful stop of every worker; a worker that also acted on it would
    // drop its connections behind the master's back.
    // SAFETY: SIG_IGN installs no handler code; no other thread exists yet.
    unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) }
        .map_err(|e| BootError::Transient(format!("ignoring SIGINT: {e}")))?;
    let mut keep = vec![spec.listener, spec.ready.as_raw_fd()];
    keep.extend(spec.metrics);
    crate::process::close_fds_except(&keep);
    // Only the master may talk to systemd (the unit also says NotifyAccess=main).
    crate::systemd::forget_in_child();
    // rand 0.9's thread-local generator does not notice fork: reseed it, or two workers could
    // mint the same session ids. (Threads created later seed their own from the OS.)
    rand::rng()
        .reseed()
        .map_err(|e| BootError::Transient(format!("reseeding the RNG: {e}")))?;
    if let Some((uid, gid)) = spec.credentials {
        crate::privileges::drop_to(uid, gid)
            .map_err(|e| BootError::Config(format!("dropping privileges: {e}")))?;
    }
    // Set after the credential change, which clears it. TERM lets the worker tell "the master
    // asked" from "the master is gone" by checking its parent below and in the TERM handler.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| BootError::Transient(format!("PR_SET_PDEATHSIG: {e}")))?;
    if nix::unistd::getppid() != spec.master {
        return Err(BootError::Transient(
            "the master died before this worker started".into(),
        ));
    }
    Ok(())
}
/// Hooks for the crash-loop and interleaving tests. Compiled into debug builds only, so a release binary has no
/// way to make its workers fail on purpose.
#[cfg(debug_assertions)]
mod test_hooks {
    /// `CLUSTERD_TEST_BOOT_EXIT_FILE=<path>`: while that file exists, every new worker exits
    /// right after fork with the code written in it. A file, not a value, so a test can turn
    /// the failure on and off while the master runs.
    pub fn boot_exit_code() -> Option<i32> {
        let path = std::env::var_os("CLUSTERD_TEST_BOOT_EXIT_FILE")?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// `CLUSTERD_TEST_BOOT_DELAY_MS=<ms>`: every new worker takes that long to boot, so a test
    /// can send signals while replacements boot.
    pub fn slow_boot() {
        if let Some(ms) = std::env::var("CLUSTERD_TEST_BOOT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
