//! The worker: what a forked child does, from post-fork hygiene to `exit`. Runs only in workers.
//!
//! Order matters and follows the fork rules in ARCHITECTURE.md: first undo what was inherited (signal
//! mask, master-only descriptors, the RNG state), then drop privileges, then arm the
//! parent-death signal (a credential change clears it), and only then build the runtime, the
//! app's state (Redis connections and the like) and the HTTP server on the inherited socket.

use std::future::Future;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::{Gid, Pid, Uid};
use tokio::signal::unix::{SignalKind, signal as tokio_signal};

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
}

/// Bytes a worker writes on its pipe to the master. One byte per message, so a write is
/// atomic whichever thread makes it.
pub(crate) mod message {
    /// The server accepts connections.
    pub const READY: u8 = b'R';
    /// The app's dependencies answer (e.g. the session store).
    pub const UP: u8 = b'U';
    /// The app's dependencies do not answer; the worker serves degraded.
    pub const DOWN: u8 = b'D';
    /// A retiring worker shut its slot's socket down: it has left the SO_REUSEPORT group.
    pub const SOCKET_CLOSED: u8 = b'C';
}

/// The worker's end of its pipe to the master. The master reads readiness and health from it
/// (shown in systemd's STATUS line) and EOF when the worker is gone.
#[derive(Clone)]
pub struct MasterLink(Arc<LinkInner>);

struct LinkInner {
    /// `None` for a detached link (an app run outside clusterd's master, e.g. in tests).
    pipe: Option<std::fs::File>,
    /// Last health sent: 0 none yet, else the message byte.
    last: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for MasterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterLink").finish_non_exhaustive()
    }
}

impl MasterLink {
    fn new(fd: OwnedFd) -> Self {
        MasterLink(Arc::new(LinkInner {
            pipe: Some(fd.into()),
            last: Default::default(),
        }))
    }

    /// A link to no master: reports go nowhere. For running a [`WorkerApp`] on its own, as
    /// the app's tests do.
    pub fn detached() -> Self {
        MasterLink(Arc::new(LinkInner {
            pipe: None,
            last: Default::default(),
        }))
    }

    fn send(&self, byte: u8) {
        let Some(pipe) = &self.0.pipe else { return };
        // EPIPE (master gone) is harmless: SIGPIPE is ignored and the worker is stopping anyway.
        if let Err(e) = std::io::Write::write_all(&mut &*pipe, &[byte]) {
            tracing::debug!(error = %e, "writing to the master's pipe failed");
        }
    }

    /// Tells the master whether the app's dependencies answer. Only changes are sent.
    pub fn report_health(&self, ok: bool) {
        let byte = if ok { message::UP } else { message::DOWN };
        if let Some(r) = crate::scoreboard::mine() {
            r.store.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
        }
        if self.0.last.swap(byte, Ordering::Relaxed) != byte {
            self.send(byte);
        }
    }
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
    /// The metrics socket (`--metrics-bind`), shared by every worker.
    pub metrics: Option<RawFd>,
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

