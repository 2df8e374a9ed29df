//! Upgrading in place: when SIGHUP finds that the binary the master was started from has been
//! replaced on disk, the master re-executes itself (same PID, so systemd's `MAINPID` and the
//! journal stay right) instead of forking the old code again. Runs in the master.
//!
//! The steps, after unicorn's and nginx's binary upgrade but without a second master:
//! 1. the new binary checks the configuration first (`clusterd --check-config` with the
//!    master's own arguments, as a child process the loop reaps); if it cannot run or refuses,
//!    the old master keeps serving and says why in systemd's status line;
//! 2. the master writes its state ([`State`]: the socket table, the workers, the counters) into
//!    one environment variable, clears close-on-exec on the listening sockets and the workers'
//!    pipes, and calls `execve` on the binary's path with its original arguments;
//! 3. the new image finds the state (before it binds anything), adopts the sockets and the
//!    workers (still its children: the PID did not change) and replaces them one slot at a time,
//!    like any rolling restart. The old workers never notice: their master is the same process.
//!
//! What does not cross: signal handlers (the blocked mask does, so no signal is lost), the
//! signalfd (the new image makes its own), threads (the master has none).

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::socket::Inherited;

/// The environment variable that carries [`State`] across `execve`.
pub const STATE_ENV: &str = "CLUSTERD_UPGRADE_STATE";
/// How long the new binary's configuration check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The flag that makes the binary check its configuration and exit.
pub const CHECK_FLAG: &str = "--check-config";
/// Set for the check: the [`State`] version the running master would hand over, so a new
/// binary that could not read it fails the check instead of the exec.
pub const VERSION_ENV: &str = "CLUSTERD_UPGRADE_STATE_VERSION";
/// Bumped when [`State`] changes shape: an image refuses a state it does not know.
const STATE_VERSION: u32 = 1;

/// The binary the master runs, and the path it was started from.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Where it was started from: argv\[0\] made absolute when it names a path (so a symlink
    /// that a deploy switches is followed anew), else the resolved executable.
    pub path: PathBuf,
    /// The master's original arguments, argv\[0\] first (read before the process title
    /// overwrites them).
    pub argv: Vec<OsString>,
    /// Device and inode of the running image.
    running: (u64, u64),
}

impl Binary {
    /// Notes the running binary. Call first thing in `main`, before the title is set.
    pub fn at_start() -> Option<Binary> {
        let argv: Vec<OsString> = std::env::args_os().collect();
        let running = std::fs::metadata("/proc/self/exe").ok()?;
        let named = argv.first().map(PathBuf::from);
        let path = match named {
            Some(p) if p.as_os_str().as_bytes().contains(&b'/') => std::path::absolute(&p).ok()?,
            _ => std::env::current_exe().ok()?,
        };
        Some(Binary {
            path,
            argv,
            running: (running.dev(), running.ino()),
        })
    }

    /// The file at [`Binary::path`] is not the running image (a deploy replaced it).
    pub fn replaced(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) != self.running)
    }
}

/// The new binary checking the configuration, as a child of the master.
pub struct Check {
    /// The checker's pid; the master's reaper hands its exit to [`Check::finish`].
    pub pid: Pid,
    /// When it is killed and the upgrade given up.
    pub deadline: Instant,
    /// Its standard error, read when it has exited.
    stderr: std::process::ChildStderr,
}

impl Check {
    /// Runs `path --check-config args...` with the master's environment. The child is never
    /// waited for through `std`: the master loop reaps it like any child.
    pub fn start(binary: &Binary) -> std::io::Result<Check> {
        let mut child = std::process::Command::new(&binary.path)
            .arg0(binary.argv.first().cloned().unwrap_or_default())
            .arg(CHECK_FLAG)
            .args(binary.argv.iter().skip(1))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env(VERSION_ENV, STATE_VERSION.to_string())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr was piped");
        Ok(Check {
            pid: Pid::from_raw(child.id() as i32),
            deadline: Instant::now() + CHECK_TIMEOUT,
            stderr,
        })
    }

    /// What the checker said, for a failed check: its last line on standard error.
    pub fn finish(mut self) -> String {
        let mut text = String::new();
        // It has exited, so this reads what is buffered and then the end of the pipe.
        let _ = (&mut self.stderr).take(64 * 1024).read_to_string(&mut text);
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// One worker as it crosses `execve`. Instants become ages, since `Instant` means nothing to
/// another image.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkerState {
    /// Worker id.
    pub id: u64,
    /// Slot.
    pub slot: usize,
    /// Process id.
    pub pid: i32,
    /// The read end of its pipe, when still open.
    pub pipe: Option<RawFd>,
    /// Last reported health.
    pub healthy: Option<bool>,
    /// It reported ready.
    pub ready: bool,
    /// Milliseconds since it was forked.
    pub age_ms: u64,
    /// Milliseconds since it reported ready.
    pub ready_age_ms: Option<u64>,
    /// Being stopped: milliseconds until SIGKILL, and whether SIGKILL was sent.
    pub retiring: Option<(u64, bool)>,
    /// Serial of the retired slot socket it holds last.
    pub closing_socket: Option<u64>,
    /// Its scoreboard record.
    #[serde(default)]
    pub record: Option<usize>,
    /// Its recycling limit.
    #[serde(default)]
    pub max_requests: u64,
}

/// What the new image needs of the old one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    version: u32,
    /// The socket table (taken by `main` with [`State::take_sockets`]).
    sockets: Option<Inherited>,
    /// Every unreaped worker.
    pub workers: Vec<WorkerState>,
    /// The next worker id.
    pub next_id: u64,
    /// Slots wanted (TTIN/TTOU included).
    pub target: usize,
    /// `--workers` of the configuration the old image ran, to tell whether the new one
    /// changed it (then it wins over TTIN/TTOU, as on a reload).
    pub configured_workers: usize,
    /// Unplanned deaths so far.
    pub restarts: u64,
    /// Consecutive early deaths (crash-loop back-off).
    pub failures: u32,
    /// Milliseconds until the next fork is allowed.
    pub respawn_in_ms: u64,
    /// The scoreboard's memfd.
    #[serde(default)]
    pub board_fd: Option<RawFd>,
    /// The metrics socket.
    #[serde(default)]
    pub metrics_fd: Option<RawFd>,
    /// Restarts by slot.
    #[serde(default)]
    pub slot_restarts: Vec<u64>,
    /// How long the master has run, over all its images.
    #[serde(default)]
    pub master_age_ms: u64,
}

