//! Socket activation: the listening sockets systemd passes (`LISTEN_FDS`). Runs in the master,
//! first thing in `main`.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};

use super::*;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes over the sockets systemd passed, if `LISTEN_PID` names this process. Removes the
/// `LISTEN_*` variables so workers (which inherit the environment) never act on them.
///
/// Must run while the master is single-threaded: it edits the environment.
pub fn from_systemd() -> Result<Option<Vec<TcpListener>>, SocketError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the master has a single thread here, so nothing reads the environment
        // concurrently.
        unsafe { std::env::remove_var(name) };
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n = match fds.parse::<i32>() {
        Ok(n) if (1..=1024).contains(&n) => n,
        _ => {
            return Err(SocketError::Activation(format!(
                "LISTEN_FDS={fds:?} is not a number of sockets from 1 to 1024"
            )));
        }
    };
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        // A descriptor that is not open must not be taken: the number may be handed to a file
        // opened later, which dropping our `OwnedFd` would then close behind its owner's back.
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
            return Err(SocketError::Activation(format!(
                "LISTEN_FDS={n} but fd {fd} is not open"
            )));
        }
        // SAFETY: systemd passed fds 3.. to this process (LISTEN_PID matched), fd is open (checked
        // above), and nothing else in the master has taken ownership of it: `main` adopts the
        // sockets before it opens any file.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let ok =
            socket.r#type().ok() == Some(Type::STREAM) && socket.is_listener().unwrap_or(false);
        if !ok {
            return Err(SocketError::Activation(format!(
                "fd {fd} is not a listening stream socket"
            )));
        }
        // Activation sockets may carry O_NONBLOCK or not; workers set it themselves.
        let _ = socket.set_cloexec(true);
        out.push(socket.into());
    }
    Ok(Some(out))
}
