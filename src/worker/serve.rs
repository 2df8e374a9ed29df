//! The worker's HTTP server on its inherited socket, and how it stops (graceful, retire, fast,
//! orphaned). Runs in workers.

use std::future::Future;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal as tokio_signal};

use super::layer::{OpenConnection, Timeouts, heartbeat, worker_layer};
use super::*;

/// The health route's answer: `{"status":"ok"|"degraded"|"draining","worker_pid","worker_id",
/// ...}`, with 503 while the worker drains for a stop (it finishes requests from before the
/// stop), so a balancer in front stops sending.
fn health_answer(h: Health, draining: bool, pid: u32, id: u64) -> HttpResponse {
    let status = match (draining, h.degraded) {
        (true, _) => "draining",
        (false, true) => "degraded",
        (false, false) => "ok",
    };
    let mut answer = serde_json::json!({
        "status": status,
        "worker_pid": pid,
        "worker_id": id,
    });
    if let Some(fields) = answer.as_object_mut() {
        fields.extend(h.details);
    }
    if draining {
        HttpResponse::ServiceUnavailable().json(answer)
    } else {
        HttpResponse::Ok().json(answer)
    }
}

/// Builds the app state and serves on `listener` until `stop` resolves; tells the master once
/// the server accepts. The stop is injected: the worker passes its signals, a test its own.
pub(super) async fn serve<A: WorkerApp>(
    app: &A,
    info: &WorkerInfo,
    listener: TcpListener,
    threads: usize,
    timeouts: Timeouts,
    stop: impl Future<Output = Stop>,
) -> Result<(), BootError> {
    let graceful_timeout = timeouts.graceful;
    let read_timeout = timeouts.read;
    let proxy_protocol = timeouts.proxy_protocol;
    if proxy_protocol {
        // The header is there when actix hands the connection over (see `proxy.rs`).
        super::proxy::defer_accept(listener.as_raw_fd(), read_timeout)
            .map_err(|e| BootError::Transient(format!("TCP_DEFER_ACCEPT on the socket: {e}")))?;
    }
    let state = app.init(info).await?;
    let listener_fd = listener.as_raw_fd();
    let draining = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&draining);
    let id = HeaderValue::from(info.id);
    let (pid, worker) = (info.pid, info.id);
    let next_thread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = HttpServer::new(move || {
        let (flag, id) = (Arc::clone(&flag), id.clone());
        let draining = Arc::clone(&flag);
        let state = state.clone();
        // Runs once on each server thread: that thread's heartbeat.
        let thread = next_thread.fetch_add(1, Ordering::Relaxed);
        heartbeat(thread.min(crate::scoreboard::MAX_THREADS - 1));
        App::new()
            .wrap(from_fn(move |req, next| {
                worker_layer(
                    id.clone(),
                    worker,
                    Arc::clone(&flag),
                    read_timeout,
                    timeouts.access,
                    req,
                    next,
                )
            }))
            .configure(move |cfg| {
                if let Some(path) = timeouts.health {
                    let state = state.clone();
                    cfg.route(
                        path,
                        web::get().to(move |req: actix_web::HttpRequest| {
                            let own = actix_web::HttpMessage::extensions(&req)
                                .get::<super::inflight::Number>()
                                .copied();
                            let draining = draining.load(Ordering::Relaxed)
                                && own.is_some_and(|n| super::inflight::draining(n.0));
                            let answer = health_answer(A::health(&state), draining, pid, worker);
                            async move { answer }
                        }),
                    );
                }
                A::configure(&state, cfg)
            })
    })
    .workers(threads)
    .on_connect(move |conn, extensions| {
        if let Some(r) = crate::scoreboard::mine() {
            r.connections.fetch_add(1, Ordering::Relaxed);
            extensions.insert(OpenConnection(r));
        }
        let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let fd = tcp.as_raw_fd();
        if proxy_protocol {
            match super::proxy::take_header(fd) {
                Ok(client) => {
                    extensions.insert(super::client::Proxied(client));
                }
                Err(why) => {
                    tracing::debug!("{why}; closing the connection");
                    // The dispatcher sees the end of the stream and closes it, unanswered.
                    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                    return;
                }
            }
        }
        extensions.insert(super::watch::Watch::start(fd, read_timeout));
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
            super::inflight::stop_began();
            // Stop accepting first and give connections the accept thread already took a
            // moment to reach a server thread: actix's graceful stop drops connections still
            // queued between the two, and their clients would see a reset. Connections not yet
            // accepted stay in the slot's socket, which the master keeps open for the slot's
            // other or next worker.
            let _paused = handle.pause();
            settle(&mut server).await;
            finish_requests(&mut server, graceful_timeout).await;
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
            super::inflight::stop_began();
            settle(&mut server).await;
            finish_requests(&mut server, graceful_timeout).await;
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
            super::inflight::stop_began();
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

/// Keeps serving, for at most `limit`, until no request is in flight. Only then does the stop
/// go to actix, whose graceful stop closes idle keep-alive connections at once: until then a
/// client on a kept-alive connection still gets its answer, with `Connection: close`, instead
/// of a connection closed under its request.
async fn finish_requests<F: Future + Unpin>(server: &mut F, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while super::inflight::count() > 0 && tokio::time::Instant::now() < deadline {
        settle_for(server, Duration::from_millis(20)).await;
    }
}

/// Keeps polling the server future for `time`, unless it ends sooner.
async fn settle_for<F: Future + Unpin>(server: &mut F, time: Duration) {
    let _ = tokio::time::timeout(time, server).await;
}

/// The worker's stop signals, registered with tokio (which installs the handlers now).
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            term: tokio_signal(SignalKind::terminate())?,
            quit: tokio_signal(SignalKind::quit())?,
            hup: tokio_signal(SignalKind::hangup())?,
            usr1: tokio_signal(SignalKind::user_defined1())?,
        })
    }

    /// Resolves at the first stop signal. A TERM is the master's request unless the master is
    /// gone, in which case it is the parent-death signal.
    pub(super) async fn wait(mut self, master: Pid) -> Stop {
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
#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use super::layer::Timeouts;
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
                threads: 1,
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
                    proxy_protocol: false,
                    health: Some("/healthz"),
                    access: None,
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
