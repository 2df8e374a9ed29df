//! clusterd under fire: hostile files in the data dir, and the other abuse cases of an attacker
//! or an unlucky operator. Started as root (CI), the data-dir cases also pass `--user nobody`,
//! the setting in which the master chowns the data dir's files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use crate::harness::*;

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts clusterd on `data` and expects it to refuse within 5 s with exit code 2 and a message
/// containing `words`.
fn refused(data: &std::path::Path, words: &[&str]) {
    let mut opts = Opts::default().workers(1).data(data).no_wait();
    if as_root() {
        opts = opts.arg("--user").arg("nobody");
    }
    let started = Instant::now();
    let mut c = Clusterd::start(opts);
    let code = c.wait_exit(Duration::from_secs(5));
    let log = c.log_text();
    assert_eq!(code, Some(2), "exit code; log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for w in words {
        assert!(log.contains(w), "the message names {w:?}:\n{log}");
    }
}

#[test]
fn links_in_the_data_dir_are_refused_and_their_targets_untouched() {
    for name in [
        "sessions.sqlite3",
        "sessions.sqlite3-wal",
        "sessions.sqlite3-shm",
        "session.key",
    ] {
        let dir = TempDir::new("links");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A file only its owner (root, when CI runs this) may read or write.
        let target = dir.path().join("precious");
        std::fs::write(&target, b"").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, data.join(name)).unwrap();

        refused(&data, &[name, "symbolic link"]);

        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode(), after.len()),
            (before.uid(), before.gid(), before.mode(), 0),
            "{name}: the link's target keeps owner, mode and size"
        );
    }
}

#[test]
fn a_fifo_as_the_session_key_stops_the_start_instead_of_hanging_it() {
    let dir = TempDir::new("fifo");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    nix::unistd::mkfifo(&data.join("session.key"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    refused(&data, &["session.key", "FIFO"]);
    // A configured key file that is a FIFO, too.
    let key = dir.path().join("key.fifo");
    nix::unistd::mkfifo(&key, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut c = Clusterd::start(
        Opts::default()
            .workers(1)
            .arg("--session-key-file")
            .arg(key.to_str().unwrap())
            .no_wait(),
    );
    assert_eq!(
        c.wait_exit(Duration::from_secs(5)),
        Some(2),
        "{}",
        c.log_text()
    );
    assert!(c.log_text().contains("FIFO"), "{}", c.log_text());
}

#[test]
fn the_embedded_store_is_created_private() {
    let c = Clusterd::start(Opts::default().workers(1));
    let db = c.data.join("sessions.sqlite3");
    let mode = std::fs::metadata(&db).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", db.display());
    assert_eq!(c.get("/healthz").status, 200);
}

/// Root without CAP_SETUID and CAP_SETGID (dropped from the bounding set by `setpriv` before
/// exec) cannot switch users: the workers report a configuration error and the master stops
/// with exit code 4 instead of forking them again and again.
#[test]
#[ignore = "needs root: run `cargo test -- --include-ignored` as root (CI does)"]
fn a_failed_privilege_drop_stops_the_service_with_exit_code_4() {
    let mut c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--user")
            .arg("nobody")
            .no_wait()
            .wrapped(&["setpriv", "--bounding-set", "-setuid,-setgid"]),
    );
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)),
        Some(4),
        "{}",
        c.log_text()
    );
    let log = c.log_text();
    assert!(log.contains("dropping privileges"), "{log}");
    assert!(
        log.lines().filter(|l| l.contains("worker started")).count() <= 2,
        "no respawns:\n{log}"
    );
}

