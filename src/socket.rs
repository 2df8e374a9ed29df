//! The listening socket, bound once by the master (or handed over by systemd) and inherited by
//! every worker through `fork`. Runs in the master.
//!
//! All workers accept on the same socket, and the kernel gives each connection to one of them.
//! While no worker accepts (all dead, or between a crash and the respawn), connections wait in
//! the socket's backlog instead of being refused, because the master keeps the socket open.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Errors getting the listening socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// socket/bind/listen failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `LISTEN_FDS` was set for this process but did not describe one listening TCP socket.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// Binds `addr` with `SO_REUSEADDR` (a restart does not wait for TIME_WAIT) and listens with
/// `backlog`. An IPv6 address accepts IPv6 only, so `[::]:80` and `0.0.0.0:80` can coexist.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, SocketError> {
    let err = |source| SocketError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    Ok(socket.into())
}

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes over the socket systemd passed, if `LISTEN_PID` names this process. Removes the
/// `LISTEN_*` variables so workers (which inherit the environment) never act on them.
///
/// Must run while the master is single-threaded: it edits the environment.
pub fn from_systemd() -> Result<Option<TcpListener>, SocketError> {
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
    match fds.parse::<i32>() {
        Ok(1) => {}
        Ok(n) => {
            return Err(SocketError::Activation(format!(
                "expected 1 socket, got {n}"
            )));
        }
        Err(_) => {
            return Err(SocketError::Activation(format!(
                "LISTEN_FDS={fds:?} is not a number"
            )));
        }
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID matched) and nothing else in the
    // master has taken ownership of it.
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) });
    let ok = socket.r#type().ok() == Some(Type::STREAM) && socket.is_listener().unwrap_or(false);
    if !ok {
        return Err(SocketError::Activation(
            "fd 3 is not a listening stream socket".into(),
        ));
    }
    // Activation sockets may carry O_NONBLOCK or not; workers set it themselves.
    let _ = socket.set_cloexec(true);
    Ok(Some(socket.into()))
}
