//! `/metrics` on `--metrics-bind`: Prometheus text, rendered from the scoreboard, so one scrape
//! sees every worker. Runs in the workers, not the master: the master stays one thread with no
//! runtime (no HTTP server there), and every worker has the whole board mapped. Each worker
//! accepts on the one metrics socket the master bound, on a small server of one thread beside
//! its public one, so the public port never answers `/metrics` and a scrape is served as long
//! as any worker lives.

use std::net::TcpListener;
use std::sync::atomic::Ordering;

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counter::Unit;
use crate::scoreboard::{self, Board, DURATION_BUCKETS, Record};

/// Starts the metrics server on `listener` (one thread) and returns its handle. It answers only
/// requests whose `Host` is its own address, `localhost`, or one of `names` (with or without
/// the port): a page elsewhere that a browser fetches under a name rebound to loopback (DNS
/// rebinding) gets 421, not the status document.
pub fn serve(
    listener: TcpListener,
    names: Vec<String>,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let bound = listener.local_addr()?;
    let names = std::sync::Arc::new(names);
    let server = HttpServer::new(move || {
        let names = std::sync::Arc::clone(&names);
        App::new()
            .wrap(actix_web::middleware::from_fn(
                move |req: actix_web::dev::ServiceRequest,
                      next: actix_web::middleware::Next<actix_web::body::BoxBody>| {
                    let ok = req
                        .headers()
                        .get(actix_web::http::header::HOST)
                        .is_none_or(|h| h.to_str().is_ok_and(|h| host_allowed(h, bound, &names)));
                    async move {
                        if ok {
                            next.call(req).await.map(|r| r.map_into_boxed_body())
                        } else {
                            Ok(req.into_response(
                                HttpResponse::MisdirectedRequest().body(
                                    "unknown Host: add the name with --metrics-allowed-hosts\n",
                                ),
                            ))
                        }
                    }
                },
            ))
            .route("/metrics", web::get().to(metrics))
            .route("/status.json", web::get().to(status_json))
            .route("/history.json", web::get().to(history_json))
            .route("/", web::get().to(dashboard))
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

/// Whether `host` (a `Host` header) names this server: its bound address, `localhost`, or one
/// of `names`, each with or without the bound port.
fn host_allowed(host: &str, bound: std::net::SocketAddr, names: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let port = format!(":{}", bound.port());
    let name = host.strip_suffix(&port).unwrap_or(&host);
    let ip = match bound.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    name == ip || name == "localhost" || names.iter().any(|n| n == name)
}

async fn metrics() -> HttpResponse {
    let Some(board) = scoreboard::board() else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    match render(board) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// The board as JSON for the dashboard: the cluster's figures and a row per worker.
async fn status_json() -> HttpResponse {
    let Some(board) = scoreboard::board() else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(status(board))
}

/// The last 5 minutes (a point a second, oldest first) for the cluster and each slot that
/// served in them, and the master's last events (newest first).
async fn history_json() -> HttpResponse {
    let Some(history) = crate::history::get() else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(history_document(history))
}

/// The history as the dashboard reads it.
pub fn history_document(history: crate::history::History) -> serde_json::Value {
    use crate::history::Figures;
    let series = |points: &[Figures]| {
        let ms = |us: Option<u32>| us.map(|us| f64::from(us) / 1000.0);
        serde_json::json!({
            "rps": points.iter().map(|f| f.requests).collect::<Vec<_>>(),
            "p50_ms": points.iter().map(|f| ms(f.p50_us)).collect::<Vec<_>>(),
            "p99_ms": points.iter().map(|f| ms(f.p99_us)).collect::<Vec<_>>(),
            "queue": points.iter().map(|f| f.queue).collect::<Vec<_>>(),
        })
    };
    let (cluster, slots) = history.points();
    serde_json::json!({
        "interval_s": 1,
        "points": cluster.len(),
        "cluster": series(&cluster),
        "slots": slots
            .iter()
            .map(|(slot, points)| {
                let mut s = series(points);
                s["slot"] = serde_json::json!(slot);
                s
            })
            .collect::<Vec<_>>(),
        "events": history
            .events()
            .into_iter()
            .map(|(at_ms, text)| serde_json::json!({ "at_ms": at_ms, "text": text }))
            .collect::<Vec<_>>(),
    })
}

/// What the dashboard shows, read from the scoreboard.
pub fn status(board: Board) -> serde_json::Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let now = scoreboard::now_ms();
    let mut workers: Vec<serde_json::Value> = board
        .records
        .iter()
        .filter(|r| r.pid.load(Ordering::Relaxed) != 0)
        .map(|r| {
            let pid = r.pid.load(Ordering::Relaxed);
            serde_json::json!({
                "slot": load(&r.slot),
                "id": load(&r.id),
                "pid": pid,
                "uptime_s": now.saturating_sub(load(&r.started_ms)) / 1000,
                "connections": r.connections.load(Ordering::Relaxed),
                "queue": load(&r.accept_queue),
                "queue_max": load(&r.accept_queue_max),
                "requests": load(&r.requests),
                "rss_bytes": crate::process::rss_bytes(pid),
                "heartbeat_age_ms": r.heartbeat_age_ms(now),
                "store": match load(&r.store) { 1 => "up", 2 => "down", _ => "-" },
            })
        })
        .collect();
    workers.sort_by_key(|w| (w["slot"].as_u64(), w["id"].as_u64()));
    serde_json::json!({
        "workers_ready": load(&board.header.ready),
        "workers_wanted": load(&board.header.target),
        "restarts": load(&board.header.restarts),
        "reloading": load(&board.header.reloading) == 1,
        "workers": workers,
    })
}

/// `/` on `--metrics-bind`: the operator's dashboard, a table refreshed every second.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DASHBOARD)
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// The request duration histogram summed over workers.
#[derive(Debug)]
struct Durations {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels = Vec<(&'static str, String)>;

/// Prometheus text for the whole board.
pub fn render(board: Board) -> Result<String, std::fmt::Error> {
    let live: Vec<&Record> = board
        .records
        .iter()
        .filter(|r| r.pid.load(Ordering::Relaxed) != 0)
        .collect();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut reg = Registry::default();

    let workers = Gauge::<i64>::default();
    workers.set(load(&board.header.ready) as i64);
    reg.register("clusterd_workers", "Workers serving", workers);
    let target = Gauge::<i64>::default();
    target.set(load(&board.header.target) as i64);
    reg.register("clusterd_workers_wanted", "Workers wanted", target);
    let restarts = Counter::<u64>::default();
    restarts.inc_by(load(&board.header.restarts));
    reg.register(
        "clusterd_worker_restarts",
        "Unplanned worker deaths, each followed by a replacement",
        restarts,
    );

    let requests = Family::<Labels, Counter<u64>>::default();
    let connections = Family::<Labels, Gauge<i64>>::default();
    let queue = Family::<Labels, Gauge<i64>>::default();
    let queue_max = Family::<Labels, Gauge<i64>>::default();
    let heartbeat = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let now = scoreboard::now_ms();
    let mut durations = Durations {
        sum: 0.0,
        count: 0,
        buckets: DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .map(|b| (b, 0))
            .collect(),
    };
    for r in &live {
        let worker = load(&r.id).to_string();
        let slot = load(&r.slot).to_string();
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = load(&r.status[i]);
            if n > 0 {
                requests
                    .get_or_create(&vec![
                        ("worker", worker.clone()),
                        ("slot", slot.clone()),
                        ("class", class.to_string()),
                    ])
                    .inc_by(n);
            }
        }
        connections
            .get_or_create(&vec![("worker", worker.clone()), ("slot", slot.clone())])
            .set(r.connections.load(Ordering::Relaxed));
        // By slot: in shared mode every slot reports the one socket.
        queue
            .get_or_create(&vec![("slot", slot.clone())])
            .set(load(&r.accept_queue) as i64);
        queue_max
            .get_or_create(&vec![("slot", slot.clone())])
            .set(load(&r.accept_queue_max) as i64);
        if let Some(age) = r.heartbeat_age_ms(now) {
            heartbeat
                .get_or_create(&vec![("worker", worker.clone()), ("slot", slot.clone())])
                .set(age as f64 / 1000.0);
        }
        for (i, b) in r.duration.iter().enumerate() {
            let n = load(b);
            durations.buckets[i].1 += n;
            durations.count += n;
        }
        durations.sum += load(&r.duration_sum_us) as f64 / 1e6;
    }
    reg.register(
        "clusterd_http_requests",
        "Requests answered, by worker and status class",
        requests,
    );
    reg.register(
        "clusterd_http_request_duration_seconds",
        "Time from a request's head to its answer, all workers",
        durations,
    );
    reg.register(
        "clusterd_open_connections",
        "Client connections open, by worker",
        connections,
    );
    reg.register(
        "clusterd_accept_queue",
        "Connections waiting in a slot's accept queue, as the master last saw them (every 500 ms)",
        queue,
    );
    reg.register(
        "clusterd_accept_queue_max",
        "The kernel's limit of a slot's accept queue (the backlog)",
        queue_max,
    );
    reg.register(
        "clusterd_worker_heartbeat_age_seconds",
        "Age of the oldest server-thread heartbeat, by worker",
        heartbeat,
    );
    app_counters(&mut reg);
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// The app's counters ([`crate::counter`]): one metric per name, a family when it has labels.
fn app_counters(reg: &mut Registry) {
    let Some(board) = crate::counter::board() else {
        return;
    };
    let totals = crate::counter::totals(board);
    let mut done: Vec<&str> = Vec::new();
    for (desc, _) in &totals {
        if done.contains(&desc.name.as_str()) {
            continue;
        }
        done.push(&desc.name);
        let same: Vec<&(crate::counter::Desc, u64)> =
            totals.iter().filter(|(d, _)| d.name == desc.name).collect();
        match desc.unit {
            Unit::Count => register_app::<Counter<u64>>(reg, &same, |c, n| {
                c.inc_by(n);
            }),
            Unit::Seconds => {
                register_app::<Counter<f64, std::sync::atomic::AtomicU64>>(reg, &same, |c, us| {
                    c.inc_by(us as f64 / 1e6);
                })
            }
        }
    }
}

/// Registers the counters of one name (`same`, at least one): a plain metric without labels,
/// else a family; `add` puts a total into a metric.
fn register_app<M>(reg: &mut Registry, same: &[&(crate::counter::Desc, u64)], add: fn(&M, u64))
where
    M: prometheus_client::registry::Metric
        + prometheus_client::metrics::TypedMetric
        + Default
        + Clone,
{
    let desc = &same[0].0;
    let (name, help) = (desc.name.clone(), desc.help.clone());
    if desc.labels.is_empty() {
        let m = M::default();
        same.iter().for_each(|(_, n)| add(&m, *n));
        reg.register(name, help, m);
    } else {
        let family = Family::<Vec<(String, String)>, M>::default();
        same.iter()
            .for_each(|(d, n)| add(&family.get_or_create(&d.labels), *n));
        reg.register(name, help, family);
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_its_own_address_localhost_and_given_names_are_answered() {
        let bound: std::net::SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let names = vec!["prom.internal".to_string()];
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "localhost:9100",
            "LOCALHOST",
            "prom.internal:9100",
        ] {
            assert!(host_allowed(ok, bound, &names), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:9100",
            "127.0.0.1:80",
            "localhost.attacker",
        ] {
            assert!(!host_allowed(bad, bound, &names), "{bad}");
        }
        let v6: std::net::SocketAddr = "[::1]:9100".parse().unwrap();
        assert!(host_allowed("[::1]:9100", v6, &[]));
    }
}
