//! `examples/hello.rs`, run the way `clusterd` is: an app of its own under `clusterd::run`
//! gets the whole program (options, subcommands, metrics, reloads, upgrades, `--watch`,
//! socket activation). `cargo test` builds the example; `cargo build --examples` does too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

/// The example's binary, beside the `clusterd` cargo built.
fn hello() -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("examples/hello");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --examples` (`cargo test` does)",
        path.display()
    );
    path
}

/// `/metrics`' value of `name` (no labels).
fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let r = request(addr, "GET", "/metrics", &[], b"").unwrap();
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

fn metrics_addr() -> std::net::SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

#[test]
fn hello_has_every_option_subcommand_and_its_own_greeting_and_counter() {
    let bin = hello();
    let help = Command::new(&bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bind",
        "--workers",
        "--config",
        "--control-socket",
        "--metrics-bind",
        "--check-config",
        "--watch",
        "--greeting",
        "HELLO_GREETING",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for demo_only in ["--redis-url", "--users", "hash-password"] {
        assert!(
            !help.contains(demo_only),
            "{demo_only} is the demo's:\n{help}"
        );
    }
    let metrics = metrics_addr();
    let c = Clusterd::start(
        Opts::default()
            .binary(&bin)
            .workers(2)
            .arg("--greeting")
            .arg("hi")
            .arg("--metrics-bind")
            .arg(metrics.to_string()),
    );
    let r = c.get("/");
    assert_eq!(r.status, 200);
    let worker = r.worker().expect("x-clusterd-worker");
    assert_eq!(r.text(), format!("hi from worker {worker}\n"));
    // The core's health route, for this app too.
    assert_eq!(c.get("/healthz").json()["status"], "ok");

    let (code, out, err) = c.ctl_with(&bin, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["workers"].as_array().unwrap().len(), 2);
    let (code, _, err) = c.ctl_with(&bin, &["scale", "3"]);
    assert_eq!(code, Some(0), "{err}");
    c.wait_status(T, "three workers", |d| {
        d["master"]["workers"] == 3 && d["master"]["target"] == 3
    });
    let g = c.generation();
    let (code, _, err) = c.ctl_with(&bin, &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    c.wait_reloaded(T, g);

    // Every greeting served is counted once, over every worker.
    let served = 1 + (0..40).filter(|_| c.get("/").status == 200).count() as u64;
    assert_eq!(metric(metrics, "hello_greetings_total"), served);
}

#[test]
fn a_reload_gives_every_worker_the_new_greeting_without_a_failed_request() {
    let bin = hello();
    let dir = TempDir::new("hello-reload");
    let config = dir.path().join("hello.toml");
    std::fs::write(&config, "greeting = \"one\"\nworkers = 2\n").unwrap();
    let c = Clusterd::start(Opts::default().binary(&bin).workers(0).config(&config));
    assert!(c.get("/").text().starts_with("one from worker"));

    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loop(c.addr, "/", Vec::new(), 4, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&config, "greeting = \"two\"\nworkers = 2\n").unwrap();
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    // A file the app rejects changes nothing.
    std::fs::write(&config, "greeting = \"three\"\ngretting = \"typo\"\n").unwrap();
    c.signal(Signal::SIGHUP);
    let doc = c.wait_note(T, "reload failed");
    assert!(
        doc["master"]["note"].as_str().unwrap().contains("gretting"),
        "{doc}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    join_loops(loops).assert_clean(100);

    let by_worker = connection_per_worker(c.addr, 2);
    for (worker, mut conn) in by_worker {
        let r = conn.get("/", &[]).unwrap();
        assert_eq!(r.text(), format!("two from worker {worker}\n"));
    }
    // The environment wins over the file, as for clusterd's own options.
    drop(c);
    let c = Clusterd::start(
        Opts::default()
            .binary(&bin)
            .workers(1)
            .config(&config)
            .env("HELLO_GREETING", "from env")
            .no_wait(),
    );
    // The file's typo stops the start (exit 2), naming the key and its line.
    let mut c = c;
    assert_eq!(c.wait_exit(T), Some(2), "{}", c.log_text());
    assert!(
        c.log_text().contains("gretting") && c.log_text().contains("line 2"),
        "{}",
        c.log_text()
    );
    std::fs::write(&config, "greeting = \"file\"\n").unwrap();
    let c = Clusterd::start(
        Opts::default()
            .binary(&bin)
            .workers(1)
            .config(&config)
            .env("HELLO_GREETING", "from env"),
    );
    assert!(c.get("/").text().starts_with("from env from worker"));
}

#[test]
fn the_counter_never_goes_back_when_workers_are_recycled() {
    let bin = hello();
    let metrics = metrics_addr();
    let c = Clusterd::start(
        Opts::default()
            .binary(&bin)
            .workers(2)
            .arg("--max-requests")
            .arg("15")
            .arg("--metrics-bind")
            .arg(metrics.to_string()),
    );
    let (mut served, mut last) = (0, 0);
    let first = c.workers();
    for _ in 0..12 {
        for _ in 0..10 {
            if c.get("/").status == 200 {
                served += 1;
            }
        }
        let now = metric(metrics, "hello_greetings_total");
        assert!(now >= last, "went back from {last} to {now}");
        assert!(now <= served);
        last = now;
        // Recycling is decided at the master's next look at the board.
        std::thread::sleep(Duration::from_millis(250));
    }
    eventually(T, "every first worker recycled", || {
        c.workers().iter().all(|w| !first.contains(w)).then_some(())
    });
    assert_eq!(metric(metrics, "hello_greetings_total"), served);
}

#[test]
fn socket_activation_serves_hello_on_the_passed_socket() {
    let bin = hello();
    let port = free_port();
    let c = Clusterd::start(
        Opts::default()
            .binary(&bin)
            .workers(2)
            .port(port)
            .no_wait()
            .wrapped(&[
                "systemd-socket-activate",
                "-l",
                &format!("127.0.0.1:{port}"),
            ]),
    );
    let first = eventually(T, "the first connection served", || {
        request(c.addr, "GET", "/", &[], b"").ok()
    });
    assert_eq!(first.status, 200);
    assert!(first.text().starts_with("hello from worker"));
    c.wait_ready(T);
    assert!(c.log_text().contains("using the socket passed by systemd"));
    assert_eq!(listening_inodes(port).len(), 1, "no socket added");
}

/// Replaces `path` as cargo does: a new file (a new inode) under the same name, with `mode`.
fn rebuild(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Upgrades of the app's own binary: by HUP after a deploy, and by `--watch` alone (files as
/// a umask of 002 leaves them, then a build that fails its check).
#[test]
fn hello_upgrades_itself_in_place_by_hup_and_by_watch() {
    let built = hello();
    let dir = TempDir::new("hello-upgrade");
    let bin = dir.path().join("hello");
    std::fs::copy(&built, &bin).unwrap();
    let c = Clusterd::start(Opts::default().binary(&bin).workers(2).arg("--watch"));
    let master = c.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loop(c.addr, "/", Vec::new(), 4, stop.clone());
    let mut bytes = std::fs::read(&built).unwrap();
    for (round, mode) in [(1, 0o755), (2, 0o775)] {
        let before = c.workers();
        let g = c.generation();
        bytes.extend_from_slice(format!("\0build {round}\0").as_bytes());
        rebuild(&bin, &bytes, mode);
        if round == 1 {
            c.signal(Signal::SIGHUP);
        }
        c.wait_reloaded(T, g);
        eventually(T, "every old worker gone", || {
            c.workers()
                .iter()
                .all(|w| !before.contains(w))
                .then_some(())
        });
        assert_eq!(c.pid(), master);
        for pid in c.workers().into_iter().chain([master]) {
            assert_eq!(
                exe(pid),
                bin.display().to_string(),
                "pid {pid} runs the new file"
            );
        }
    }
    // A build that fails --check-config leaves the running one serving.
    rebuild(
        &bin,
        b"#!/bin/sh\necho 'hello: broken build' >&2\nexit 2\n",
        0o755,
    );
    let doc = c.wait_note(T, "upgrade failed");
    assert!(
        doc["master"]["note"]
            .as_str()
            .unwrap()
            .contains("broken build"),
        "{doc}"
    );
    let tried = c.log_lines("--watch: the binary was replaced").len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        c.log_lines("--watch: the binary was replaced").len(),
        tried,
        "a failed build is tried once"
    );
    stop.store(true, Ordering::Relaxed);
    join_loops(loops).assert_clean(100);
    assert_eq!(c.get("/").status, 200);
}

/// `hello status` with no `--control-socket` finds the master where a master with the same
/// options puts it, as `clusterd status` does.
#[test]
fn hello_status_finds_the_default_control_socket() {
    let bin = hello();
    let c = Clusterd::start(Opts::default().binary(&bin).workers(1).default_control());
    let out = Command::new(&bin)
        .arg("--data-dir")
        .arg(&c.data)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["master"]["pid"], c.pid());
}
