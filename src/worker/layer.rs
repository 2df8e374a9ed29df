//! The middleware every request passes in a worker: the scoreboard's counters and heartbeats,
//! and the read deadlines. Runs in workers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

/// Wraps every app: names the worker that answered in an `x-clusterd-worker` header (how an
/// operator sees the load spread), and closes keep-alive connections once the worker drains.
pub(super) async fn worker_layer(
    worker: HeaderValue,
    worker_id: u64,
    draining: Arc<AtomicBool>,
    read_timeout: Duration,
    access: Option<&'static super::access::AccessLog>,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let in_flight = super::inflight::InFlight::start(req.method().as_str(), req.path());
    actix_web::HttpMessage::extensions_mut(&req).insert(in_flight.number());
    let watch = req.conn_data::<std::rc::Rc<super::watch::Watch>>().cloned();
    if let Some(w) = &watch {
        w.request_started();
    }
    super::client::record(&req);
    // What the access log needs of the request, taken only when it is on.
    let asked = access.map(|_| {
        (
            super::client::client_addr(req.request()),
            req.method().clone(),
            req.path().to_string(),
        )
    });
    let body = actix_web::HttpMessage::take_payload(&mut req);
    req.set_payload(with_deadline(
        body,
        tokio::time::Instant::now() + read_timeout,
    ));
    let res = next.call(req).await;
    drop(in_flight);
    if let Some(w) = &watch {
        w.request_done();
    }
    if let Some(r) = crate::scoreboard::mine() {
        let status = res.as_ref().map_or(500, |r| r.status().as_u16());
        r.count_request(status, started.elapsed());
    }
    if let (Some(log), Some((client, method, path))) = (access, asked) {
        let (status, bytes) = match &res {
            Ok(r) => (r.status().as_u16(), body_size(r.response().body().size())),
            Err(e) => (e.as_response_error().status_code().as_u16(), None),
        };
        log.record(super::access::Entry {
            client,
            method,
            path,
            status,
            bytes,
            duration: started.elapsed(),
            worker: worker_id,
        });
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

/// A body's size when it is known before it is sent.
fn body_size(size: actix_web::body::BodySize) -> Option<u64> {
    match size {
        actix_web::body::BodySize::Sized(n) => Some(n),
        actix_web::body::BodySize::None => Some(0),
        actix_web::body::BodySize::Stream => None,
    }
}

/// Ticks this server thread's heartbeat on the scoreboard twice a second, from a task on the
/// thread's own runtime: if the thread is blocked, the tick stops, and the master notices.
pub(super) fn heartbeat(thread: usize) {
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
pub(super) struct OpenConnection(pub(super) &'static crate::scoreboard::Record);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The timeouts a worker's server applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// A stopping worker's time to finish its requests.
    pub(super) graceful: Duration,
    /// A client's time to send a whole request.
    pub(super) read: Duration,
    /// Every connection starts with a PROXY protocol header.
    pub(super) proxy_protocol: bool,
    /// The health route's path, if any.
    pub(super) health: Option<&'static str>,
    /// Where the access log's lines go (`--access-log`).
    pub(super) access: Option<&'static super::access::AccessLog>,
}

/// A request body that fails with `TimedOut` if it has not arrived whole by `deadline`: a
/// client that stops sending (slowloris on the body) would otherwise hold its connection, and a
/// stopping worker, for ever. The app sees an I/O error reading the body (the demo app answers
/// 408), and actix closes the connection, whose body was not read to its end.
pub(super) fn with_deadline(
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
