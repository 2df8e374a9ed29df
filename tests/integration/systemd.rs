//! systemd integration without systemd: the test plays the service manager (a datagram socket in
//! `NOTIFY_SOCKET`, reading each sender's credentials), socket activation through
//! `systemd-socket-activate`, and the privilege drop when started as root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt::PassCred,
};

use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// A fake service manager: collects (sender pid, datagram) pairs, and keeps a descriptor store
/// as systemd does (`FDSTORE=1` with `FDNAME=`, `FDSTOREREMOVE=1`, duplicates ignored).
pub struct Manager {
    pub path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<(i32, String)>>>,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    _dir: TempDir,
}

/// The same open file (what systemd's store checks before keeping a descriptor twice).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    let (a, b) = (
        nix::sys::stat::fstat(a).unwrap(),
        nix::sys::stat::fstat(b).unwrap(),
    );
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// What a notification does to the store.
fn keep(store: &mut Vec<(String, OwnedFd)>, text: &str, fds: Vec<OwnedFd>) {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
    if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
        store.retain(|(n, _)| *n != name);
    } else if text.lines().any(|l| l == "FDSTORE=1") {
        for fd in fds {
            if !store.iter().any(|(_, kept)| same_file(kept, &fd)) {
                store.push((name.clone(), fd));
            }
        }
    }
}

impl Manager {
    pub fn start() -> Self {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        // Have the kernel attach every sender's pid, whether it sends credentials or not.
        setsockopt(&sock, PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&messages);
        let store = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&store);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Bounded: the thread ends with the test process at the latest after two minutes.
            let end = Instant::now() + Duration::from_secs(120);
            while Instant::now() < end {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; 16]);
                let Ok(msg) = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) else {
                    continue;
                };
                let mut pid = 0;
                let mut fds = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => pid = cred.pid(),
                        // SAFETY: the kernel just installed these descriptors in this process
                        // for this message; nothing else owns them.
                        ControlMessageOwned::ScmRights(rights) => fds.extend(
                            rights
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        ),
                        _ => {}
                    }
                }
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                keep(&mut kept.lock().unwrap(), &text, fds);
                out.lock().unwrap().push((pid, text));
            }
        });
        Manager {
            path,
            messages,
            store,
            _dir: dir,
        }
    }

    /// Options for a clusterd this manager supervises (`NOTIFY_SOCKET`), not waited for.
    pub fn opts(&self) -> Opts {
        Opts::default()
            .no_wait()
            .env("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// The store's names and descriptors, in the order they were stored (as systemd passes
    /// them: `LISTEN_FDNAMES`, fds from 3).
    pub fn stored(&self) -> Vec<(String, std::os::fd::RawFd)> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, fd)| (n.clone(), fd.as_raw_fd()))
            .collect()
    }

    pub fn all(&self) -> Vec<(i32, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Index of the first message at or after `from` that contains `needle`.
    pub fn wait(&self, from: usize, needle: &str) -> usize {
        eventually(T, &format!("a notification with {needle:?}"), || {
            self.all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| m.contains(needle))
                .map(|(i, _)| i)
        })
    }
}

