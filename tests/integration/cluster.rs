//! The process model: workers, respawn, crash loops, signals, master death.

use std::collections::HashSet;
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// Starts a slow request in a thread and returns once the worker logged that it is in flight.
fn slow_request(c: &Clusterd, ms: u64) -> std::thread::JoinHandle<std::io::Result<Response>> {
    let before = c.log_lines("debug sleep started").len();
    let addr = c.addr;
    let h =
        std::thread::spawn(move || request(addr, "GET", &format!("/debug/sleep/{ms}"), &[], b""));
    c.wait_log_count(T, "debug sleep started", before + 1);
    h
}

#[test]
fn every_worker_serves_and_ps_tells_them_apart() {
    let c = Clusterd::start(Opts::default().workers(3));
    let workers = c.workers();
    assert_eq!(workers.len(), 3, "three worker processes");
    assert!(
        cmdline(c.pid()).starts_with("clusterd: master"),
        "master title: {}",
        cmdline(c.pid())
    );
    for w in &workers {
        assert!(
            cmdline(*w).starts_with("clusterd: worker "),
            "worker title: {}",
            cmdline(*w)
        );
    }
    let mut seen = HashSet::new();
    for (id, mut conn) in connection_per_worker(c.addr, 3) {
        let r = conn.get("/healthz", &[]).unwrap();
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["status"], "ok");
        assert_eq!(j["worker_id"].as_u64(), Some(id));
        seen.insert(j["worker_pid"].as_i64().unwrap() as i32);
    }
    assert_eq!(
        seen,
        workers.into_iter().collect(),
        "every worker pid answered"
    );
    let r = c.get("/no/such/route");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");
}

#[test]
fn serves_on_ipv6_loopback() {
    let c = Clusterd::start(Opts::default().workers(2).ipv6());
    assert!(c.addr.is_ipv6());
    assert_eq!(c.get("/healthz").status, 200);
    assert!(c.log_text().contains("addr=[::1]:"), "{}", c.log_text());
}

#[test]
fn a_killed_worker_is_replaced_and_reaped() {
    let c = Clusterd::start(Opts::default().workers(2));
    let before = c.workers();
    let victim = before[0];
    signal(victim, Signal::SIGKILL);
    let after = eventually(T, "a replacement worker", || {
        let w = c.workers();
        (w.len() == 2 && !w.contains(&victim)).then_some(w)
    });
    assert!(after.contains(&before[1]), "the other worker kept running");
    assert!(!exists(victim), "the dead worker was reaped (no zombie)");
    let line = c.log_lines("worker died").join("\n");
    assert!(
        line.contains(&format!("pid={victim}")) && line.contains("SIGKILL"),
        "death logged: {line}"
    );
    let new = *after.iter().find(|p| **p != before[1]).unwrap();
    eventually(T, "the replacement serving", || {
        (c.get("/healthz").json()["worker_pid"].as_i64() == Some(new as i64)).then_some(())
    });
}

#[test]
fn a_connection_waits_in_the_backlog_while_the_only_worker_is_dead() {
    let c = Clusterd::start(Opts::default().workers(1));
    let worker = c.workers()[0];
    // Freeze the master so it cannot respawn yet, kill the only worker, connect.
    c.signal(Signal::SIGSTOP);
    signal(worker, Signal::SIGKILL);
    eventually(T, "worker dead", || (!alive(worker)).then_some(()));
    let mut stream =
        TcpStream::connect(c.addr).expect("connect is accepted by the kernel, not refused");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write_request(&mut stream, "GET", "/healthz", &[], b"", false).unwrap();
    c.signal(Signal::SIGCONT);
    let r = read_response(&mut BufReader::new(stream)).expect("served by the replacement");
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["worker_pid"].as_i64(), Some(worker as i64));
}

