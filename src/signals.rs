//! Signals of the master, read from a signalfd (`master::event::Command` says what each means).
//! Runs in the master; [`reset_in_child`]
//! runs in a freshly forked worker.
//!
//! The master installs no signal handler at all. It blocks the signals it cares about with
//! `sigprocmask` and reads them from a `signalfd`, which it polls in its loop beside the workers'
//! readiness pipes. Compared with handlers writing to a self-pipe (signal-hook's way), this
//! leaves nothing behind for `fork` to copy except the mask, which the worker clears in one call:
//! no inherited handler can write into a pipe the worker closed, and no global registry in the
//! child believes a handler is installed when it is not (tokio's signal support, which the worker
//! uses, registers through signal-hook-registry and would skip its own `sigaction` then).

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the master handles; everything else keeps its default action. USR1 and USR2
/// mean nothing to the master, but their default action would kill it (a logrotate script
/// written for nginx sends USR1): they are read and ignored.
const HANDLED: [Signal; 9] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// The master's signal source.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Resets the handled signals to their default action, blocks them and opens the signalfd.
    ///
    /// The reset matters: a shell starts background jobs with SIGINT and SIGQUIT ignored, and an
    /// ignored signal is discarded before it could reach the signalfd.
    pub fn install() -> nix::Result<Self> {
        for s in HANDLED {
            // SAFETY: SIG_DFL installs no Rust code as a handler, and the master has one thread.
            unsafe { signal(s, SigHandler::SigDfl) }?;
        }
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)?;
        let fd = SignalFd::with_flags(
            &handled_set(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        Ok(Signals { fd })
    }

    /// Reads every pending signal without blocking. Several SIGCHLDs that arrive together are
    /// delivered as one; the reaper loops on `waitpid` for that reason.
    pub fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Gives a new worker the signal state of a fresh process: default dispositions and an empty
/// mask. Call first thing after `fork`, before any thread or runtime exists in the child.
pub fn reset_in_child() -> nix::Result<()> {
    for s in HANDLED {
        // SAFETY: SIG_DFL installs no handler; the child has one thread at this point.
        unsafe { signal(s, SigHandler::SigDfl) }?;
    }
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}
