//! Shared test harness: starts a real `redis-server` and the real `clusterd` binary on loopback
//! ports, each in its own process group, and stops them by PID on Drop. Also a small HTTP/1.1
//! client over `TcpStream` (so tests control connections exactly: fresh or kept alive,
//! dribbled bodies, raw garbage) and helpers to read the process tree from /proc.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_clusterd");

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port on 127.0.0.1 for a Redis Cluster node, whose cluster bus listens 10000 above it:
/// the port must be at most 55535 (the kernel hands out ephemeral ports up to 60999, and
/// redis-server refuses a bus port past 65535) and the bus port must be free too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let p = free_port();
        if p <= 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair (p, p + 10000) on 127.0.0.1 for a cluster node");
}

/// A temporary directory removed on Drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clusterd-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- processes ------------------------------------------------------------------------------

/// Whether a pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether a pid exists at all (a zombie counts: it has not been reaped).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Living children of `pid`, sorted.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(pid) && fields[0] != "Z" {
            out.push(child);
        }
    }
    out.sort();
    out
}

/// The command line of a process as `ps -o cmd` shows it.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .to_string()
}

/// Inodes of the listening TCP sockets on `port` (any address), from /proc/net/tcp{,6}.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                out.extend(f.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Which of `inodes` (sockets) process `pid` holds a descriptor of.
pub fn holds(pid: i32, inodes: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .filter(|i| inodes.contains(i))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Opens `n` connections to `addr` before sending anything (a burst, as a proxy's keep-alive
/// pool opens them), then one keep-alive request on each; returns how many each worker id got.
pub fn burst(addr: SocketAddr, n: usize) -> HashMap<u64, usize> {
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
        .collect();
    let mut counts = HashMap::new();
    for mut s in conns {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write_request(&mut s, "GET", "/healthz", &[], b"", true).unwrap();
        let r = read_response(&mut BufReader::new(s)).expect("a response on every connection");
        assert_eq!(r.status, 200);
        *counts.entry(r.worker().unwrap()).or_default() += 1;
    }
    counts
}

pub fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

// ---- redis ----------------------------------------------------------------------------------

/// A real redis-server on a loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// Extra configuration directives, as redis-server arguments.
    extra: Vec<String>,
}

fn redis_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "redis-server not found: these tests need a real Redis. Install it with `apt-get install -y redis-server` (Debian) and run the tests again"
    );
}

impl Redis {
    /// The redis-server executable (the test fails with how to install it if missing).
    pub fn binary() -> PathBuf {
        redis_binary()
    }

    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra directives, one word per argument: `["--user", "app", "on", ">pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// A Redis Cluster node (cluster mode on, with its bus port 10000 above a free port).
    pub fn start_cluster_node(extra: &[&str]) -> Self {
        let mut args = vec!["--cluster-enabled", "yes"];
        args.extend_from_slice(extra);
        Self::start_on(free_cluster_port(), &args)
    }

    fn start_on(port: u16, extra: &[&str]) -> Self {
        let mut r = Redis {
            port,
            child: None,
            dir: TempDir::new("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = Command::new(redis_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(port, &["PING"]).trim() != "PONG" {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "redis-server on port {port} {} PING; its log:\n{}",
                    match exited {
                        Some(status) => format!("exited ({status}) before answering"),
                        None => "did not answer within 10 s".to_string(),
                    },
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where redis-server writes its log (read into a failed start's message).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Stops it (SIGKILL by PID: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes or thaws it (SIGSTOP / SIGCONT by PID): a Redis that accepts connections but
    /// never answers.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("redis running").id() as i32;
        signal(
            pid,
            if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            },
        );
    }

    /// Runs one command with redis-cli and returns its raw output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Keys matching a pattern.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--raw", "KEYS", pattern])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server: apt-get install -y redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- clusterd -------------------------------------------------------------------------------

/// A running `clusterd` master. Its stderr goes to a log file the test can read.
pub struct Clusterd {
    pub port: u16,
    pub addr: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
    pub data: PathBuf,
    /// The master's control socket.
    pub control: PathBuf,
    _dir: Option<TempDir>,
}

/// How to start clusterd.
pub struct Opts {
    /// `--workers`; 0 passes none (the config file or the default decides).
    pub workers: usize,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Data dir to use (to restart on the same one); a fresh temp dir otherwise.
    pub data: Option<PathBuf>,
    /// Port to use (to restart on the same one).
    pub port: Option<u16>,
    /// Wait for "all workers ready" before returning.
    pub wait_ready: bool,
    /// A program that runs clusterd (e.g. `systemd-socket-activate -l ADDR`).
    pub wrapper: Vec<String>,
    /// Listen on [::1] instead of 127.0.0.1.
    pub ipv6: bool,
    /// A descriptor of the test's to hand over as fd 3 (playing systemd's socket activation).
    pub fd3: Option<std::os::fd::RawFd>,
    /// Descriptors of the test's to hand over as fds 3, 4, ... (playing systemd's descriptor
    /// store).
    pub fds: Vec<std::os::fd::RawFd>,
    /// The executable to run instead of the one cargo built (a copy, for upgrades).
    pub binary: Option<PathBuf>,
    /// Leave the control socket where clusterd puts it by default (learnt from its log).
    pub default_control: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            workers: 2,
            args: Vec::new(),
            env: Vec::new(),
            data: None,
            port: None,
            wait_ready: true,
            wrapper: Vec::new(),
            fds: Vec::new(),
            ipv6: false,
            fd3: None,
            binary: None,
            default_control: false,
        }
    }
}

impl Opts {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// `--config FILE`.
    pub fn config(self, file: &Path) -> Self {
        self.arg("--config")
            .arg(file.to_str().expect("a UTF-8 path"))
    }
    pub fn redis(self, r: &Redis) -> Self {
        self.arg("--redis-url").arg(r.url())
    }
    pub fn data(mut self, p: &Path) -> Self {
        self.data = Some(p.to_path_buf());
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    /// Hands `fds` over as fds 3, 4, ... with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`
    /// (through `sh`, which knows the pid it execs as), as systemd passes its descriptor store.
    pub fn listen_fds(mut self, fds: &[(String, std::os::fd::RawFd)]) -> Self {
        self.fds = fds.iter().map(|(_, fd)| *fd).collect();
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        self = self
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        self.wrapped(&["sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
    }

    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }
    /// Passes `fd` as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to clusterd's pid, as systemd
    /// does (through `sh`, which knows its own pid before it `exec`s clusterd).
    pub fn listen_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.fd3 = Some(fd);
        self.wrapped(&[
            "sh",
            "-c",
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"",
        ])
    }
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }
    pub fn default_control(mut self) -> Self {
        self.default_control = true;
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }
}