impl State {
    /// A state of this image's version.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sockets: Inherited,
        workers: Vec<WorkerState>,
        next_id: u64,
        target: usize,
        configured_workers: usize,
        restarts: u64,
        failures: u32,
        respawn_in_ms: u64,
    ) -> State {
        State {
            version: STATE_VERSION,
            sockets: Some(sockets),
            workers,
            next_id,
            target,
            configured_workers,
            restarts,
            failures,
            respawn_in_ms,
            board_fd: None,
            metrics_fd: None,
            slot_restarts: Vec::new(),
            master_age_ms: 0,
        }
    }

    /// The socket table, for `Sockets::import`.
    pub fn take_sockets(&mut self) -> Result<Inherited, UpgradeError> {
        self.sockets
            .take()
            .ok_or_else(|| UpgradeError::State("no socket table".into()))
    }

    /// Every descriptor that must cross `execve`.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = self.sockets.as_ref().map_or_else(Vec::new, Inherited::fds);
        fds.extend(self.board_fd);
        fds.extend(self.metrics_fd);
        fds.extend(self.workers.iter().filter_map(|w| w.pipe));
        fds
    }
}

/// Errors taking the previous image's state.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The variable did not parse, or is of another version.
    #[error("{STATE_ENV}: {0}")]
    State(String),
}

/// The state the previous image left, if this image was started by an upgrade. Removes the
/// variable, so workers and later upgrades never see it. Call while single-threaded.
pub fn take_state() -> Result<Option<State>, UpgradeError> {
    let Some(text) = std::env::var_os(STATE_ENV) else {
        return Ok(None);
    };
    // SAFETY: the master has a single thread here, so nothing reads the environment
    // concurrently.
    unsafe { std::env::remove_var(STATE_ENV) };
    let state: State =
        serde_json::from_slice(text.as_bytes()).map_err(|e| UpgradeError::State(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(UpgradeError::State(format!(
            "state version {} from the previous binary, this one reads {STATE_VERSION}",
            state.version
        )));
    }
    Ok(Some(state))
}

/// In `--check-config`: when an upgrading master asks, whether this binary reads the state
/// version it would hand over.
pub fn check_state_version() -> Result<(), UpgradeError> {
    match std::env::var(VERSION_ENV) {
        Ok(v) if v != STATE_VERSION.to_string() => Err(UpgradeError::State(format!(
            "the running master hands over state version {v}, this binary reads {STATE_VERSION}: restart instead of reloading"
        ))),
        _ => Ok(()),
    }
}

/// Sets or clears close-on-exec on a descriptor the master owns.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write the descriptor's flags; callers pass
    // descriptors they own.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | nix::libc::FD_CLOEXEC
    } else {
        flags & !nix::libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces this process's image with `binary`, handing `state` over. Returns only on failure,
/// with everything as it was (descriptors close-on-exec again, the variable removed).
pub fn exec(binary: &Binary, state: &State) -> std::io::Error {
    let fail = |e: std::io::Error, fds: &[RawFd]| {
        for fd in fds {
            let _ = set_cloexec(*fd, true);
        }
        // SAFETY: single-threaded master (see `take_state`).
        unsafe { std::env::remove_var(STATE_ENV) };
        e
    };
    let fds = state.fds();
    let text = match serde_json::to_string(state) {
        Ok(t) => t,
        Err(e) => return std::io::Error::other(e),
    };
    let to_c = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let path = match to_c(binary.path.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let argv: Result<Vec<CString>, _> = binary.argv.iter().map(|a| to_c(a.as_bytes())).collect();
    let argv = match argv {
        Ok(a) => a,
        Err(e) => return e,
    };
    for (i, fd) in fds.iter().enumerate() {
        if let Err(e) = set_cloexec(*fd, false) {
            return fail(e, &fds[..i]);
        }
    }
    // SAFETY: single-threaded master (see `take_state`).
    unsafe { std::env::set_var(STATE_ENV, text) };
    // The environment as it is now, with the state in it.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let e = match nix::unistd::execve(&path, &argv, &env) {
        Err(errno) => std::io::Error::from(errno),
        Ok(never) => match never {},
    };
    fail(e, &fds)
}

/// Takes over a descriptor the previous image let cross `execve` (a worker's pipe) and makes
/// it close-on-exec again; `None` if it is not open.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    set_cloexec(fd, true).ok()?;
    // SAFETY: the previous image of this process exported fd as one of its own and let it
    // cross execve; F_SETFD above proved it open; the master adopts inherited descriptors
    // before it opens anything that could have been given that number.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