#[test]
fn the_master_alone_notifies_ready_status_reloading_watchdog_and_stopping() {
    let m = Manager::start();
    let dir = TempDir::new("notify-flag");
    let flag = dir.path().join("fail");
    let mut c = Clusterd::start(
        Opts::default()
            .workers(2)
            .no_wait()
            .env("NOTIFY_SOCKET", m.path.to_str().unwrap())
            .env("WATCHDOG_USEC", "400000")
            .env("CLUSTERD_TEST_BOOT_EXIT_FILE", flag.to_str().unwrap()),
    );

    // READY=1 only once every worker serves.
    let ready = m.wait(0, "READY=1");
    let served = c.log_lines("worker ready").len();
    assert_eq!(
        served,
        2,
        "READY=1 came when {served} of 2 workers were ready:\n{}",
        c.log_text()
    );
    assert!(c.log_text().contains("all workers ready"));
    assert!(
        m.all()[..ready].iter().all(|(_, t)| !t.contains("READY=1")),
        "no early READY"
    );
    m.wait(0, "STATUS=2/2 workers ready, 0 restarts, store sqlite ok");

    // The watchdog is petted while the loop turns and workers serve.
    let w = m.wait(ready, "WATCHDOG=1");
    m.wait(w + 1, "WATCHDOG=1");

    // HUP: RELOADING=1 with the monotonic timestamp, then READY=1 again.
    let before = m.all().len();
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    let reloading = m.wait(before, "RELOADING=1");
    assert!(
        m.all()[reloading].1.contains("MONOTONIC_USEC="),
        "{:?}",
        m.all()[reloading]
    );
    m.wait(reloading, "READY=1");

    // A restart shows in the status line (once the retired workers are gone, so the victim is
    // a serving one).
    c.wait_reloaded(T, g);
    c.wait_status(T, "the retired workers gone", |d| {
        d["workers"].as_array().unwrap().len() == 2
    });
    let victim = c.workers()[0];
    signal(victim, Signal::SIGKILL);
    m.wait(0, "1 restarts");

    // No worker serving: no watchdog pings (systemd would restart the service).
    std::fs::write(&flag, "3").unwrap();
    for w in c.workers() {
        signal(w, Signal::SIGKILL);
    }
    eventually(T, "no worker left", || c.workers().is_empty().then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    let quiet_from = m.all().len();
    std::thread::sleep(Duration::from_millis(1000));
    let pings = m.all()[quiet_from..]
        .iter()
        .filter(|(_, t)| t.contains("WATCHDOG=1"))
        .count();
    assert_eq!(pings, 0, "watchdog petted while no worker serves");
    std::fs::remove_file(&flag).unwrap();
    let back = m.all().len();
    m.wait(back, "WATCHDOG=1");

    // TERM: STOPPING=1.
    let before = m.all().len();
    c.signal(Signal::SIGTERM);
    m.wait(before, "STOPPING=1");
    assert_eq!(c.wait_exit(T), Some(0));

    // Every datagram came from the master.
    let master = c.pid();
    for (pid, text) in m.all() {
        assert_eq!(
            pid, master,
            "a notification from pid {pid}, not the master: {text:?}"
        );
    }
}

#[test]
fn a_reload_with_a_broken_config_still_answers_the_service_manager() {
    let m = Manager::start();
    let dir = TempDir::new("broken-reload");
    let file = dir.path().join("clusterd.toml");
    std::fs::write(&file, "threads = 1\n").unwrap();
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .config(&file)
            .env("NOTIFY_SOCKET", m.path.to_str().unwrap()),
    );
    let ready = m.wait(0, "READY=1");
    let before = c.workers();
    std::fs::write(&file, "threads = [unclosed\n").unwrap();
    let sent = Instant::now();
    c.signal(Signal::SIGHUP);
    // Under Type=notify-reload, `systemctl reload` waits for exactly these two.
    let reloading = m.wait(ready + 1, "RELOADING=1");
    let answer = m.wait(reloading + 1, "READY=1");
    assert!(sent.elapsed() < Duration::from_secs(5));
    let text = &m.all()[answer].1;
    assert!(
        text.contains("STATUS=") && text.contains("reload failed: parsing config file"),
        "READY=1 comes with a status naming the error: {text:?}"
    );
    assert_eq!(c.workers(), before, "the old workers keep serving");
    assert_eq!(c.get("/healthz").status, 200);
    // A good file afterwards reloads as usual and clears the error from the status.
    std::fs::write(&file, "threads = 1\n").unwrap();
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    let done = m.wait(answer + 1, "READY=1");
    assert!(!m.all()[done].1.contains("failed"), "{:?}", m.all()[done]);
}

#[test]
fn socket_activation_adopts_the_passed_socket() {
    let port = free_port();
    // systemd-socket-activate listens, and starts clusterd (with the socket as fd 3) when the
    // first connection arrives; that connection waits in the backlog and is served.
    let c = Clusterd::start(Opts::default().workers(2).port(port).no_wait().wrapped(&[
        "systemd-socket-activate",
        "-l",
        &format!("127.0.0.1:{port}"),
    ]));
    let first = eventually(T, "the first connection served", || {
        request(c.addr, "GET", "/healthz", &[], b"").ok()
    });
    assert_eq!(first.status, 200);
    c.wait_ready(T);
    assert!(
        c.log_text().contains("using the socket passed by systemd"),
        "{}",
        c.log_text()
    );
    // systemd-socket-activate sets no SO_REUSEPORT: one clear line, then every worker shares it.
    assert_eq!(
        c.log_lines("lacks SO_REUSEPORT").len(),
        1,
        "{}",
        c.log_text()
    );
    assert_eq!(listening_inodes(port).len(), 1, "no socket added");
    let cookie = c.login("alice", "wonderland");
    let r = request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(r.status, 200);
    // A reload keeps serving on the adopted socket (new workers inherit it from the master).
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn listen_fds_for_another_process_are_ignored() {
    // LISTEN_PID names someone else: clusterd binds --bind itself and leaves fd 3 alone.
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1"),
    );
    assert!(!c.log_text().contains("passed by systemd"));
    assert_eq!(c.get("/healthz").status, 200);
}