    crate::scoreboard::set_mine(spec.board, spec.record);
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
    let result = system.block_on(async {
        // Installed before the app boots (signal handlers need the runtime), so that a TERM
        // during a slow boot is a clean exit rather than the default action.
        let stop = StopSignals::install()
            .map_err(|e| BootError::Transient(format!("installing signal handlers: {e}")))?
            .wait(master);
        let timeouts = Timeouts {
            graceful,
            read: read_timeout,
        };
        let _metrics = match metrics {
            Some(l) => Some(crate::metrics::serve(l).map_err(|e| {
                BootError::Transient(format!("listening on the metrics socket: {e}"))
            })?),
            None => None,
        };
        serve(app, &info, listener, threads, timeouts, stop).await
    });
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

/// Builds the app state and serves on `listener` until `stop` resolves; tells the master once
/// the server accepts. The stop is injected: the worker passes its signals, a test its own.
async fn serve<A: WorkerApp>(
    app: &A,
    info: &WorkerInfo,
    listener: TcpListener,
    threads: usize,
    timeouts: Timeouts,
    stop: impl Future<Output = Stop>,
) -> Result<(), BootError> {
    let graceful_timeout = timeouts.graceful;
    let read_timeout = timeouts.read;
    let state = app.init(info).await?;
    let listener_fd = listener.as_raw_fd();
    let draining = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&draining);
    let id = HeaderValue::from(info.id);
    let next_thread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = HttpServer::new(move || {
        let (flag, id) = (Arc::clone(&flag), id.clone());
        let state = state.clone();
        // Runs once on each server thread: that thread's heartbeat.
        let thread = next_thread.fetch_add(1, Ordering::Relaxed);
        heartbeat(thread.min(crate::scoreboard::MAX_THREADS - 1));
        App::new()
            .wrap(from_fn(move |req, next| {
                worker_layer(id.clone(), Arc::clone(&flag), read_timeout, req, next)
            }))
            .configure(move |cfg| A::configure(&state, cfg))
    })
    .workers(threads)
    .on_connect(|_, extensions| {
        if let Some(r) = crate::scoreboard::mine() {
            r.connections.fetch_add(1, Ordering::Relaxed);
            extensions.insert(OpenConnection(r));
        }
    })
    // The head of a request within 5 s (actix's default) or the read timeout if shorter; the
    // body within the read timeout counted from the start (`worker_layer`).
    .client_request_timeout(read_timeout.min(Duration::from_secs(5)))
    .disable_signals()
    .shutdown_timeout(graceful_timeout.as_secs())
    .listen(listener)
    .map_err(|e| BootError::Transient(format!("listening on the inherited socket: {e}")))?
    .run();
    let handle = server.handle();
    let mut server = pin!(server);
    // The first poll starts actix's accept thread and server threads and returns once they have
    // built their services: from then on connections on the shared socket are served here.
    let first = std::future::poll_fn(|cx| Poll::Ready(server.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return result.map_err(|e| BootError::Transient(format!("starting the server: {e}")));
    }
    info.link.send(message::READY);
    tracing::info!(threads, "serving");

    let mut stop = pin!(stop);
    let how = tokio::select! {
        result = server.as_mut() => {
            if let Err(e) = result {
                tracing::error!(error = %e, "server stopped unexpectedly");
            }
            return Ok(());
        }
        how = &mut stop => how,
    };
    // `pause` and `stop` only queue a command for the server future, which must keep being
    // polled to act on it (awaiting their own futures instead would wait forever); the server
    // future resolves once every server thread has finished.
    match how {
        Stop::Graceful => {
            tracing::info!(
                timeout_s = graceful_timeout.as_secs(),
                "stopping gracefully: no new connections, finishing requests"
            );
            // Every response from now on says `Connection: close`, so keep-alive clients move
            // to another worker after their current request instead of finding this one gone
            // (actix's graceful stop closes idle keep-alive connections).
            draining.store(true, Ordering::Relaxed);
            // Stop accepting first and give connections the accept thread already took a
            // moment to reach a server thread: actix's graceful stop drops connections still
            // queued between the two, and their clients would see a reset. Connections not yet
            // accepted stay in the slot's socket, which the master keeps open for the slot's
            // other or next worker.
            let _paused = handle.pause();
            settle(&mut server).await;
            let _done = handle.stop(true);
            let _ = server.as_mut().await;
        }
        Stop::Retire => {
            tracing::info!(
                timeout_s = graceful_timeout.as_secs(),
                "retiring with the slot: closing its socket, finishing requests"
            );
            // This worker holds the last descriptor of the slot's socket. Take the socket out of
            // service before sending anyone away, while actix still accepts on it: its queue is
            // then (nearly) empty, and the clients told to reconnect below can only reach the
            // other slots. `shutdown` stops a listener at once (it leaves the SO_REUSEPORT group;
            // with net.ipv4.tcp_migrate_req=1 the kernel moves what is queued to a sibling) and,
            // unlike `close`, cannot hand the descriptor number to another file under actix.
            // The master has steered new connections away from the socket already; give those
            // that reached it just before a moment to be accepted.
            settle_for(&mut server, RETIRE_SETTLE).await;
            crate::log::expect_accept_error();
            if let Err(e) =
                nix::sys::socket::shutdown(listener_fd, nix::sys::socket::Shutdown::Read)
            {
                tracing::warn!(error = %e, "shutting the slot's socket down failed");
            }
            info.link.send(message::SOCKET_CLOSED);
            let _paused = handle.pause();
            draining.store(true, Ordering::Relaxed);
            settle(&mut server).await;
            let _done = handle.stop(true);
            let _ = server.as_mut().await;
        }
        Stop::Fast => {
            tracing::info!("stopping now (SIGQUIT)");
            let _done = handle.stop(false);
            let _ = server.as_mut().await;
        }
        Stop::Orphaned => {
            tracing::warn!("the master is gone: stopping");
            draining.store(true, Ordering::Relaxed);
            let _done = handle.stop(true);
            if tokio::time::timeout(ORPHAN_GRACE, server.as_mut())
                .await
                .is_err()
            {
                tracing::warn!("requests still running after {ORPHAN_GRACE:?}; exiting anyway");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a pausing worker keeps running its server before stopping it.
const HANDOFF_SETTLE: Duration = Duration::from_millis(100);

/// How long a retiring worker keeps accepting on its slot's socket after the master steered
/// new connections away, before it shuts the socket down.
const RETIRE_SETTLE: Duration = Duration::from_millis(50);

/// Keeps polling the server future for [`HANDOFF_SETTLE`] (it must be polled to act on
/// commands), unless it ends sooner.
async fn settle<F: Future + Unpin>(server: &mut F) {
    settle_for(server, HANDOFF_SETTLE).await;
}

/// Keeps polling the server future for `time`, unless it ends sooner.
async fn settle_for<F: Future + Unpin>(server: &mut F, time: Duration) {
    let _ = tokio::time::timeout(time, server).await;
}

/// The worker's stop signals, registered with tokio (which installs the handlers now).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            term: tokio_signal(SignalKind::terminate())?,
            quit: tokio_signal(SignalKind::quit())?,
            hup: tokio_signal(SignalKind::hangup())?,
            usr1: tokio_signal(SignalKind::user_defined1())?,
        })
    }

    /// Resolves at the first stop signal. A TERM is the master's request unless the master is
    /// gone, in which case it is the parent-death signal.
    async fn wait(mut self, master: Pid) -> Stop {
        tokio::select! {
            _ = self.term.recv() => {
                if nix::unistd::getppid() == master { Stop::Graceful } else { Stop::Orphaned }
            }
            _ = self.hup.recv() => Stop::Graceful,
            _ = self.usr1.recv() => Stop::Retire,
            _ = self.quit.recv() => Stop::Fast,
        }
    }
}

/// Wraps every app: names the worker that answered in an `x-clusterd-worker` header (how an
/// operator sees the load spread), and closes keep-alive connections once the worker drains.
async fn worker_layer(
    worker: HeaderValue,
    draining: Arc<AtomicBool>,
    read_timeout: Duration,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let body = actix_web::HttpMessage::take_payload(&mut req);
    req.set_payload(with_deadline(
        body,
        tokio::time::Instant::now() + read_timeout,
    ));
    let res = next.call(req).await;
    if let Some(r) = crate::scoreboard::mine() {
        let status = res.as_ref().map_or(500, |r| r.status().as_u16());
        r.count_request(status, started.elapsed());
    }
    let mut res = res?;
    res.headers_mut()
        .insert(HeaderName::from_static("x-clusterd-worker"), worker);
    if draining.load(Ordering::Relaxed) {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(res)
}

/// Ticks this server thread's heartbeat on the scoreboard twice a second, from a task on the
/// thread's own runtime: if the thread is blocked, the tick stops, and the master notices.
fn heartbeat(thread: usize) {
    let Some(r) = crate::scoreboard::mine() else {
        return;
    };
    r.heartbeat_ms[thread].store(crate::scoreboard::now_ms(), Ordering::Relaxed);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            r.heartbeat_ms[thread].store(crate::scoreboard::now_ms(), Ordering::Relaxed);
        }
    });
}

