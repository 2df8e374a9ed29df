//! Socket activation: the listening sockets systemd passes (`LISTEN_FDS`), and what a previous
//! master left in systemd's file descriptor store (told apart by their `LISTEN_FDNAMES`, see
//! `store.rs`). Runs in the master, first thing in `main`.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};

use super::*;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What systemd passed: the sockets of a socket unit, in order, and what a previous master
/// stored.
#[derive(Debug, Default)]
pub struct FromSystemd {
    /// The socket unit's sockets (socket activation).
    pub activation: Vec<TcpListener>,
    /// The previous master's socket table and sockets, from the descriptor store.
    pub stored: Option<super::store::Stored>,
}

/// Takes over what systemd passed, if `LISTEN_PID` names this process. Removes the
/// `LISTEN_*` variables so workers (which inherit the environment) never act on them.
///
/// Must run while the master is single-threaded: it edits the environment.
pub fn from_systemd() -> Result<Option<FromSystemd>, SocketError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
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
    let mut names = names.split(':');
    let mut out = FromSystemd::default();
    let mut stored = super::store::Stored::default();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        let name = names.next().unwrap_or("");
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
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if name == super::store::TABLE_NAME {
            // Kept from the children (a configuration check) like every descriptor of ours.
            let _ = nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            stored.tables += 1;
            stored.table = Some(owned);
            continue;
        }
        let socket = Socket::from(owned);
        let ok =
            socket.r#type().ok() == Some(Type::STREAM) && socket.is_listener().unwrap_or(false);
        // A stored socket that is no longer a listener (shut down meanwhile) is the previous
        // master's leftover, not a mistake in the unit: dropped, and taken out of the store.
        if let (false, Some(serial)) = (ok, super::store::stored_serial(name)) {
            stored.broken.push(serial);
            continue;
        }
        if !ok {
            return Err(SocketError::Activation(format!(
                "fd {fd} is not a listening stream socket"
            )));
        }
        // Activation sockets may carry O_NONBLOCK or not; workers set it themselves.
        let _ = socket.set_cloexec(true);
        if let Some(serial) = super::store::stored_serial(name) {
            stored.sockets.insert(serial, socket.into());
        } else {
            out.activation.push(socket.into());
        }
    }
    out.stored =
        (stored.table.is_some() || !stored.sockets.is_empty() || !stored.broken.is_empty())
            .then_some(stored);
    Ok(Some(out))
}