/// The privilege drop can only be shown by root, so this test is opt-in: CI runs it as root
/// with `cargo test -- --include-ignored`.
#[test]
#[ignore = "needs root: run `cargo test -- --include-ignored` as root (CI does)"]
fn workers_drop_to_the_given_user_with_no_capabilities() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root"
    );
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .port(port)
            .arg("--user")
            .arg("nobody")
            .arg("--group")
            .arg("nogroup"),
    );
    let status = |pid: i32, key: &str| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .map(|v| v.split_whitespace().next().unwrap().to_string())
            })
            .unwrap()
    };
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
        .to_string();
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
        .to_string();
    assert_eq!(
        status(c.pid(), "Uid:"),
        "0",
        "the master stays root (it bound port {port})"
    );
    let workers = c.workers();
    for w in &workers {
        assert_eq!(status(*w, "Uid:"), nobody);
        assert_eq!(status(*w, "Gid:"), nogroup);
        assert_eq!(status(*w, "CapEff:"), "0000000000000000");
        assert_eq!(status(*w, "CapPrm:"), "0000000000000000");
    }
    // Serving and writing the embedded store as nobody.
    let cookie = c.login("alice", "wonderland");
    assert_eq!(
        request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"")
            .unwrap()
            .status,
        200
    );
    // The parent-death signal survives the drop (it is armed after it).
    c.signal(Signal::SIGKILL);
    eventually(
        Duration::from_secs(2),
        "workers gone after the master's SIGKILL",
        || workers.iter().all(|w| !alive(*w)).then_some(()),
    );
}

#[test]
fn a_master_killed_with_sigkill_comes_back_on_the_sockets_the_store_kept() {
    let m = Manager::start();
    let c = Clusterd::start(m.opts().workers(3));
    m.wait(0, "READY=1");
    m.wait(0, "FDNAME=clusterd-table");
    let stored = m.stored();
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.len(),
        4,
        "three slot sockets and the table: {names:?}"
    );
    assert!(names.contains(&"clusterd-table"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("clusterd-s")).count(),
        3,
        "{names:?}"
    );
    let workers = c.workers();
    signal(c.pid(), Signal::SIGKILL);
    eventually(T, "the old workers gone", || {
        workers.iter().all(|p| !exists(*p)).then_some(())
    });
    // Nobody serves now; the sockets live on in the store, so connections made meanwhile wait
    // in their queues instead of being refused.
    let addr = c.addr;
    let waiting: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/healthz", &[], b"")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The next master, as systemd starts it after a crash: the store's descriptors as fds 3...
    // It is configured for 2 workers: the third slot's socket gets a worker first (its queue
    // is served), then the count goes back to 2 the usual way.
    let next = Clusterd::start(
        Opts::default()
            .workers(2)
            .port(c.port)
            .env("NOTIFY_SOCKET", m.path.to_str().unwrap())
            .listen_fds(&stored),
    );
    assert!(
        next.log_text()
            .contains("serving on the previous master's sockets"),
        "{}",
        next.log_text()
    );
    let mut answered = std::collections::HashSet::new();
    for h in waiting {
        let r = h.join().unwrap().expect("answered, not refused or reset");
        assert_eq!(r.status, 200);
        answered.insert(r.json()["worker_pid"].as_i64().unwrap() as i32);
    }
    assert!(
        answered.iter().all(|p| !workers.contains(p)),
        "{answered:?}"
    );
    next.wait_log(T, "back to the configured worker count");
    next.wait_status(T, "2 workers, the third slot's gone", |d| {
        d["master"]["workers"] == 2 && d["workers"].as_array().is_some_and(|w| w.len() == 2)
    });
    // The retired slot's socket left the store; nothing is stored twice.
    eventually(T, "the store holds two sockets and the table", || {
        (m.stored().len() == 3).then_some(())
    });
    assert_eq!(next.get("/healthz").status, 200);
}

#[test]
fn stored_sockets_that_no_longer_fit_are_shut_and_the_master_binds_anew() {
    let m = Manager::start();
    let c = Clusterd::start(m.opts().workers(2));
    m.wait(0, "FDNAME=clusterd-table");
    let stored = m.stored();
    signal(c.pid(), Signal::SIGKILL);
    // The configuration changed the layout meanwhile: the stored sockets do not fit. The new
    // master says why, shuts them (so the address is free) and binds its own, instead of
    // failing to bind and being restarted for ever.
    let next = Clusterd::start(
        Opts::default()
            .workers(2)
            .port(c.port)
            .arg("--sockets")
            .arg("shared")
            .env("NOTIFY_SOCKET", m.path.to_str().unwrap())
            .listen_fds(&stored),
    );
    assert!(
        next.log_text()
            .contains("not restoring the previous master's sockets"),
        "{}",
        next.log_text()
    );
    assert_eq!(next.get("/healthz").status, 200);
    // The old sockets left the store; the new one and a new table are in it.
    eventually(T, "the store renewed", || {
        let names: Vec<String> = m.stored().into_iter().map(|(n, _)| n).collect();
        (names.iter().filter(|n| *n == "clusterd-table").count() == 1
            && names.iter().filter(|n| n.starts_with("clusterd-s")).count() == 1)
            .then_some(())
    });
}
