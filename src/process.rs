//! The one `fork`, the reaper, and the exit-code protocol between worker and master. `spawn` and
//! `reap` run in the master; the child half of `spawn` hands over to the worker and never
//! comes back.

use std::io::Write;
use std::os::fd::RawFd;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Exit codes a worker uses to tell the master why it stopped. The master's restart policy keys
/// on them (see [`Death::policy`]); gunicorn uses 3 and 4 for the same two cases.
pub mod exit_code {
    /// Stopped because it was asked to (TERM, QUIT, or its master died).
    pub const OK: i32 = 0;
    /// Failed at run time; respawn (with back-off if it keeps happening).
    pub const FAILURE: i32 = 1;
    /// Could not boot for a reason that may pass (a port, a file, a dependency); back off.
    pub const BOOT_FAILED: i32 = 3;
    /// Could not boot because the configuration is wrong: retrying cannot help, the master halts.
    pub const CONFIG_INVALID: i32 = 4;
    /// A panic reached the worker's entry function.
    pub const PANIC: i32 = 70;
}

/// Errors of the process layer.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Fork refused because the master already runs more than one thread (fork rule 1).
    #[error("refusing to fork: the master runs {0} threads, and fork copies only one")]
    Threaded(usize),
    /// `fork(2)` failed (process limit, memory).
    #[error("fork: {0}")]
    Fork(nix::Error),
}

/// Number of threads in this process, from `/proc/self/status`.
pub fn thread_count() -> std::io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Threads: line in /proc/self/status"))
}

/// Forks. In the child, `child` runs and the process exits with what it returns; it never
/// returns into the caller's (the master's) code. In the parent, returns the child's pid.
///
/// Refuses to fork while the master has a second thread: the child would inherit locks held by
/// threads that do not exist in it (an allocator lock, tokio's driver), and hang on them.
pub fn spawn(child: impl FnOnce() -> i32) -> Result<Pid, ProcessError> {
    match thread_count() {
        Ok(1) => {}
        Ok(n) => return Err(ProcessError::Threaded(n)),
        // No /proc (unusual): nothing to check with; the master never starts threads anyway.
        Err(_) => {}
    }
    // Whatever sits in stdio buffers would be written twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: the master is single-threaded (checked above), so the child's copy of the address
    // space has no lock held by a vanished thread; the child runs only `child` and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => {
            // A panic must not unwind out of here into the master's loop, which the child's
            // copy of the stack still holds.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child))
                .unwrap_or(exit_code::PANIC);
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            std::process::exit(code)
        }
        Err(e) => Err(ProcessError::Fork(e)),
    }
}

/// Closes every descriptor of this process except stdio and `keep`. A new worker calls it to
/// drop what the master holds for itself (signalfd, other workers' pipes): close-on-exec does
/// nothing at `fork`.
pub fn close_fds_except(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    // The directory's own descriptor is in the list but already closed here; closing it again
    // fails with EBADF, which is harmless.
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

/// What the master should do about a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Replace the worker (after any crash-loop delay).
    Respawn,
    /// Stop the whole service: the worker reported a configuration error.
    Halt,
}

impl Death {
    /// Classifies a `waitpid` status; `None` for stops and continues, which are not deaths.
    pub fn from_status(status: WaitStatus) -> Option<(Pid, Death)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, Death::Exited(code))),
            WaitStatus::Signaled(pid, sig, _) => Some((pid, Death::Signaled(sig))),
            _ => None,
        }
    }

    /// The restart policy for an unplanned death.
    pub fn policy(self) -> Policy {
        match self {
            Death::Exited(exit_code::CONFIG_INVALID) => Policy::Halt,
            _ => Policy::Respawn,
        }
    }

    /// Words for the log line, gunicorn-style: what happened and a hint at why.
    pub fn describe(self) -> String {
        match self {
            Death::Exited(exit_code::OK) => "exited normally (code 0)".into(),
            Death::Exited(exit_code::BOOT_FAILED) => "failed to boot (code 3)".into(),
            Death::Exited(exit_code::CONFIG_INVALID) => {
                "rejected its configuration (code 4)".into()
            }
            Death::Exited(exit_code::PANIC) => "panicked (code 70)".into(),
            Death::Exited(code) => format!("exited with code {code}"),
            Death::Signaled(Signal::SIGKILL) => {
                "killed by SIGKILL (perhaps the out-of-memory killer: see dmesg)".into()
            }
            Death::Signaled(sig) => format!("killed by {}", sig.as_str()),
        }
    }
}

/// Collects every child that has ended, without blocking. Loops until `waitpid` reports nothing
/// more, since several SIGCHLDs can merge into one.
pub fn reap() -> Vec<(Pid, Death)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(status) => {
                if let Some(d) = Death::from_status(status) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// A process's resident memory in bytes, from /proc/PID/statm. Used by the master (status,
/// `--max-worker-memory`) and by workers rendering the dashboard (they run as one user, so
/// they can read each other's).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_halt_and_everything_else_respawns() {
        assert_eq!(
            Death::Exited(exit_code::CONFIG_INVALID).policy(),
            Policy::Halt
        );
        for d in [
            Death::Exited(exit_code::OK),
            Death::Exited(exit_code::FAILURE),
            Death::Exited(exit_code::BOOT_FAILED),
            Death::Exited(exit_code::PANIC),
            Death::Signaled(Signal::SIGKILL),
            Death::Signaled(Signal::SIGSEGV),
        ] {
            assert_eq!(d.policy(), Policy::Respawn, "{d:?}");
        }
    }

    #[test]
    fn sigkill_mentions_the_oom_killer() {
        assert!(
            Death::Signaled(Signal::SIGKILL)
                .describe()
                .contains("out-of-memory")
        );
        assert_eq!(
            Death::Signaled(Signal::SIGSEGV).describe(),
            "killed by SIGSEGV"
        );
        assert_eq!(Death::Exited(9).describe(), "exited with code 9");
    }
}