/// Sends `n` logins at once (each on its own connection, all connected before any is sent)
/// and returns the responses. With `spread`, login *i* is for user name `user<i>` from its own
/// loopback address 127.0.x.y, so that no throttle counter is shared and every login reaches
/// the hashing pool; otherwise all are alice's from 127.0.0.1.
fn login_storm(c: &Clusterd, n: usize, password: &str, spread: bool) -> Vec<Response> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let user = if spread {
                format!("user{i}")
            } else {
                "alice".into()
            };
            let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
            let source: std::net::SocketAddr = if spread {
                ([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 0).into()
            } else {
                ([127, 0, 0, 1], 0).into()
            };
            let (addr, barrier) = (c.addr, barrier.clone());
            std::thread::spawn(move || {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .unwrap();
                socket.bind(&source.into()).unwrap();
                socket.connect(&addr.into()).unwrap();
                let mut s: std::net::TcpStream = socket.into();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                barrier.wait();
                write_request(
                    &mut s,
                    "POST",
                    "/login",
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                    false,
                )
                .unwrap();
                read_response(&mut std::io::BufReader::new(s)).expect("an answer")
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn statuses(rs: &[Response]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in rs {
        *m.entry(r.status).or_default() += 1;
    }
    m
}

#[test]
fn concurrent_guesses_cannot_pass_the_limit() {
    let r = Redis::start();
    // Both stores: Redis (a Lua script) and the embedded SQLite (an IMMEDIATE transaction).
    for opts in [Opts::default().redis(&r), Opts::default()] {
        guesses_stop_at_the_limit(&Clusterd::start(opts.workers(2)));
    }
}

fn guesses_stop_at_the_limit(c: &Clusterd) {
    let rs = login_storm(c, 100, "wrong", false);
    let s = statuses(&rs);
    let unauthorized = s.get(&401).copied().unwrap_or(0);
    assert!(unauthorized <= 5, "at most the limit was verified: {s:?}");
    for r in &rs {
        assert!([401, 429, 503].contains(&r.status), "{s:?}");
        if r.status != 401 {
            assert!(
                r.header("retry-after").is_some(),
                "{} without Retry-After",
                r.status
            );
        }
    }
    // The guesses from this address lock alice out of this address, within the limit.
    let right = post_login(c, "wonderland");
    assert_eq!(right.status, 429, "{}", right.text());
}

fn post_login(c: &Clusterd, password: &str) -> Response {
    let body = format!(r#"{{"username":"alice","password":"{password}"}}"#);
    request(
        c.addr,
        "POST",
        "/login",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
}

/// Sum of the peak resident memory (VmHWM) of the master and its workers, in bytes.
fn peak_rss(c: &Clusterd) -> u64 {
    std::iter::once(c.pid())
        .chain(c.workers())
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        })
        .sum()
}

#[test]
fn a_login_storm_is_answered_within_bounded_memory() {
    let c = Clusterd::start(Opts::default().workers(2));
    // Alice's 300 logins from one address: the throttle answers most of them.
    let rs = login_storm(&c, 300, "wonderland", false);
    let s = statuses(&rs);
    for r in &rs {
        assert!([200, 429, 503].contains(&r.status), "{s:?}: {}", r.text());
        if r.status != 200 {
            assert!(r.header("retry-after").is_some(), "{s:?}");
        }
    }
    assert!(
        s.get(&200).copied().unwrap_or(0) > 0,
        "some logins got through: {s:?}"
    );
    // 300 user names from 300 addresses: every one reaches the hashing pool, which verifies
    // what it can and sheds the rest with 503 at once.
    let rs = login_storm(&c, 300, "guess", true);
    let s = statuses(&rs);
    for r in &rs {
        assert!([401, 503].contains(&r.status), "{s:?}: {}", r.text());
        if r.status == 503 {
            assert!(r.header("retry-after").is_some(), "{s:?}");
        }
    }
    assert!(
        s.get(&503).copied().unwrap_or(0) > 0,
        "the queue overflowed: {s:?}"
    );
    let peak = peak_rss(&c);
    assert!(
        peak <= 256 << 20,
        "master + workers peaked at {} MiB: {s:?}",
        peak >> 20
    );
}

#[test]
fn state_changing_posts_from_another_site_are_refused() {
    let c = Clusterd::start(Opts::default().workers(1));
    let body = br#"{"username":"alice","password":"wonderland"}"#;
    let json = ("content-type", "application/json");
    let cases: [(&[(&str, &str)], u16); 5] = [
        (&[json, ("sec-fetch-site", "cross-site")], 403),
        (&[json, ("origin", "http://evil.example")], 403),
        (&[json, ("origin", "null")], 403),
        (&[json, ("sec-fetch-site", "same-origin")], 200),
        (&[json], 200),
    ];
    for (headers, want) in cases {
        let r = request(c.addr, "POST", "/login", headers, body).unwrap();
        assert_eq!(r.status, want, "{headers:?}: {}", r.text());
    }
    // The harness sends `Host: 127.0.0.1`; an Origin naming that host is the same site.
    let r = request(
        c.addr,
        "POST",
        "/login",
        &[json, ("origin", "http://127.0.0.1")],
        body,
    )
    .unwrap();
    assert_eq!(r.status, 200, "same origin: {}", r.text());
    let r = request(
        c.addr,
        "POST",
        "/logout",
        &[("sec-fetch-site", "cross-site")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403);
}

/// Sends a request head announcing 100 bytes of body and only 6 of them, then waits for what
/// the server does; returns the status (if any) and how long it took to close the connection.
fn stalled_body(c: &Clusterd, method: &str, path: &str) -> (Option<u16>, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n123456"
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let status = String::from_utf8_lossy(&all)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    (status, start.elapsed())
}

#[test]
fn a_stalled_body_is_answered_408_and_closed_at_the_read_timeout() {
    let c = Clusterd::start(Opts::default().workers(1).arg("--read-timeout").arg("2"));
    let (status, took) = stalled_body(&c, "POST", "/login");
    assert_eq!(status, Some(408));
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // A route that never reads its body answers, and the connection is not kept.
    let (status, took) = stalled_body(&c, "GET", "/healthz");
    assert_eq!(status, Some(200));
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}

#[test]
fn a_stalled_body_does_not_hold_up_a_stop_for_the_graceful_timeout() {
    // The harness gives workers a 10 s graceful timeout; the read timeout ends the stalled
    // request (and so the drain) after 2.
    let mut c = Clusterd::start(Opts::default().workers(1).arg("--read-timeout").arg("2"));
    let addr = c.addr;
    let stalled = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n123")
            .unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        c.wait_exit(Duration::from_secs(9)),
        Some(0),
        "{}",
        c.log_text()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        start.elapsed()
    );
    stalled.join().unwrap();
}

#[test]
fn more_connections_than_the_fd_limit_leave_the_workers_alive_and_serving_after() {
    // Each process may hold 96 descriptors; 400 connections are far more than two workers can.
    let c = Clusterd::start(Opts::default().workers(2).wrapped(&[
        "sh",
        "-c",
        "ulimit -n 96; exec \"$0\" \"$@\"",
    ]));
    let workers = c.workers();
    let flood: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(c.addr).ok())
        .collect();
    assert!(
        flood.len() > 200,
        "the kernel queued the flood: {}",
        flood.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(flood);
    // actix backs off 500 ms after EMFILE and accepts again once descriptors are free.
    eventually(Duration::from_secs(10), "serving again", || {
        request(c.addr, "GET", "/healthz", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(c.workers(), workers, "no worker died or was replaced");
}

/// What one request of [`me_loop`] got (a status or an I/O error), and how long it took.
type Outcome = (Result<u16, String>, Duration);

/// Requests `/me` with `cookie` on fresh connections from 4 threads until `stop`; returns every
/// outcome.
fn me_loop(
    addr: std::net::SocketAddr,
    cookie: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Outcome>>> {
    (0..4)
        .map(|_| {
            let (cookie, stop) = (cookie.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                    let t = Instant::now();
                    let r = request(addr, "GET", "/me", &[("cookie", &cookie)], b"");
                    out.push((r.map(|r| r.status).map_err(|e| e.to_string()), t.elapsed()));
                }
                out
            })
        })
        .collect()
}

#[test]
fn redis_frozen_then_killed_under_load_gives_200_or_503_fast_and_no_restart() {
    let mut redis = Redis::start();
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let workers = c.workers();
    let cookie = c.login("alice", "wonderland");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops = me_loop(c.addr, cookie, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    redis.freeze(true);
    std::thread::sleep(Duration::from_millis(1500));
    redis.freeze(false);
    std::thread::sleep(Duration::from_millis(500));
    redis.stop();
    std::thread::sleep(Duration::from_millis(1500));
    redis.restart();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<_> = loops.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let mut seen = std::collections::BTreeMap::new();
    for (r, took) in &results {
        // 401 after the restart: this Redis keeps nothing on disk, so the session is gone.
        let ok = matches!(r, Ok(200 | 503 | 401));
        assert!(ok, "{r:?}");
        assert!(*took < Duration::from_millis(1500), "{r:?} took {took:?}");
        *seen.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    assert!(
        seen.contains_key("Ok(503)") && seen.contains_key("Ok(200)"),
        "{seen:?}"
    );
    assert_eq!(c.workers(), workers, "no worker restarted: {seen:?}");
}

#[test]
fn slow_headers_are_cut_off_while_others_are_served() {
    use std::io::{Read, Write};
    let c = Clusterd::start(Opts::default().workers(2).arg("--read-timeout").arg("2"));
    let slow: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(c.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
                .unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    assert_eq!(c.get("/healthz").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let start = Instant::now();
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        // The server closes it (with or without a 408) at the deadline.
        let _ = s.read_to_end(&mut buf);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        start.elapsed()
    );
}

/// 200 workers killed with SIGKILL under a load of new connections: no connection is refused
/// (the slot's socket stays open in the master while its worker is replaced). Only requests
/// already on the killed worker may fail.
#[test]
#[ignore = "slow soak (about 2 minutes: the crash-loop back-off spaces the respawns); CI runs it in its own step"]
fn a_soak_of_200_kills_under_load_refuses_no_connection() {
    let c = Clusterd::start(Opts::default().workers(2));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, refused, served, addr) =
                (stop.clone(), refused.clone(), served.clone(), c.addr);
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let end = Instant::now() + Duration::from_secs(120);
                while !stop.load(Relaxed) && Instant::now() < end {
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        Err(_) => {
                            refused.fetch_add(1, Relaxed);
                        }
                        Ok(mut s) => {
                            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            if write_request(&mut s, "GET", "/healthz", &[], b"", false).is_ok()
                                && read_response(&mut std::io::BufReader::new(s))
                                    .is_ok_and(|r| r.status == 200)
                            {
                                served.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..200 {
        let victim = c.workers()[i % 2];
        signal(victim, nix::sys::signal::Signal::SIGKILL);
        c.wait_status(Duration::from_secs(20), "the victim replaced", |d| {
            let w = d["workers"].as_array().unwrap();
            w.len() == 2
                && w.iter()
                    .all(|w| w["state"] == "ready" && w["pid"].as_i64() != Some(i64::from(victim)))
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in clients {
        h.join().unwrap();
    }
    let (refused, served) = (
        refused.load(std::sync::atomic::Ordering::Relaxed),
        served.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(refused, 0, "refused connections ({served} served)");
    assert!(served > 200, "the load ran: {served}");
    assert_eq!(c.log_lines("worker died").len(), 200);
}

/// The control socket of a master run as root with `--user`: by default in root's own
/// directory, not the data dir the workers' user owns; and a server that the workers' user runs
/// (here a whole clusterd of its own) is not believed by root's `clusterd status` or `reload`.
#[test]
#[ignore = "needs root: run `cargo test -- --include-ignored` as root (CI does)"]
fn the_workers_user_cannot_answer_for_the_master() {
    assert!(nix::unistd::Uid::effective().is_root(), "run as root");
    // No --control-socket: the default place for a master run as root.
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .arg("--user")
            .arg("nobody")
            .default_control(),
    );
    assert!(
        c.control.starts_with("/run/clusterd"),
        "{}",
        c.control.display()
    );
    assert_eq!(c.status()["master"]["workers"], 1);
    let dir = std::fs::metadata("/run/clusterd").unwrap();
    assert_eq!(
        (dir.uid(), dir.mode() & 0o077),
        (0, 0),
        "mode {:o}",
        dir.mode()
    );
    // The workers' user can neither replace the socket nor put one beside it.
    let planted = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "touch"])
        .arg(c.control.with_extension("planted"))
        .status()
        .expect("setpriv: apt-get install -y util-linux");
    assert!(!planted.success(), "nobody wrote into /run/clusterd");

    // A clusterd the workers' user runs on a socket it can put where root might look (in
    // /tmp, which is root's and sticky): a fake master.
    let fake_dir = TempDir::new("control-fake");
    std::os::unix::fs::chown(fake_dir.path(), Some(65534), Some(65534)).unwrap();
    let fake_sock = std::env::temp_dir().join(format!("clusterd-fake-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&fake_sock);
    let _fake = Clusterd::start(
        Opts::default()
            .workers(1)
            .data(&fake_dir.path().join("data"))
            .arg("--control-socket")
            .arg(fake_sock.to_str().unwrap())
            .no_wait()
            .wrapped(&[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]),
    );
    eventually(Duration::from_secs(10), "the fake socket", || {
        fake_sock.exists().then_some(())
    });
    for ask in [&["status", "--json"][..], &["reload"][..]] {
        let out = std::process::Command::new(BIN)
            .args(ask)
            .arg("--control-socket")
            .arg(&fake_sock)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{ask:?} believed uid 65534's server"
        );
        assert!(err.contains("not root or this user"), "{err}");
    }
    let _ = std::fs::remove_file(&fake_sock);
}

/// DNS rebinding: a page elsewhere that a browser fetches under a name rebound to loopback
/// sends that name as Host; the metrics server answers only its own names.
#[test]
fn the_metrics_server_answers_only_its_own_host_names() {
    let port = free_port();
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .arg("--metrics-bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-allowed-hosts")
            .arg("prom.test"),
    );
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let with_host = |host: &str| {
        request(metrics, "GET", "/status.json", &[("host", host)], b"")
            .unwrap()
            .status
    };
    assert_eq!(with_host("attacker.example"), 421);
    assert_eq!(with_host(&format!("attacker.example:{port}")), 421);
    assert_eq!(with_host(&format!("127.0.0.1:{port}")), 200);
    assert_eq!(with_host(&format!("localhost:{port}")), 200);
    assert_eq!(with_host("prom.test"), 200);
    drop(c);
}

/// One login for alice from the loopback address `from`.
fn login_from(c: &Clusterd, from: [u8; 4], password: &str) -> u16 {
    let body = format!(r#"{{"username":"alice","password":"{password}"}}"#);
    let json = [("content-type", "application/json")];
    request_from(from, c.addr, "POST", "/login", &json, body.as_bytes())
        .unwrap()
        .status
}

/// 50 failures for alice from 10 networks reach her cross-network limit; her right password
/// from a network with no failure still logs her in, and from one with failures it waits.
/// (A login is how a password is tried, so a clean network's try counts whatever the password:
/// at most 5 per /24 or IPv6 /48 and user.)
#[test]
fn the_user_limit_does_not_lock_out_the_right_password_from_a_clean_network() {
    let c = Clusterd::start(Opts::default().workers(2));
    for net in 1..=10u8 {
        for _ in 0..5 {
            assert_eq!(login_from(&c, [127, 0, 2, net], "wrong"), 401);
        }
    }
    // The user's limit is reached, but a network without failures gets its try: a few per
    // wider network (/24), then those wait too.
    for net in 11..=15u8 {
        assert_eq!(
            login_from(&c, [127, 0, 2, net], "wrong"),
            401,
            "clean network {net}"
        );
    }
    assert_eq!(
        login_from(&c, [127, 0, 2, 16], "wrong"),
        429,
        "the /24's tries are spent"
    );
    assert_eq!(
        login_from(&c, [127, 0, 2, 1], "wonderland"),
        429,
        "a network that guessed"
    );
    assert_eq!(
        login_from(&c, [127, 0, 3, 1], "wonderland"),
        200,
        "a clean network"
    );
}

/// A state variable that leaked into (or was planted in) a fresh start's environment names
/// processes that are not this master's children: they are dropped, never signalled.
#[test]
fn a_forged_state_variable_signals_nothing_it_did_not_fork() {
    use std::os::fd::AsRawFd;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let victim = sleeper.id() as i32;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The previous release's format (no writer pid): one slot on fd 3, one "worker" that is
    // the test's `sleep`, stopping with its kill deadline already past.
    let state = format!(
        r#"{{"version":1,"sockets":{{"mode":"per-worker","addr":"127.0.0.1:{port}","backlog":128,"slots":[[3,false,1]],"fallback":[],"group":[1],"closing":[],"next_serial":2,"steer":false}},"workers":[{{"id":1,"slot":0,"pid":{victim},"pipe":null,"healthy":null,"ready":true,"age_ms":5000,"ready_age_ms":4000,"retiring":[0,false],"closing_socket":null}}],"next_id":2,"target":1,"configured_workers":1,"restarts":0,"failures":0,"respawn_in_ms":0}}"#
    );
    let mut opts = Opts::default()
        .workers(1)
        .port(port)
        .env("CLUSTERD_UPGRADE_STATE", state);
    opts.fd3 = Some(listener.as_raw_fd());
    let c = Clusterd::start(opts);
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(victim), "the forged worker was signalled");
    assert_eq!(
        c.log_lines("not a child of this process").len(),
        1,
        "{}",
        c.log_text()
    );
    assert_eq!(c.get("/healthz").status, 200);
    drop(c);
    assert!(alive(victim), "signalled at the stop");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// Sends `first` on a new connection to `c`, reads its answer, then trickles `rest` one byte
/// every 2 s; returns how long after the trickle began the server closed the connection.
fn trickle_after(c: &Clusterd, first: &[u8], rest: &[u8]) -> Duration {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    s.write_all(first).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let began = Instant::now();
    for b in rest.iter().cycle() {
        if began.elapsed() > Duration::from_secs(20) {
            break;
        }
        if s.write_all(&[*b]).is_err() {
            return began.elapsed();
        }
        // A read that returns 0 (closed) or an error ends it; a timeout is the 2 s pause.
        match s.read(&mut buf) {
            Ok(0) => return began.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return began.elapsed(),
        }
    }
    began.elapsed()
}

/// `--read-timeout` bounds every head on a keep-alive connection, not only the first, and the
/// rest of a chunked body the handler did not read; keep-alive itself stays on.
#[test]
fn a_later_head_or_an_unread_body_trickled_in_is_cut() {
    let c = Clusterd::start(Opts::default().workers(1).arg("--read-timeout").arg("3"));
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let took = trickle_after(&c, head, b"GET /healthz HTTP/1.1\r\nX-Slow: yes\r\n");
    assert!(
        took <= Duration::from_secs(6),
        "second head cut after {took:?}"
    );
    let chunked = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let took = trickle_after(&c, chunked, b"1\r\na\r\n");
    assert!(
        took <= Duration::from_secs(6),
        "unread body cut after {took:?}"
    );
    // Keep-alive still works: two requests on one connection.
    let mut conn = KeepAlive::new(c.addr);
    assert_eq!(conn.get("/healthz", &[]).unwrap().status, 200);
    assert_eq!(conn.get("/healthz", &[]).unwrap().status, 200);
}

/// Behind an L4 proxy that speaks the PROXY protocol every connection names its client: the
/// throttle keys on that client, and a connection without the header gets no answer.
#[test]
fn with_the_proxy_protocol_the_header_names_the_client() {
    use std::io::{Read, Write};
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--proxy-protocol")
            .arg("--read-timeout")
            .arg("2")
            .no_wait(),
    );
    c.wait_ready(Duration::from_secs(20));
    // What HAProxy's send-proxy (v1) or send-proxy-v2 write before the client's bytes.
    let v1 =
        |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", c.port).into_bytes();
    let v2 = |client: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&client);
        h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40]);
        h.extend_from_slice(&c.port.to_be_bytes());
        h
    };
    let login = |header: Vec<u8>, password: &str| -> u16 {
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&header).unwrap();
        let body = format!(r#"{{"username":"alice","password":"{password}"}}"#);
        write_request(
            &mut s,
            "POST",
            "/login",
            &[("content-type", "application/json")],
            body.as_bytes(),
            false,
        )
        .unwrap();
        read_response(&mut std::io::BufReader::new(s))
            .unwrap()
            .status
    };
    let guesses: Vec<u16> = (0..6).map(|_| login(v1("203.0.113.7"), "wrong")).collect();
    assert_eq!(guesses, [401, 401, 401, 401, 401, 429]);
    assert_eq!(
        login(v2([198, 51, 100, 9]), "wonderland"),
        200,
        "another client"
    );
    assert_eq!(
        login(v1("203.0.113.7"), "wonderland"),
        429,
        "the guessing client"
    );
    // Plain HTTP without the header: closed unanswered.
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&buf)
    );
    // Nothing at all: closed unanswered within the head deadline (2 s, and a little).
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}