impl Clusterd {
    pub fn start(opts: Opts) -> Self {
        let dir = TempDir::new("clusterd");
        let port = opts.port.unwrap_or_else(free_port);
        let data = opts.data.clone().unwrap_or_else(|| dir.path().join("data"));
        let log = dir.path().join("clusterd.log");
        let bin = opts.binary.clone().unwrap_or_else(|| PathBuf::from(BIN));
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let found = std::env::var("PATH")
                    .unwrap_or_default()
                    .split(':')
                    .any(|d| Path::new(d).join(program).is_file());
                assert!(
                    found,
                    "{program} not found: install it (apt-get install -y systemd)"
                );
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let addr: SocketAddr = if opts.ipv6 {
            (std::net::Ipv6Addr::LOCALHOST, port).into()
        } else {
            ([127, 0, 0, 1], port).into()
        };
        if opts.workers > 0 {
            cmd.arg("--workers").arg(opts.workers.to_string());
        }
        // Its own control socket in the test's directory (as root, the default would be in
        // /run/clusterd).
        if !opts.default_control && !opts.args.iter().any(|a| a == "--control-socket") {
            cmd.arg("--control-socket")
                .arg(dir.path().join("control.sock"));
        }
        cmd.arg("--bind")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--graceful-timeout")
            .arg("10")
            .args(&opts.args)
            .env_remove("REDIS_URL")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own process group, so the test can play the terminal (signal the group) and
            // clean up everything it started.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. If the test
        // process dies without running Drop (killed), its clusterd goes with it.
        let fd3 = opts.fd3;
        let fds = opts.fds.clone();
        // SAFETY (also for dup2): both are async-signal-safe system calls on descriptors the
        // child owns.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first (a source may sit where another goes), then into place;
                // dup2 clears close-on-exec on the copies.
                let mut high = Vec::with_capacity(fds.len());
                for fd in &fds {
                    let h = nix::libc::fcntl(*fd, nix::libc::F_DUPFD_CLOEXEC, 1000);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, h) in high.iter().enumerate() {
                    if nix::libc::dup2(*h, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = fd3 {
                    // dup2 clears close-on-exec on the copy, so the socket crosses exec as fd 3;
                    // if it already is fd 3, dup2 does nothing and the flag is cleared by hand.
                    let ok = if fd == 3 {
                        nix::libc::fcntl(3, nix::libc::F_SETFD, 0) >= 0
                    } else {
                        nix::libc::dup2(fd, 3) >= 0
                    };
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("starting clusterd");
        let control = opts
            .args
            .iter()
            .position(|a| a == "--control-socket")
            .and_then(|i| opts.args.get(i + 1))
            .map_or_else(|| dir.path().join("control.sock"), PathBuf::from);
        let mut c = Clusterd {
            port,
            addr,
            child,
            log,
            data,
            control,
            _dir: Some(dir),
        };
        if opts.default_control {
            c.wait_log(Duration::from_secs(20), "control socket path=");
            let line = c.log_lines("control socket path=").remove(0);
            let path = line
                .split("path=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            c.control = PathBuf::from(path);
        }
        if opts.wait_ready {
            c.wait_ready(Duration::from_secs(20));
        }
        c
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs `clusterd ARGS --control-socket <the master's>`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.ctl_with(Path::new(BIN), args)
    }

    /// [`Clusterd::ctl`] with another program built on `clusterd::run` (an example's).
    pub fn ctl_with(&self, bin: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(bin)
            .args(args)
            .arg("--control-socket")
            .arg(&self.control)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `clusterd status --json`.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.ctl(&["status", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until every wanted worker serves and no rollout is under way, as
    /// `clusterd status --json` tells it (failing early if the master exits).
    pub fn wait_ready(&self, timeout: Duration) -> serde_json::Value {
        self.wait_status(timeout, "every wanted worker ready", |d| {
            let m = &d["master"];
            m["workers"] == m["target"] && m["reloading"] == false
        })
    }

    /// The generation of the running settings: it grows by one with every rollout that
    /// completes (a reload, an upgrade, a recycle).
    pub fn generation(&self) -> u64 {
        self.status()["master"]["generation"].as_u64().unwrap()
    }

    /// Waits until a rollout begun after `since` (a [`Clusterd::generation`]) completed and
    /// every wanted worker serves.
    pub fn wait_reloaded(&self, timeout: Duration, since: u64) -> serde_json::Value {
        self.wait_status(timeout, "a completed rollout", |d| {
            let m = &d["master"];
            m["generation"].as_u64() > Some(since)
                && m["workers"] == m["target"]
                && m["reloading"] == false
        })
    }

    /// Waits until the master's note (why the last reload or upgrade failed) starts with
    /// `prefix`.
    pub fn wait_note(&self, timeout: Duration, prefix: &str) -> serde_json::Value {
        self.wait_status(timeout, prefix, |d| {
            d["master"]["note"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
    }

    /// Waits until `clusterd status --json` satisfies `done`, and returns that document.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(timeout, what, || {
            if let Some(status) = self.child_status() {
                panic!(
                    "clusterd exited ({status}) while waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            let (code, out, _) = self.ctl(&["status", "--json"]);
            let doc: serde_json::Value = serde_json::from_str(&out).ok()?;
            (code == Some(0) && done(&doc)).then_some(doc)
        })
    }

    pub fn workers(&self) -> Vec<i32> {
        children(self.pid())
    }

    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// Waits until the log has one more line containing `needle` than it had... or at least one.
    pub fn wait_log(&self, timeout: Duration, needle: &str) {
        self.wait_log_count(timeout, needle, 1);
    }

    /// Waits until at least `n` lines contain `needle`.
    pub fn wait_log_count(&self, timeout: Duration, needle: &str, n: usize) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_lines(needle).len() >= n {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {n} log line(s) with {needle:?}; log:\n{}",
                    self.log_text()
                );
            }
            if let Some(status) = self.child_status() {
                panic!(
                    "clusterd exited ({status}) while waiting for {needle:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How the master ended, if it has: peeked with `waitid(WNOWAIT)`, so it stays reapable
    /// by `wait_exit` and Drop.
    fn child_status(&self) -> Option<String> {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(self.pid())), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit code {code}")),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("killed by {sig}")),
            _ => None,
        }
    }

    /// Waits for the master to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!(
                    "clusterd did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log_text()))
    }

    /// Logs in as the demo user and returns the cookie header value.
    pub fn login(&self, user: &str, password: &str) -> String {
        let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
        let r = request(
            self.addr,
            "POST",
            "/login",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            r.status,
            200,
            "login failed: {} {}\n{}",
            r.status,
            r.text(),
            self.log_text()
        );
        r.cookie().expect("login sets a cookie")
    }
}

impl Drop for Clusterd {
    fn drop(&mut self) {
        // A graceful stop first, as an operator would, for at most 3 s (a stopped or hung
        // worker may not go); then the whole group (master and workers) by its id, and reap.
        if self.child_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.child_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts every log line is one whole event: timestamp, level, role tag. Lines of different
/// processes that interleaved mid-line would break this shape.
pub fn assert_whole_lines(log: &str) {
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let ts = words.next().unwrap_or_default();
        let level = words.next().unwrap_or_default();
        let rest = line.split_once(level).map_or("", |(_, r)| r.trim_start());
        let ok = ts.len() >= 20
            && ts.ends_with('Z')
            && ts.as_bytes()[10] == b'T'
            && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
            && (rest.starts_with("[master] ") || rest.starts_with("[worker "));
        assert!(ok, "not a whole log line: {line:?}");
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// `name=value` of the first Set-Cookie, ready for a Cookie header.
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .map(|c| c.split(';').next().unwrap().trim().to_string())
    }

    pub fn worker(&self) -> Option<u64> {
        self.header("x-clusterd-worker")?.parse().ok()
    }

    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One request on a fresh connection (`Connection: close`).
/// [`request`] from the loopback address `from` (127.x.y.z): another client, as the server
/// (or a proxy in front of it) sees it.
pub fn request_from(
    from: [u8; 4],
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let source: SocketAddr = (from, 0).into();
    socket.bind(&source.into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    exchange(socket.into(), method, path, headers, body)
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    exchange(stream, method, path, headers, body)
}

/// One request on a connected stream and its response (20 s at most), then the stream closes.
fn exchange(
    mut stream: TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write_request(&mut stream, method, path, headers, body, false)?;
    read_response(&mut BufReader::new(stream))
}

pub fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    // Host: 127.0.0.1 unless the caller names another.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: 127.0.0.1\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    stream.write_all(&msg)
}

/// Reads one response (Content-Length or read-to-close bodies; actix sends nothing else here).
pub fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A keep-alive client that reconnects when the server says `Connection: close`.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAlive { addr, conn: None }
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        self.send("GET", path, headers, b"")
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            self.conn = Some(BufReader::new(s));
        }
        let reader = self.conn.as_mut().unwrap();
        let result = write_request(reader.get_mut(), method, path, headers, body, true)
            .and_then(|()| read_response(reader));
        match &result {
            Ok(r) if !r.wants_close() => {}
            _ => self.conn = None,
        }
        result
    }
}

/// One kept-alive connection to each of `workers` workers, keyed by worker id: requests on
/// them reach a known worker, whatever the kernel's accept distribution.
pub fn connection_per_worker(addr: SocketAddr, workers: usize) -> Vec<(u64, KeepAlive)> {
    let mut out: Vec<(u64, KeepAlive)> = Vec::new();
    for _ in 0..500 {
        let mut conn = KeepAlive::new(addr);
        let id = conn.get("/healthz", &[]).unwrap().worker().unwrap();
        if !out.iter().any(|(w, _)| *w == id) {
            out.push((id, conn));
            if out.len() == workers {
                return out;
            }
        }
    }
    panic!("could not reach {workers} distinct workers in 500 connections");
}

/// Counts of a request loop.
#[derive(Debug, Default, Clone)]
pub struct LoopStats {
    pub ok: usize,
    pub failed: Vec<String>,
    pub workers: HashMap<u64, usize>,
}

/// Runs GET `path` in a loop on `threads` threads (half keep-alive, half fresh connections)
/// until `stop` is set; every non-200 or I/O error is a failure.
pub fn request_loop(
    addr: SocketAddr,
    path: &'static str,
    headers: Vec<(String, String)>,
    threads: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoopStats>> {
    (0..threads)
        .map(|i| {
            let stop = stop.clone();
            let headers = headers.clone();
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut stats = LoopStats::default();
                let mut ka = KeepAlive::new(addr);
                // Bounded: a loop that runs away stops by itself after a minute.
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let r = if i % 2 == 0 {
                        ka.get(path, &h)
                    } else {
                        request(addr, "GET", path, &h, b"")
                    };
                    match r {
                        Ok(r) if r.status == 200 => {
                            stats.ok += 1;
                            *stats.workers.entry(r.worker().unwrap_or(0)).or_default() += 1;
                        }
                        Ok(r) => stats
                            .failed
                            .push(format!("status {} {}", r.status, r.text())),
                        Err(e) => stats.failed.push(format!("error {e}")),
                    }
                }
                stats
            })
        })
        .collect()
}

impl LoopStats {
    /// Asserts no request failed and at least `min` succeeded.
    pub fn assert_clean(&self, min: usize) {
        assert!(
            self.failed.is_empty(),
            "{} failed of {}: {:?}",
            self.failed.len(),
            self.ok,
            &self.failed[..self.failed.len().min(5)]
        );
        assert!(self.ok > min, "the loops ran only {} requests", self.ok);
    }
}

pub fn join_loops(handles: Vec<std::thread::JoinHandle<LoopStats>>) -> LoopStats {
    let mut all = LoopStats::default();
    for h in handles {
        let s = h.join().unwrap();
        all.ok += s.ok;
        all.failed.extend(s.failed);
        for (k, v) in s.workers {
            *all.workers.entry(k).or_default() += v;
        }
    }
    all
}