/// Kept in a connection's extensions: counts the connection open until actix drops it.
struct OpenConnection(&'static crate::scoreboard::Record);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The timeouts a worker's server applies.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// A stopping worker's time to finish its requests.
    graceful: Duration,
    /// A client's time to send a whole request.
    read: Duration,
}

/// A request body that fails with `TimedOut` if it has not arrived whole by `deadline`: a
/// client that stops sending (slowloris on the body) would otherwise hold its connection, and a
/// stopping worker, for ever. The app sees an I/O error reading the body (the demo app answers
/// 408), and actix closes the connection, whose body was not read to its end.
fn with_deadline(
    mut body: actix_web::dev::Payload,
    deadline: tokio::time::Instant,
) -> actix_web::dev::Payload {
    use actix_web::error::PayloadError;
    use futures_util::StreamExt;
    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
    let mut done = false;
    let stream = futures_util::stream::poll_fn(move |cx| {
        if done {
            return Poll::Ready(None);
        }
        match body.poll_next_unpin(cx) {
            Poll::Pending if timer.as_mut().poll(cx).is_ready() => {
                done = true;
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                )))))
            }
            other => other,
        }
    });
    actix_web::dev::Payload::Stream {
        payload: Box::pin(stream),
    }
}

/// Hooks for the crash-loop tests. Compiled into debug builds only, so a release binary has no
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
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use super::*;

    struct Pong;

    impl WorkerApp for Pong {
        type State = ();

        async fn init(&self, _: &WorkerInfo) -> Result<(), BootError> {
            Ok(())
        }

        fn configure(_: &(), cfg: &mut web::ServiceConfig) {
            cfg.route("/", web::get().to(|| async { "pong" }));
        }
    }

    /// One keep-alive request; returns the head (lowercased) and the body.
    fn get(conn: &mut BufReader<TcpStream>) -> (String, String) {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        conn.read_exact(&mut body).unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    #[test]
    fn serve_runs_until_the_injected_stop_and_closes_keep_alive_while_draining() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Stop>();
        let server = std::thread::spawn(move || {
            let info = WorkerInfo {
                id: 7,
                slot: 0,
                pid: std::process::id(),
                link: MasterLink::detached(),
            };
            let stop = async { rx.await.unwrap_or(Stop::Fast) };
            actix_web::rt::System::new().block_on(serve(
                &Pong,
                &info,
                listener,
                1,
                Timeouts {
                    graceful: Duration::from_secs(5),
                    read: Duration::from_secs(5),
                },
                stop,
            ))
        });
        // The socket is bound before serve starts, so connecting cannot race it.
        let mut conn = BufReader::new(TcpStream::connect(addr).unwrap());
        let (head, body) = get(&mut conn);
        assert_eq!(body, "pong");
        assert!(head.contains("x-clusterd-worker: 7"), "{head}");
        assert!(
            !head.contains("connection: close"),
            "keep-alive while serving: {head}"
        );

        tx.send(Stop::Graceful).unwrap();
        // Draining starts when the stop resolves; from then on responses close the connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (head, body) = get(&mut conn);
            assert_eq!(
                body, "pong",
                "requests on an open connection are still served"
            );
            if head.contains("connection: close") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never started draining"
            );
        }
        assert!(server.join().unwrap().is_ok());
        assert!(
            TcpStream::connect(addr).is_err(),
            "the listener is closed after the stop"
        );
    }
}
