//! The interleavings a review found in the master, reproduced from the outside: signals while
//! replacements boot, a worker flooding its pipe, control clients that trickle or idle, a
//! reload asking for more than the running maximum, USR1/USR2 to the master, a death around an
//! upgrade. Each waits on `clusterd status --json`, not on log wording, where it can.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

const T: Duration = Duration::from_secs(20);

/// (slot, state) of every worker entry in a status document.
fn entries(doc: &serde_json::Value) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["slot"].as_u64().unwrap(),
                w["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn settled(doc: &serde_json::Value, n: usize) -> bool {
    let e = entries(doc);
    doc["master"]["reloading"] == false
        && e.len() == n
        && e.iter().all(|(_, s)| s == "ready")
        && e.iter().map(|(slot, _)| *slot as usize).eq(0..n)
}

/// Kills one worker and returns how long until the master forked its replacement.
fn replacement_time(c: &Clusterd, victim: i32) -> Duration {
    let before = c.workers();
    let t = Instant::now();
    signal(victim, Signal::SIGKILL);
    eventually(Duration::from_secs(5), "a replacement forked", || {
        c.workers()
            .into_iter()
            .any(|p| !before.contains(&p))
            .then_some(())
    });
    t.elapsed()
}

/// How long `clusterd status` takes to answer.
fn status_time(c: &Clusterd) -> Duration {
    let t = Instant::now();
    let (code, _, err) = c.ctl(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    t.elapsed()
}

#[test]
fn hups_150ms_apart_while_workers_boot_slowly_leave_each_slot_once() {
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .env("CLUSTERD_TEST_BOOT_DELAY_MS", "700"),
    );
    for round in 0..2 {
        for _ in 0..3 {
            c.signal(Signal::SIGHUP);
            std::thread::sleep(Duration::from_millis(150));
        }
        c.wait_status(T, "two ready workers, one per slot", |d| settled(d, 2));
        // And it stays that way: no second worker left behind in a slot.
        std::thread::sleep(Duration::from_millis(1_500));
        let doc = c.status();
        assert!(settled(&doc, 2), "round {round}: {doc}");
        assert_eq!(c.workers().len(), 2, "round {round}: {doc}");
    }
}

/// The write end of worker `w`'s pipe to the master, opened through /proc (root, as the tests
/// run): the pipe whose other end the master holds.
fn open_pipe_of(master: i32, w: i32) -> std::fs::File {
    let links = |pid: i32| -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                Some((e.path().display().to_string(), target.display().to_string()))
            })
            .filter(|(_, t)| t.starts_with("pipe:"))
            .collect()
    };
    let ours: Vec<String> = links(master).into_iter().map(|(_, t)| t).collect();
    let (path, _) = links(w)
        .into_iter()
        .find(|(_, t)| ours.contains(t))
        .expect("the worker shares a pipe with the master");
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

#[test]
fn a_worker_flooding_its_pipe_delays_neither_a_respawn_nor_status() {
    let c = Clusterd::start(Opts::default().workers(3));
    let w = c.workers();
    let mut pipe = open_pipe_of(c.pid(), w[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let flood = std::thread::spawn(move || {
        let bytes = [b'R'; 4096];
        while !flag.load(Ordering::Relaxed) {
            match pipe.write(&bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                // The master closed its end: the flood is over for it.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let took = replacement_time(&c, w[1]);
    let answered = status_time(&c);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(took < Duration::from_millis(1_500), "respawn took {took:?}");
    assert!(
        answered < Duration::from_secs(1),
        "status took {answered:?}"
    );
    // The flooding worker was replaced too; the cluster is whole again.
    c.wait_status(T, "three ready workers", |d| settled(d, 3));
    assert_eq!(c.log_lines("broke the pipe protocol").len(), 1);
}

#[test]
fn trickling_and_idle_control_clients_delay_neither_a_respawn_nor_status() {
    let c = Clusterd::start(Opts::default().workers(2));
    let sock = c.control.clone();
    let idle: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let path = sock.clone();
    let trickle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let Ok(mut s) = UnixStream::connect(&path) else {
                return;
            };
            for b in b"status\n" {
                if flag.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..3 {
        let victim = c.workers()[round % 2];
        let took = replacement_time(&c, victim);
        assert!(took < Duration::from_millis(1_500), "respawn took {took:?}");
        let answered = status_time(&c);
        assert!(
            answered < Duration::from_secs(1),
            "status took {answered:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    drop(idle);
}

#[test]
fn a_reload_asking_for_more_than_the_running_maximum_ends_clamped() {
    let dir = TempDir::new("clamp");
    let file = dir.path().join("clusterd.toml");
    std::fs::write(&file, "workers = 2\nmax-workers = 3\n").unwrap();
    // No --workers flag: it would win over the file.
    let c = Clusterd::start(Opts::default().workers(0).config(&file));
    // Valid as a file (9 <= 16), but --max-workers sized the scoreboard and needs a restart.
    std::fs::write(&file, "workers = 9\nmax-workers = 16\n").unwrap();
    c.signal(Signal::SIGHUP);
    let doc = c.wait_status(Duration::from_secs(15), "clamped to 3, done", |d| {
        settled(d, 3)
    });
    assert_eq!(doc["master"]["target"], 3, "{doc}");
    assert_eq!(doc["master"]["max_workers"], 3, "{doc}");
    assert_eq!(
        c.log_lines("more workers than the running --max-workers")
            .len(),
        1
    );
}

#[test]
fn usr1_and_usr2_leave_the_master_serving() {
    let c = Clusterd::start(Opts::default().workers(2));
    let before = c.workers();
    c.signal(Signal::SIGUSR1);
    c.signal(Signal::SIGUSR2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(c.pid()));
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(c.workers(), before, "nothing was restarted");
    assert!(settled(&c.status(), 2));
}

#[test]
fn a_death_around_an_upgrade_is_reaped_and_term_finishes() {
    let dir = TempDir::new("upgrade-death");
    let bin = dir.path().join("clusterd");
    std::fs::copy(BIN, &bin).unwrap();
    let mut c = Clusterd::start(Opts::default().workers(3).binary(&bin));
    let master = c.pid();
    // A new file (another inode) at the same path, as a deploy leaves it.
    let tmp = dir.path().join("clusterd.new");
    std::fs::copy(BIN, &tmp).unwrap();
    std::fs::rename(&tmp, &bin).unwrap();
    let w = c.workers();
    c.signal(Signal::SIGHUP);
    signal(w[0], Signal::SIGKILL);
    c.wait_status(T, "three ready workers of the new image", |d| settled(d, 3));
    assert_eq!(c.pid(), master);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        c.log_lines("could not signal worker").is_empty(),
        "{}",
        c.log_text()
    );
}
