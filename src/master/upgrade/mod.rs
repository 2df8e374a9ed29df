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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::unistd::Pid;

use super::clock::Ms;
use super::handover::Handover;
use crate::socket::Inherited;

mod legacy;
mod trust;
pub mod watch;

pub use self::trust::open_trusted;

/// The environment variable that carries [`State`] across `execve`.
pub const STATE_ENV: &str = "CLUSTERD_UPGRADE_STATE";
/// The flag that makes the binary check its configuration and exit.
pub const CHECK_FLAG: &str = "--check-config";
/// Set for the check: the [`State`] version the running master would hand over, so a new
/// binary that could not read it fails the check instead of the exec.
pub const VERSION_ENV: &str = "CLUSTERD_UPGRADE_STATE_VERSION";
/// Bumped when [`State`] changes shape: an image refuses a state it does not know.
const STATE_VERSION: u32 = 2;

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
    /// Its standard error, read when it has exited.
    stderr: std::process::ChildStderr,
    /// The new binary, opened once: what is checked is what is executed.
    image: OwnedFd,
}

impl Check {
    /// Runs the opened `image` with `--check-config` and the master's arguments and
    /// environment. The child is never waited for through `std`: the master loop reaps it like
    /// any child.
    pub fn start(binary: &Binary, image: OwnedFd) -> std::io::Result<Check> {
        let fd = image.as_raw_fd();
        let mut command = std::process::Command::new(format!("/proc/self/fd/{fd}"));
        // SAFETY: fcntl is async-signal-safe and touches only the child's own descriptor table.
        // Kept open across the exec so that a `#!` script's interpreter can open it by that
        // name (the kernel hands it /proc/self/fd/N).
        unsafe {
            command.pre_exec(move || {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .arg0(binary.argv.first().cloned().unwrap_or_default())
            .arg(CHECK_FLAG)
            .args(binary.argv.iter().skip(1))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env(VERSION_ENV, STATE_VERSION.to_string())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr was piped");
        // Read once it exited, without blocking the loop: a grandchild that kept the pipe open
        // must not hold the master.
        nix::fcntl::fcntl(
            &stderr,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Check {
            pid: Pid::from_raw(child.id() as i32),
            stderr,
            image,
        })
    }

    /// What the checker said (its last line on standard error, for a failed check), and the
    /// image it checked, for the `execve`.
    pub fn finish(mut self) -> (String, OwnedFd) {
        let mut bytes = Vec::new();
        // It has exited: what it wrote is buffered; a pipe still held open ends the read with
        // WouldBlock instead of blocking, and what was read so far stays.
        let _ = (&mut self.stderr).take(64 * 1024).read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        let said = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        (said, self.image)
    }
}

/// What the new image needs of the old one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    version: u32,
    /// The socket table (taken by `main` with [`State::take_sockets`]).
    sockets: Option<Inherited>,
    /// The cluster: workers, counters, a rollout's booting replacements.
    pub cluster: Handover,
    /// Each worker's pipe (its read end), by worker id.
    pub pipes: Vec<(u64, RawFd)>,
    /// The scoreboard's memfd.
    pub board_fd: Option<RawFd>,
    /// The metrics socket.
    pub metrics_fd: Option<RawFd>,
    /// The app counters' memfd (none from a release before them).
    #[serde(default)]
    pub counters_fd: Option<RawFd>,
    /// The socket table's memfd in systemd's descriptor store (none outside systemd, or from a
    /// release before it).
    #[serde(default)]
    pub table_fd: Option<RawFd>,
    /// The master that wrote it: a state is only good in the same process.
    pub master_pid: i32,
    /// The descriptor the new image was executed from, which it closes.
    #[serde(default)]
    pub image_fd: Option<RawFd>,
}

impl State {
    /// A state of this image's version, for this process.
    pub fn new(sockets: Inherited, cluster: Handover, pipes: Vec<(u64, RawFd)>) -> State {
        State {
            version: STATE_VERSION,
            sockets: Some(sockets),
            cluster,
            pipes,
            board_fd: None,
            metrics_fd: None,
            counters_fd: None,
            table_fd: None,
            master_pid: std::process::id() as i32,
            image_fd: None,
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
        fds.extend(self.counters_fd);
        fds.extend(self.table_fd);
        fds.extend(self.image_fd);
        fds.extend(self.pipes.iter().map(|(_, fd)| *fd));
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
    let version = serde_json::from_slice::<serde_json::Value>(text.as_bytes())
        .map_err(|e| UpgradeError::State(e.to_string()))?["version"]
        .as_u64();
    let state: State = match version {
        Some(1) => legacy::parse(text.as_bytes(), Ms::now())?,
        Some(v) if v == u64::from(STATE_VERSION) => serde_json::from_slice(text.as_bytes())
            .map_err(|e| UpgradeError::State(e.to_string()))?,
        other => {
            return Err(UpgradeError::State(format!(
                "state version {other:?} from the previous binary, this one reads 1 and {STATE_VERSION}"
            )));
        }
    };
    // A variable that leaked into the environment of another start (a unit, a shell) names
    // someone else's processes: never adopt, and later signal, those.
    if state.master_pid != 0 && state.master_pid != std::process::id() as i32 {
        return Err(UpgradeError::State(format!(
            "written by process {}, not this one (a leaked variable?): refusing to adopt processes that are not ours",
            state.master_pid
        )));
    }
    Ok(Some(state))
}

/// In `--check-config`: when an upgrading master asks, whether this binary reads the state
/// version it would hand over.
pub fn check_state_version() -> Result<(), UpgradeError> {
    match std::env::var(VERSION_ENV) {
        Ok(v) if v != "1" && v != STATE_VERSION.to_string() => Err(UpgradeError::State(format!(
            "the running master hands over state version {v}, this binary reads 1 and {STATE_VERSION}: restart instead of reloading"
        ))),
        _ => Ok(()),
    }
}

/// Replaces this process's image with the checked `image` of `binary`, handing `state` over.
/// Returns only on failure, with everything as it was (descriptors close-on-exec again, the
/// variable removed).
pub fn exec(binary: &Binary, image: &OwnedFd, state: &State) -> std::io::Error {
    let fail = |e: std::io::Error, fds: &[RawFd]| {
        for fd in fds {
            let _ = crate::fd::set_cloexec(*fd, true);
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
    let argv: Result<Vec<CString>, _> = binary.argv.iter().map(|a| to_c(a.as_bytes())).collect();
    let argv = match argv {
        Ok(a) => a,
        Err(e) => return e,
    };
    for (i, fd) in fds.iter().enumerate() {
        if let Err(e) = crate::fd::set_cloexec(*fd, false) {
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
    // From the descriptor (a `#!` script too: it is not close-on-exec now, see `Check`).
    let e = match nix::unistd::fexecve(image, &argv, &env) {
        Err(errno) => std::io::Error::from(errno),
        Ok(never) => match never {},
    };
    fail(e, &fds)
}
