//! Operating the cluster: `clusterd status|scale|reload` on the control socket, `/metrics` on
//! `--metrics-bind`, hung workers (heartbeats), recycling (`--max-requests`).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

fn ctl(c: &Clusterd, args: &[&str]) -> (Option<i32>, String, String) {
    c.ctl(args)
}

fn status(c: &Clusterd) -> serde_json::Value {
    c.status()
}

fn pids(doc: &serde_json::Value) -> Vec<i32> {
    let mut p: Vec<i32> = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    p.sort();
    p
}

#[test]
fn status_lists_every_worker_and_counts_its_requests() {
    let c = Clusterd::start(Opts::default().workers(3));
    for _ in 0..300 {
        assert_eq!(
            request(c.addr, "GET", "/healthz", &[], b"").unwrap().status,
            200
        );
    }
    let doc = status(&c);
    assert_eq!(pids(&doc), c.workers());
    let mut total = 0;
    for w in doc["workers"].as_array().unwrap() {
        for key in [
            "slot",
            "pid",
            "state",
            "uptime_s",
            "restarts",
            "connections",
            "requests",
            "rss_bytes",
            "heartbeat_age_ms",
        ] {
            assert!(!w[key].is_null(), "{key} in {w}");
        }
        assert_eq!(w["state"], "ready");
        assert!(w["rss_bytes"].as_u64().unwrap() > 1 << 20, "{w}");
        total += w["requests"].as_u64().unwrap();
    }
    assert!((300..=320).contains(&total), "{total}: {doc}");
    assert_eq!(doc["master"]["pid"], c.pid());
    assert_eq!(doc["store"]["kind"], "sqlite");
    let (code, out, _) = ctl(&c, &["status"]);
    assert_eq!(code, Some(0));
    // The master's line, a header, one line per worker; then the app's counters.
    let table = out.lines().take_while(|l| !l.starts_with("counters"));
    assert_eq!(table.count(), 2 + 3, "{out}");
    assert!(out.contains("clusterd_session_cache_hits_total"), "{out}");
    for pid in c.workers() {
        assert!(out.contains(&pid.to_string()), "{out}");
    }
}