#[test]
fn a_crash_loop_backs_off_and_recovers() {
    let dir = TempDir::new("crash");
    let flag = dir.path().join("fail");
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );
    let first = c.workers()[0];
    std::fs::write(&flag, "3").unwrap();
    signal(first, Signal::SIGKILL);
    // Delays 0, 100, 200, 400, 800, 1600 ms: about six forks in three seconds. A fork storm
    // would make thousands.
    c.wait_log_count(T, "respawning in 800ms", 1);
    std::thread::sleep(Duration::from_millis(1500));
    let started = c.log_lines("worker started").len();
    assert!(
        (5..=9).contains(&started),
        "forks during the crash loop: {started}\n{}",
        c.log_text()
    );
    assert!(c.log_text().contains("failed to boot (code 3)"));
    std::fs::remove_file(&flag).unwrap();
    c.wait_ready(Duration::from_secs(20));
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn a_worker_config_error_stops_the_master() {
    let dir = TempDir::new("config-error");
    let flag = dir.path().join("fail");
    std::fs::write(&flag, "4").unwrap();
    let mut c = Clusterd::start(
        Opts::default()
            .workers(2)
            .no_wait()
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );
    assert_eq!(c.wait_exit(T), Some(4), "log:\n{}", c.log_text());
    assert!(
        c.log_text().contains("rejected the configuration"),
        "{}",
        c.log_text()
    );
    assert!(
        c.log_lines("worker started").len() <= 3,
        "no respawns after a config error"
    );
}

#[test]
fn term_lets_the_request_in_flight_finish() {
    let mut c = Clusterd::start(Opts::default().workers(2));
    let workers = c.workers();
    let slow = slow_request(&c, 1500);
    c.signal(Signal::SIGTERM);
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(T), Some(0), "log:\n{}", c.log_text());
    for w in workers {
        assert!(!exists(w), "worker {w} left behind");
    }
    assert!(
        TcpStream::connect(c.addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn ctrl_c_in_a_terminal_is_a_graceful_stop() {
    let mut c = Clusterd::start(Opts::default().workers(2));
    let slow = slow_request(&c, 1500);
    // A terminal sends SIGINT to the whole foreground process group, workers included.
    killpg(Pid::from_raw(c.pid()), Signal::SIGINT).unwrap();
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200);
    assert_eq!(c.wait_exit(T), Some(0), "log:\n{}", c.log_text());
}

#[test]
fn quit_stops_at_once() {
    let mut c = Clusterd::start(Opts::default().workers(2));
    let workers = c.workers();
    let slow = slow_request(&c, 8000);
    let t = Instant::now();
    c.signal(Signal::SIGQUIT);
    assert_eq!(c.wait_exit(T), Some(0), "log:\n{}", c.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "fast stop took {:?}",
        t.elapsed()
    );
    let r = slow.join().unwrap();
    assert!(
        r.as_ref().map_or(true, |r| r.status != 200),
        "the 8 s request was cut: {r:?}"
    );
    for w in workers {
        assert!(!exists(w), "worker {w} left behind");
    }
}

#[test]
fn hup_replaces_every_worker_without_a_failed_request() {
    let c = Clusterd::start(Opts::default().workers(2));
    let old = c.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loop(c.addr, "/healthz", Vec::new(), 4, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    eventually(T, "old workers gone", || {
        old.iter().all(|p| !exists(*p)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stats = join_loops(loops);
    let new = c.workers();
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "every worker replaced: {old:?} -> {new:?}"
    );
    stats.assert_clean(50);
    // Four processes logged at once during the reload: no line was torn.
    assert_whole_lines(&c.log_text());
    assert!(
        c.log_lines("did not stop in time").is_empty(),
        "old workers stopped by themselves:\n{}",
        c.log_text()
    );
}

/// actix's request-handling threads in a process (actix names them "actix-rt|system:N|arbiter:M",
/// cut to 15 bytes), once the count is steady: a thread such a thread creates carries its
/// parent's name for the moment before it names itself, so one sample can count one too many.
fn server_threads(pid: i32) -> usize {
    let sample = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("actix-rt|system"))
            })
            .count()
    };
    eventually(T, "a steady thread count", || {
        let n = sample();
        (0..3)
            .all(|_| {
                std::thread::sleep(Duration::from_millis(30));
                sample() == n
            })
            .then_some(n)
    })
}

