//! The session cache in the workers: what it saves (Redis commands), and that it never serves
//! what may be stale: a logout anywhere, a Redis that dies or freezes, a Redis that refuses
//! tracking. Real Redis, real binaries, on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// The sum of one counter over `status --json` (0 when absent).
fn counter(c: &Clusterd, name: &str) -> u64 {
    c.status()["counters"][name].as_u64().unwrap_or(0)
}

/// Kept-alive connections to every worker of every host, warmed: each has answered 200 for
/// `cookie` twice (the second from its cache).
fn warm(hosts: &[&Clusterd], workers: usize, cookie: &str) -> Vec<KeepAlive> {
    let mut conns = Vec::new();
    for c in hosts {
        for (id, mut conn) in connection_per_worker(c.addr, workers) {
            for _ in 0..2 {
                let r = conn.get("/me", &[("cookie", cookie)]).unwrap();
                assert_eq!(r.status, 200, "worker {id}: {}", r.text());
            }
            conns.push(conn);
        }
    }
    conns
}

fn post(addr: std::net::SocketAddr, path: &str, cookie: &str) -> Response {
    request(addr, "POST", path, &[("cookie", cookie)], b"").unwrap()
}

/// 20 trials: log in, let every worker of every host cache the session, log out on one
/// worker, and 50 ms later ask every worker: 401 everywhere.
fn logout_is_seen_everywhere_within_50ms(hosts: &[&Clusterd], workers: usize) {
    let hits_before = counter(hosts[0], "clusterd_session_cache_hits_total");
    for trial in 0..20 {
        let cookie = hosts[0].login("alice", "wonderland");
        let mut conns = warm(hosts, workers, &cookie);
        let r = post(hosts[trial % hosts.len()].addr, "/logout", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
        let out = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        for (i, conn) in conns.iter_mut().enumerate() {
            let r = conn.get("/me", &[("cookie", &cookie)]).unwrap();
            assert_eq!(
                r.status,
                401,
                "trial {trial}: connection {i} (worker {:?}) still signed in {:?} after the logout",
                r.worker(),
                out.elapsed()
            );
        }
    }
    // The test can fail: the sessions were answered from the caches it checks.
    let hits = counter(hosts[0], "clusterd_session_cache_hits_total") - hits_before;
    assert!(hits >= 20 * workers as u64, "only {hits} cache hits");
}

#[test]
fn a_logout_is_seen_by_every_worker_of_every_host_within_50ms() {
    let redis = Redis::start();
    let dir = TempDir::new("cache-key");
    let key = dir.path().join("session.key");
    std::fs::write(&key, (0..96u8).collect::<Vec<_>>()).unwrap();
    let host = || {
        Clusterd::start(
            Opts::default()
                .workers(2)
                .redis(&redis)
                .arg("--session-key-file")
                .arg(key.to_str().unwrap()),
        )
    };
    let (a, b) = (host(), host());
    logout_is_seen_everywhere_within_50ms(&[&a, &b], 2);
}

#[test]
fn a_logout_is_seen_by_every_worker_within_50ms_in_the_embedded_store() {
    let c = Clusterd::start(Opts::default().workers(3));
    logout_is_seen_everywhere_within_50ms(&[&c], 3);
}

/// Commands Redis ran in all, from `INFO commandstats`.
fn commands(redis: &Redis) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn warm_sessions_cost_redis_a_few_commands_a_second_not_one_per_request() {
    let redis = Redis::start();
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let cookies: Vec<String> = (0..10).map(|_| c.login("alice", "wonderland")).collect();
    for cookie in &cookies {
        warm(&[&c], 2, cookie);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let before = commands(&redis);
    let loops: Vec<_> = cookies
        .iter()
        .take(4)
        .flat_map(|cookie| {
            request_loop(
                c.addr,
                "/me",
                vec![("cookie".into(), cookie.clone())],
                1,
                stop.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let during = commands(&redis) - before;
    stop.store(true, Ordering::Relaxed);
    let stats = join_loops(loops);
    stats.assert_clean(500);
    assert!(
        during <= 150,
        "{during} Redis commands during 5 s of {} signed-in requests:\n{}",
        stats.ok,
        redis.cli(&["INFO", "commandstats"])
    );
    let status = c.status();
    assert!(status["counters"]["clusterd_session_cache_hits_total"].as_u64() > Some(500));
    assert!(status["counters"]["clusterd_session_cache_misses_total"].as_u64() >= Some(1));
    let (_, text, _) = c.ctl(&["status"]);
    assert!(text.contains("clusterd_session_cache_hits_total"), "{text}");
}

/// Every answer of a /me loop on kept-alive connections: when it was sent, its status.
fn answers_during(
    c: &Clusterd,
    cookie: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, u16)>> {
    let (addr, cookie) = (c.addr, cookie.to_string());
    std::thread::spawn(move || {
        let mut conns: Vec<KeepAlive> = connection_per_worker(addr, 2)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for conn in &mut conns {
                let sent = Instant::now();
                let status = conn
                    .get("/me", &[("cookie", &cookie)])
                    .map_or(0, |r| r.status);
                seen.push((sent, status));
            }
        }
        seen
    })
}

/// From a second after the fault, every answer is 503 (none from a cache); before it, a 200
/// is possible only until the worker could know; afterwards the same session works again.
fn nothing_is_served_from_the_cache_a_second_after(
    fault: impl FnOnce(&mut Redis),
    recover: impl FnOnce(&mut Redis),
    redis: &mut Redis,
) {
    let c = Clusterd::start(Opts::default().workers(2).redis(redis));
    let cookie = c.login("alice", "wonderland");
    warm(&[&c], 2, &cookie);
    let stop = Arc::new(AtomicBool::new(false));
    let answers = answers_during(&c, &cookie, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let at = Instant::now();
    fault(redis);
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let seen = answers.join().unwrap();
    recover(redis);
    let late: Vec<_> = seen
        .iter()
        .filter(|(sent, _)| *sent >= at + Duration::from_secs(1))
        .collect();
    assert!(
        late.len() >= 4,
        "too few answers after the fault: {}",
        late.len()
    );
    assert!(
        late.iter().all(|(_, s)| *s == 503),
        "answers sent from 1 s after the fault on: {:?}",
        late.iter().map(|(_, s)| s).collect::<Vec<_>>()
    );
    assert!(seen.iter().any(|(sent, s)| *sent < at && *s == 200));
    eventually(T, "the session works again", || {
        (request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"").is_ok_and(|r| r.status == 200))
            .then_some(())
    });
    for (id, mut conn) in connection_per_worker(c.addr, 2) {
        let r = conn.get("/me", &[("cookie", &cookie)]).unwrap();
        assert_eq!(
            r.status,
            200,
            "worker {id} after the recovery: {}",
            r.text()
        );
    }
}

#[test]
fn a_frozen_redis_stops_the_caches_within_a_second() {
    let mut redis = Redis::start();
    nothing_is_served_from_the_cache_a_second_after(
        |r| r.freeze(true),
        |r| r.freeze(false),
        &mut redis,
    );
}

#[test]
fn a_killed_redis_stops_the_caches_and_nobody_is_logged_out_when_it_returns() {
    // Persistence on, so the sessions survive the kill as a production Redis's would.
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    nothing_is_served_from_the_cache_a_second_after(|r| r.stop(), |r| r.restart(), &mut redis);
}

#[test]
fn a_redis_that_refuses_client_tracking_gets_uncached_reads_and_one_warning() {
    let redis = Redis::start_with(&["--rename-command", "CLIENT", ""]);
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let cookie = c.login("alice", "wonderland");
    warm(&[&c], 2, &cookie);
    let before = commands(&redis);
    for (_, mut conn) in connection_per_worker(c.addr, 2) {
        for _ in 0..10 {
            assert_eq!(conn.get("/me", &[("cookie", &cookie)]).unwrap().status, 200);
        }
    }
    assert!(commands(&redis) - before >= 20, "every read went to Redis");
    // One warning per server thread that met the refusal, not one per request.
    let warned = c.log_lines("session reads are not cached").len();
    assert!(
        (1..=2).contains(&warned),
        "{warned} warnings:\n{}",
        c.log_text()
    );
    assert_eq!(counter(&c, "clusterd_session_cache_hits_total"), 0);
}