#[test]
fn scale_sets_the_worker_count_within_max_workers() {
    let c = Clusterd::start(Opts::default().workers(3).arg("--max-workers").arg("6"));
    let (code, _, err) = ctl(&c, &["scale", "5"]);
    assert_eq!(code, Some(0), "{err}");
    let started = Instant::now();
    eventually(Duration::from_secs(5), "5 workers", || {
        let doc = status(&c);
        (doc["master"]["workers"] == 5 && c.workers().len() == 5).then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, _, _) = ctl(&c, &["scale", "3"]);
    assert_eq!(code, Some(0));
    eventually(T, "3 workers", || (c.workers().len() == 3).then_some(()));
    let (code, _, err) = ctl(&c, &["scale", "7"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--max-workers"), "{err}");
    // TTIN stops at the same bound (one signal at a time: signals of a kind do not queue).
    for n in 1..=3 {
        c.signal(Signal::SIGTTIN);
        c.wait_log_count(T, "SIGTTIN: one worker more", n);
    }
    c.signal(Signal::SIGTTIN);
    c.wait_log(T, "already at --max-workers");
    eventually(T, "6 workers", || (c.workers().len() == 6).then_some(()));
}

#[test]
fn a_missing_control_socket_is_one_line_naming_it() {
    let dir = TempDir::new("no-control");
    let path = dir.path().join("control.sock");
    let out = Command::new(BIN)
        .args(["status", "--control-socket"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn a_stopped_worker_is_replaced_after_the_worker_timeout() {
    let c = Clusterd::start(Opts::default().workers(2).arg("--worker-timeout").arg("3"));
    let victim = c.workers()[0];
    signal(victim, Signal::SIGSTOP);
    let stopped = Instant::now();
    eventually(Duration::from_secs(8), "the stopped worker gone", || {
        (!exists(victim)).then_some(())
    });
    eventually(Duration::from_secs(8), "2 workers again", || {
        (c.workers().len() == 2).then_some(())
    });
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}");
    let line = c.log_lines("worker hung").join("\n");
    assert!(
        line.contains(&format!("pid={victim}")) && line.contains("no heartbeat"),
        "{}",
        c.log_text()
    );
    assert_eq!(status(&c)["master"]["restarts"], 1);
    assert_eq!(c.get("/healthz").status, 200);
}

/// Waits for a worker's log line containing `needle`; the pid of the worker that wrote it.
fn worker_that_logged(c: &Clusterd, needle: &str) -> i32 {
    c.wait_log(T, needle);
    let line = c.log_lines(needle).join("");
    line.split("pid ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .expect("the worker's pid in its log line")
}

#[test]
fn a_worker_stopped_mid_request_is_killed_naming_that_request() {
    let c = Clusterd::start(Opts::default().workers(2).arg("--worker-timeout").arg("2"));
    let addr = c.addr;
    let slow = std::thread::spawn(move || {
        request(addr, "GET", "/debug/sleep/8000?token=secret", &[], b"")
    });
    let victim = worker_that_logged(&c, "debug sleep started");
    // Before the stop, status names the request (path without its query) and its age.
    let doc = c.wait_status(T, "the request in flight in status", |d| {
        d["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["pid"] == victim && w["oldest_request"]["path"] == "/debug/sleep/8000")
    });
    let w = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == victim)
        .unwrap();
    assert_eq!(w["oldest_request"]["method"], "GET", "{doc}");
    assert!(w["oldest_request"]["age_ms"].as_u64().is_some(), "{doc}");
    let table = ctl(&c, &["status"]).1;
    assert!(table.contains("GET /debug/sleep/8000 ("), "{table}");
    signal(victim, Signal::SIGSTOP);
    eventually(Duration::from_secs(8), "the stopped worker gone", || {
        (!exists(victim)).then_some(())
    });
    let hung = c.log_lines("worker hung").join("\n");
    assert!(
        hung.contains(&format!("pid={victim}")) && hung.contains("GET /debug/sleep/8000 ("),
        "{}",
        c.log_text()
    );
    assert!(!c.log_text().contains("secret"), "the query is not logged");
    assert!(
        slow.join().unwrap().is_err(),
        "the request died with its worker"
    );
    // Nothing in flight on the workers now: status shows none.
    let doc = status(&c);
    assert!(
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["oldest_request"].is_null()),
        "{doc}"
    );
}

#[test]
fn a_blocked_runtime_is_caught_by_its_heartbeat_not_only_sigstop() {
    let c = Clusterd::start(Opts::default().workers(2).arg("--worker-timeout").arg("2"));
    // A request that blocks its worker's only server thread for a minute.
    let addr = c.addr;
    let blocked = std::thread::spawn(move || request(addr, "GET", "/debug/block/60000", &[], b""));
    let victim = worker_that_logged(&c, "debug block started");
    eventually(Duration::from_secs(8), "the blocked worker gone", || {
        (!exists(victim)).then_some(())
    });
    let hung = c.log_lines("worker hung").join("\n");
    assert!(
        hung.contains(&format!("pid={victim}"))
            && hung.contains("SIGABRT")
            && hung.contains("GET /debug/block/60000"),
        "{}",
        c.log_text()
    );
    assert!(
        blocked.join().unwrap().is_err(),
        "the blocked request died with its worker"
    );
    eventually(T, "2 workers again", || {
        (c.workers().len() == 2).then_some(())
    });
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn max_requests_recycles_workers_without_a_failed_request() {
    let c = Clusterd::start(Opts::default().workers(2).arg("--max-requests").arg("300"));
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loop(c.addr, "/healthz", Vec::new(), 4, stop.clone());
    let g = c.generation();
    c.wait_status(T, "three recycles", |d| {
        d["master"]["generation"].as_u64() >= Some(g + 3) && d["master"]["reloading"] == false
    });
    stop.store(true, Ordering::Relaxed);
    let stats = join_loops(loops);
    stats.assert_clean(600);
    assert!(
        c.log_lines("recycling the worker: it answered").len() >= 3,
        "{}",
        c.log_text()
    );
    assert_eq!(
        status(&c)["master"]["restarts"],
        0,
        "recycling is no restart"
    );
}

#[test]
fn metrics_are_served_on_their_own_address_from_every_worker() {
    let port = free_port();
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--metrics-bind")
            .arg(format!("127.0.0.1:{port}")),
    );
    for _ in 0..200 {
        assert_eq!(
            request(c.addr, "GET", "/healthz", &[], b"").unwrap().status,
            200
        );
    }
    assert_eq!(c.get("/metrics").status, 404, "not on the public port");
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let r = request(metrics, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    for name in [
        "clusterd_workers 2",
        "clusterd_worker_restarts_total",
        "clusterd_http_requests_total{",
        "clusterd_http_request_duration_seconds_bucket{le=\"+Inf\"}",
        "clusterd_open_connections{",
        "clusterd_logins_total{outcome=\"shed\"}",
        "clusterd_session_store_operations_total",
        "clusterd_session_store_errors_total",
        "clusterd_accept_queue{slot=\"0\"} 0",
        "clusterd_accept_queue_max{slot=\"0\"} ",
        "clusterd_session_cache_hits_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let served: u64 = text
        .lines()
        .filter(|l| l.starts_with("clusterd_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(served >= 200, "{served}:\n{text}");
    let workers = text
        .lines()
        .filter(|l| l.starts_with("clusterd_http_requests_total{"))
        .filter_map(|l| l.split("worker=\"").nth(1)?.split('"').next())
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(workers.len(), 2, "{text}");
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let c = Clusterd::start(Opts::default().workers(2).arg("--log-format").arg("json"));
    assert_eq!(c.get("/healthz").status, 200);
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    let text = c.log_text();
    let mut roles = std::collections::HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        for key in ["timestamp", "level", "role", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        roles.insert(
            v["role"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        roles.contains("master") && roles.contains("worker"),
        "{roles:?}"
    );
    let started = text
        .lines()
        .find(|l| l.contains("\"worker started\""))
        .expect("a worker started line");
    let v: serde_json::Value = serde_json::from_str(started).unwrap();
    assert!(
        v["pid"].is_i64() && v["slot"].is_u64(),
        "fields keep their types: {started}"
    );
}

#[test]
fn the_accept_queue_of_a_stopped_workers_slot_grows_in_status() {
    let c = Clusterd::start(Opts::default().workers(2));
    let doc = c.wait_ready(Duration::from_secs(15));
    let workers = doc["workers"].as_array().unwrap().clone();
    for w in &workers {
        assert_eq!(w["queue"], 0, "{w}");
        assert!(w["queue_max"].as_u64() > Some(0), "{w}");
    }
    let stopped = workers[0]["pid"].as_i64().unwrap() as i32;
    let slot = workers[0]["slot"].clone();
    signal(stopped, Signal::SIGSTOP);
    // Connections the kernel completes and queues; about half are steered to the stopped slot.
    let conns: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(c.addr).unwrap())
        .collect();
    let queued = |d: &serde_json::Value| {
        d["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["slot"] == slot)
            .and_then(|w| w["queue"].as_u64())
    };
    let doc = c.wait_status(Duration::from_secs(5), "a queue on the stopped slot", |d| {
        queued(d) > Some(5)
    });
    let (_, text, _) = ctl(&c, &["status"]);
    signal(stopped, Signal::SIGCONT);
    assert!(text.contains("QUEUE"), "{text}");
    assert!(
        text.lines().any(|l| l.contains(&format!(" {stopped} "))
            && l.contains(&format!("{}/", queued(&doc).unwrap()))),
        "{text}"
    );
    drop(conns);
    c.wait_status(Duration::from_secs(5), "the queue drained", |d| {
        queued(d) == Some(0)
    });
}

#[test]
fn the_access_log_writes_a_json_object_per_request() {
    let mut c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--access-log")
            .arg("--log-format")
            .arg("json"),
    );
    let asked = [
        ("GET", "/healthz?secret=1", 200),
        ("GET", "/me", 401),
        ("GET", "/nowhere", 404),
        ("DELETE", "/login", 405),
    ];
    for _ in 0..5 {
        for (method, path, status) in asked {
            let r = request(c.addr, method, path, &[], b"").unwrap();
            assert_eq!(r.status, status, "{method} {path}");
        }
    }
    let access = |c: &Clusterd| -> Vec<serde_json::Value> {
        c.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    };
    eventually(T, "20 access lines", || {
        (access(&c).len() >= 20).then_some(())
    });
    let lines = access(&c);
    assert_eq!(lines.len(), 20, "one line per request");
    for (method, path, status) in asked {
        let path = path.split('?').next().unwrap();
        let of: Vec<_> = lines
            .iter()
            .filter(|v| v["method"] == method && v["path"] == path)
            .collect();
        assert_eq!(of.len(), 5, "{method} {path}: {lines:?}");
        for v in of {
            assert_eq!(v["status"], status, "{v}");
            assert_eq!(v["client"], "127.0.0.1", "{v}");
            assert!(v["bytes"].as_u64() > Some(0), "{v}");
            assert!(v["duration_ms"].as_f64() >= Some(0.0), "{v}");
            assert!(v["worker"].as_u64() >= Some(1), "{v}");
        }
    }
    assert!(!c.log_text().contains("secret"), "the query is not logged");
    // The lines of the last requests before a stop are written too.
    for _ in 0..5 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(T), Some(0));
    assert_eq!(access(&c).len(), 25, "{}", c.log_text());
}

#[test]
fn no_access_log_without_the_switch() {
    let c = Clusterd::start(Opts::default().workers(1));
    for _ in 0..5 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!c.log_text().contains("access client="), "{}", c.log_text());
}