#[test]
fn hup_rereads_the_config_file() {
    let dir = TempDir::new("hup-config");
    let file = dir.path().join("clusterd.toml");
    std::fs::write(&file, "threads = 1\n").unwrap();
    let c = Clusterd::start(Opts::default().workers(2).config(&file));
    let old = c.workers();
    for w in &old {
        assert_eq!(
            server_threads(*w),
            1,
            "--threads defaults to one server thread per worker"
        );
    }
    // The harness passes --workers, which wins over the file; threads come from the file.
    std::fs::write(&file, "threads = 2\nbacklog = 77\n").unwrap();
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    assert!(
        c.log_text()
            .contains("takes effect after a full restart setting=\"backlog\""),
        "{}",
        c.log_text()
    );
    eventually(T, "old workers gone", || {
        old.iter().all(|p| !exists(*p)).then_some(())
    });
    for w in c.workers() {
        assert_eq!(
            server_threads(w),
            2,
            "new workers run with the reloaded thread count"
        );
    }

    // An invalid file keeps the running configuration and the running workers.
    let before = c.workers();
    std::fs::write(&file, "threads = \"many\"\n").unwrap();
    c.signal(Signal::SIGHUP);
    c.wait_note(T, "reload failed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.workers(), before);
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn hup_keeps_the_old_workers_when_the_new_ones_cannot_start() {
    let dir = TempDir::new("hup-fail");
    let flag = dir.path().join("fail");
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );
    let before = c.workers();
    std::fs::write(&flag, "4").unwrap();
    c.signal(Signal::SIGHUP);
    c.wait_note(T, "reload aborted");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.workers(), before, "old workers kept");
    assert!(alive(c.pid()), "a failed reload does not stop the master");
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn an_aborted_reload_leaves_the_running_settings_for_later_workers() {
    let dir = TempDir::new("hup-abort-settings");
    let flag = dir.path().join("fail");
    let file = dir.path().join("clusterd.toml");
    std::fs::write(&file, "threads = 1\n").unwrap();
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .config(&file)
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );
    // The new settings come with workers that cannot boot: the reload is aborted...
    std::fs::write(&file, "threads = 2\n").unwrap();
    std::fs::write(&flag, "3").unwrap();
    c.signal(Signal::SIGHUP);
    c.wait_note(T, "reload aborted");
    std::fs::remove_file(&flag).unwrap();
    // ...and a worker forked later, to replace a crashed one, runs with the settings in force.
    let victim = c.workers()[0];
    signal(victim, Signal::SIGKILL);
    let replacement = eventually(T, "a replacement", || {
        let w = c.workers();
        (w.len() == 2 && !w.contains(&victim)).then(|| w.into_iter().max().unwrap())
    });
    c.wait_status(T, "the replacement ready", |d| {
        d["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["pid"].as_i64() == Some(i64::from(replacement)) && w["state"] == "ready")
    });
    assert_eq!(
        server_threads(replacement),
        1,
        "the aborted reload's threads = 2 is gone"
    );
}

#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let c = Clusterd::start(Opts::default().workers(1));
    c.signal(Signal::SIGTTIN);
    eventually(T, "two workers", || (c.workers().len() == 2).then_some(()));
    c.signal(Signal::SIGTTOU);
    eventually(T, "one worker", || (c.workers().len() == 1).then_some(()));
    c.signal(Signal::SIGTTOU);
    c.wait_log(T, "already at the fewest workers");
    assert_eq!(c.workers().len(), 1);
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn workers_exit_within_two_seconds_of_a_killed_master() {
    let c = Clusterd::start(Opts::default().workers(2));
    let workers = c.workers();
    let t = Instant::now();
    c.signal(Signal::SIGKILL);
    eventually(
        Duration::from_secs(2),
        "every worker gone after the master's SIGKILL",
        || workers.iter().all(|w| !alive(*w)).then_some(()),
    );
    assert!(t.elapsed() <= Duration::from_secs(2));
    assert!(
        TcpStream::connect(c.addr).is_err(),
        "no orphan keeps the port"
    );
}

#[test]
fn term_to_one_worker_replaces_only_that_worker() {
    let c = Clusterd::start(Opts::default().workers(2));
    let before = c.workers();
    signal(before[0], Signal::SIGTERM);
    let after = eventually(T, "replacement", || {
        let w = c.workers();
        (w.len() == 2 && !w.contains(&before[0])).then_some(w)
    });
    assert!(after.contains(&before[1]), "the other worker untouched");
    assert!(alive(c.pid()), "the master keeps running");
    assert!(c.log_text().contains("exited normally (code 0)"));
    assert!(
        !c.log_text().contains("graceful stop:"),
        "the master did not stop"
    );
}

#[test]
fn reload_and_scale_wait_for_the_outcome_and_say_it() {
    let dir = TempDir::new("reload-wait");
    let flag = dir.path().join("fail");
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );
    let before = c.generation();
    let (code, out, err) = c.ctl(&["reload", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("reloaded: generation"), "{out}");
    // It returned once the rollout had completed, not before.
    let m = c.status()["master"].clone();
    assert!(
        m["generation"].as_u64() > Some(before) && m["reloading"] == false,
        "{m}"
    );
    assert_eq!(m["workers"], 2);

    // New workers that cannot boot: the rollout is aborted, and --wait says why, with 1.
    std::fs::write(&flag, "4").unwrap();
    let (code, out, err) = c.ctl(&["reload", "--wait", "--timeout", "60"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("reload aborted"), "{err}");
    std::fs::remove_file(&flag).unwrap();

    let (code, out, err) = c.ctl(&["scale", "3", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("3 workers serving"), "{out}");
    assert_eq!(c.status()["master"]["workers"], 3);
    // A bound that cannot be met fails with 1 and names the timeout.
    let (code, _, err) = c.ctl(&["scale", "4", "--wait", "--timeout", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timed out"), "{err}");
    // --timeout alone is refused: it means nothing without --wait.
    let (code, _, _) = c.ctl(&["reload", "--timeout", "5"]);
    assert_eq!(code, Some(2));
}

#[test]
fn a_stopping_worker_answers_kept_alive_connections_until_its_requests_end() {
    let mut c = Clusterd::start(Opts::default().workers(1));
    let mut kept = KeepAlive::new(c.addr);
    let mut probe = KeepAlive::new(c.addr);
    let r = probe.get("/healthz", &[]).unwrap();
    assert_eq!((r.status, r.json()["status"].clone()), (200, "ok".into()));
    assert_eq!(kept.get("/", &[]).unwrap().status, 200);
    let slow = slow_request(&c, 2000);
    c.signal(Signal::SIGTERM);
    c.wait_log(T, "stopping gracefully");
    // The master's status line says a worker drains.
    let line = c.status()["master"]["status"].as_str().unwrap().to_string();
    assert!(line.contains("1 draining"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    // The kept-alive connections are still served while the slow request runs (actix's own
    // graceful stop would have closed them), and told to close after the answer; the health
    // route says the worker drains, so a balancer in front stops sending to it.
    let r = probe.get("/healthz", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "draining", "{}", r.text());
    assert!(r.wants_close(), "{:?}", r.headers);
    let r = kept.get("/", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.wants_close(), "{:?}", r.headers);
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    assert_eq!(c.wait_exit(T), Some(0));
}
