//! The socket table: the listening sockets, owned by the master and handed to workers through
//! `fork`, one entry per worker slot. Runs in the master.
//!
//! Three layouts ([`SocketMode`]):
//! - `per-worker` (the default): every slot has its own `SO_REUSEPORT` socket on the same
//!   address, and the kernel spreads new connections over them by a hash of the connection's
//!   addresses. A worker whose accept thread happens to be awake cannot drain everyone's
//!   connections, as it does on one shared socket.
//! - `shared`: one socket that every worker accepts on.
//! - `per-worker-port`: slot *i* listens on the bound port + *i*, for a proxy that pins clients.
//!
//! The master keeps every slot's socket open for as long as the slot exists. So while a slot's
//! worker is dead (between a crash and its replacement, ~3 ms) its connections wait in the
//! socket's queue instead of being refused or reset, and during a rolling restart the old and
//! the new worker of a slot accept on the same socket.
//!
//! A slot that goes away (fewer workers) must not lose what is queued on its socket: closing a
//! listener resets its queue (unless `net.ipv4.tcp_migrate_req=1`). So in `per-worker` mode the
//! master also chooses which socket the kernel gives each new connection: a classic BPF program
//! attached to the group (`SO_ATTACH_REUSEPORT_CBPF`) maps the connection's hash onto the
//! sockets of live slots only. A retiring slot is taken out of the program first; its worker
//! keeps accepting until its queue is empty and only then shuts the socket down (`worker/serve.rs`).
//! The program returns indices into the kernel's array of the group's sockets, which the master
//! mirrors: a socket is appended when it starts listening, and a leaving one is replaced by the
//! last. An index the kernel no longer has makes it fall back to its own hash over the sockets
//! still listening, so a briefly stale mirror costs balance, never a connection.

mod activation;
mod inherit;
mod steer;
mod store;

pub use self::activation::{FromSystemd, from_systemd};
pub use self::inherit::Inherited;
pub use self::steer::Balance;
pub use self::store::{FdStore, Stored, shut_stale};

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;

use socket2::{Domain, Protocol, Socket, Type};

/// Errors getting the listening sockets.
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
    /// `LISTEN_FDS` was set for this process but did not describe listening TCP sockets.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// How the workers' listening sockets are laid out. In a config file: the names of `--sockets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketMode {
    /// One `SO_REUSEPORT` socket per slot on the same address; the kernel balances.
    #[default]
    PerWorker,
    /// One socket for all workers.
    Shared,
    /// Slot *i* on port + *i*.
    PerWorkerPort,
}

impl SocketMode {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketMode::PerWorker => "per-worker",
            SocketMode::Shared => "shared",
            SocketMode::PerWorkerPort => "per-worker-port",
        }
    }
}

impl FromStr for SocketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-worker" => Ok(SocketMode::PerWorker),
            "shared" => Ok(SocketMode::Shared),
            "per-worker-port" => Ok(SocketMode::PerWorkerPort),
            _ => Err(format!(
                "{s:?} is not one of per-worker, shared, per-worker-port"
            )),
        }
    }
}

impl std::fmt::Display for SocketMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listening socket's accept queue from `TCP_INFO`: for a listener the kernel reports the
/// connections waiting to be accepted as `tcpi_unacked` and the backlog as `tcpi_sacked`.
pub fn accept_queue(listener: &TcpListener) -> Option<(u32, u32)> {
    use nix::libc;
    // SAFETY: an all-zero tcp_info is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes, and the descriptor is the
    // listener's, open for as long as the borrow.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// Binds `addr` with `SO_REUSEADDR` (a restart does not wait for TIME_WAIT), optionally
/// `SO_REUSEPORT`, and listens with `backlog`. An IPv6 address accepts IPv6 only, so `[::]:80`
/// and `0.0.0.0:80` can coexist. The descriptor is close-on-exec; `fork` still copies it.
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> Result<TcpListener, SocketError> {
    let err = |source| SocketError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if reuse_port {
        // Set before bind: the kernel checks it when the address is taken.
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    Ok(socket.into())
}

/// Where a socket came from: the master never closes one that systemd passed (systemd keeps it
/// across restarts, and the master could not bind it again).
#[derive(Debug)]
struct Entry {
    listener: TcpListener,
    passed: bool,
    /// Identity in the mirror of the kernel's group (`Sockets::group`).
    serial: u64,
}

/// The master's listening sockets, by slot.
#[derive(Debug)]
pub struct Sockets {
    mode: SocketMode,
    /// The address of slot 0 (the `--bind` address, or the one systemd's socket is bound to).
    addr: SocketAddr,
    backlog: u32,
    /// Index = slot; `None` for a slot whose socket is not open (yet, or any more). In shared
    /// mode only index 0 is used.
    slots: Vec<Option<Entry>>,
    /// Sockets from systemd, when the master cannot open more next to them: slot *i* then
    /// accepts on `passed[i % passed.len()]`.
    fallback: Vec<TcpListener>,
    /// The kernel's array of the SO_REUSEPORT group's sockets, as serials, in its order.
    group: Vec<u64>,
    /// Serials of sockets whose slot went away but that are still in the group (their worker
    /// drains them): no new connection is steered to them.
    closing: Vec<u64>,
    /// Serials of sockets whose worker does not keep up (`--balance load`): no new connection
    /// is steered to them while another socket can take it. `None`: not known (adopted from
    /// the previous image, whose program is still attached).
    avoided: Option<Vec<u64>>,
    next_serial: u64,
    /// Steering is on (per-worker mode, until attaching a program fails once).
    steer: bool,
}

impl Sockets {
    /// Binds the first slot's socket on `addr`; further slots are opened on demand by
    /// [`Sockets::for_slot`].
    pub fn bind(mode: SocketMode, addr: SocketAddr, backlog: u32) -> Result<Self, SocketError> {
        let mut s = Sockets::empty(mode, addr, backlog);
        if mode == SocketMode::PerWorker {
            // Another process's SO_REUSEPORT sockets on this port (a second clusterd, say) would
            // silently join our group. A plain bind collides with any listener there: probe.
            drop(bind(addr, backlog, false)?);
        }
        let first = s.open(0)?;
        // With port 0 the kernel picked one: the other slots bind that same port.
        s.addr = first
            .local_addr()
            .map_err(|source| SocketError::Bind { addr, source })?;
        s.push(0, first, false);
        Ok(s)
    }

    fn empty(mode: SocketMode, addr: SocketAddr, backlog: u32) -> Self {
        Sockets {
            mode,
            addr,
            backlog,
            slots: Vec::new(),
            fallback: Vec::new(),
            group: Vec::new(),
            closing: Vec::new(),
            avoided: Some(Vec::new()),
            next_serial: 1,
            steer: mode == SocketMode::PerWorker,
        }
    }

    /// Puts a listening socket in `slot`, appends it to the group's mirror and re-steers.
    fn push(&mut self, slot: usize, listener: TcpListener, passed: bool) {
        let serial = self.next_serial;
        self.next_serial += 1;
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(Entry {
            listener,
            passed,
            serial,
        });
        if self.mode == SocketMode::PerWorker {
            self.group.push(serial);
            self.steer();
        }
    }

    /// Takes over the sockets systemd passed. `per-worker` needs every one of them to have
    /// `SO_REUSEPORT` and the master to be able to bind siblings (systemd created them as root;
    /// the kernel only groups sockets of one owner): when either fails, this returns the mode
    /// actually used and the reason, for one log line.
    pub fn adopt(
        mode: SocketMode,
        passed: Vec<TcpListener>,
        backlog: u32,
    ) -> Result<(Self, Option<String>), SocketError> {
        let first = passed
            .first()
            .ok_or_else(|| SocketError::Activation("no socket passed".into()))?;
        let addr = first
            .local_addr()
            .map_err(|e| SocketError::Activation(format!("reading the socket's address: {e}")))?;
        for l in &passed {
            if l.local_addr().ok() != Some(addr) && mode != SocketMode::PerWorkerPort {
                return Err(SocketError::Activation(format!(
                    "the passed sockets are bound to different addresses ({addr} and {:?})",
                    l.local_addr().ok()
                )));
            }
        }
        let mut s = Sockets::empty(mode, addr, backlog);
        let mut note = None;
        match mode {
            SocketMode::Shared if passed.len() > 1 => {
                return Err(SocketError::Activation(format!(
                    "--sockets shared takes one socket, got {}",
                    passed.len()
                )));
            }
            SocketMode::PerWorkerPort => {
                return Err(SocketError::Activation(
                    "--sockets per-worker-port binds its own ports; do not use socket activation with it"
                        .into(),
                ));
            }
            SocketMode::PerWorker => {
                let all_reuse = passed
                    .iter()
                    .all(|l| socket2::SockRef::from(l).reuse_port().unwrap_or(false));
                if !all_reuse {
                    s.mode = SocketMode::Shared;
                    note = Some(
                        "the socket from systemd lacks SO_REUSEPORT (set ReusePort=yes in the .socket unit): every worker accepts on it (--sockets shared)"
                            .to_string(),
                    );
                    if passed.len() > 1 {
                        return Err(SocketError::Activation(format!(
                            "{} sockets without SO_REUSEPORT cannot be shared",
                            passed.len()
                        )));
                    }
                }
            }
            SocketMode::Shared => {}
        }
        // systemd opens them in the order of its ListenStream= lines, which is the order they
        // joined the group.
        for (slot, l) in passed.into_iter().enumerate() {
            s.push(slot, l, true);
        }
        Ok((s, note))
    }

    /// The layout in use.
    pub fn mode(&self) -> SocketMode {
        self.mode
    }

    /// The address of slot 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many sockets systemd passed (0 when the master bound its own).
    pub fn passed(&self) -> usize {
        self.slots.iter().flatten().filter(|e| e.passed).count() + self.fallback.len()
    }

    fn slot_addr(&self, slot: usize) -> SocketAddr {
        let mut addr = self.addr;
        if self.mode == SocketMode::PerWorkerPort {
            addr.set_port(self.addr.port().saturating_add(slot as u16));
        }
        addr
    }

    fn open(&self, slot: usize) -> Result<TcpListener, SocketError> {
        let addr = self.slot_addr(slot);
        if self.mode == SocketMode::PerWorkerPort && addr.port() < self.addr.port() {
            return Err(SocketError::Bind {
                addr,
                source: std::io::Error::other("port out of range"),
            });
        }
        bind(addr, self.backlog, self.mode == SocketMode::PerWorker)
    }

    /// The descriptor slot `slot`'s worker accepts on, opening the slot's socket if needed.
    pub fn for_slot(&mut self, slot: usize) -> Result<RawFd, SocketError> {
        if self.mode == SocketMode::Shared {
            return Ok(self.slots[0]
                .as_ref()
                .expect("the shared socket stays open")
                .listener
                .as_raw_fd());
        }
        if !self.fallback.is_empty() {
            return Ok(self.fallback[slot % self.fallback.len()].as_raw_fd());
        }
        if self.slots.get(slot).is_none_or(Option::is_none) {
            match self.open(slot) {
                Ok(listener) => self.push(slot, listener, false),
                // Sockets from systemd that the master cannot join (another owner): share them
                // out instead, so every passed socket is served.
                Err(e) if self.passed() > 0 => {
                    tracing::warn!(
                        error = %e,
                        passed = self.passed(),
                        "cannot open a socket next to systemd's (created by another user?); workers share the passed sockets: list ListenStream= once per worker to balance"
                    );
                    self.fallback = self
                        .slots
                        .drain(..)
                        .flatten()
                        .filter(|e| e.passed)
                        .map(|e| e.listener)
                        .collect();
                    self.unsteer();
                    return Ok(self.fallback[slot % self.fallback.len()].as_raw_fd());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.slots[slot]
            .as_ref()
            .expect("opened above")
            .listener
            .as_raw_fd())
    }

    /// The accept queue of the socket slot `slot`'s worker accepts on: connections waiting to
    /// be accepted, and the kernel's limit (the backlog). `None` for a slot with no open socket.
    pub fn queue(&self, slot: usize) -> Option<(u32, u32)> {
        let listener = match self.mode {
            SocketMode::Shared => &self.slots.first()?.as_ref()?.listener,
            _ if !self.fallback.is_empty() => &self.fallback[slot % self.fallback.len()],
            _ => &self.slots.get(slot)?.as_ref()?.listener,
        };
        accept_queue(listener)
    }

    /// Closes the master's copy of a slot's socket, because the slot goes away, after steering
    /// new connections away from it. Returns the socket's serial when one was closed: its
    /// worker is then the last holder and must retire it, and [`Sockets::gone`] takes the
    /// serial once the socket has left the group. Shared sockets and sockets from systemd stay.
    pub fn close_slot(&mut self, slot: usize) -> Option<u64> {
        if self.mode == SocketMode::Shared || !self.fallback.is_empty() {
            return None;
        }
        let serial = match self.slots.get(slot) {
            Some(Some(e)) if !e.passed => e.serial,
            _ => return None,
        };
        if self.mode == SocketMode::PerWorker {
            self.closing.push(serial);
            // Steered away while the master still holds a socket of the group to attach with.
            self.steer();
        }
        self.slots[slot] = None;
        Some(serial)
    }

    /// A socket given up by [`Sockets::close_slot`] has been shut down by its worker (or the
    /// worker is gone): the kernel took it out of the group's array.
    pub fn gone(&mut self, serial: u64) {
        let Some(i) = self.closing.iter().position(|s| *s == serial) else {
            return;
        };
        self.closing.swap_remove(i);
        if let Some(a) = &mut self.avoided {
            a.retain(|s| *s != serial);
        }
        if let Some(at) = self.group.iter().position(|s| *s == serial) {
            // The kernel fills the hole with its last socket; so does the mirror.
            self.group.swap_remove(at);
        }
        self.steer();
    }

    /// The lowest slot count at which every socket systemd passed has a worker: passed sockets
    /// are never closed, so fewer workers would leave one unserved.
    pub fn min_workers(&self) -> usize {
        if self.mode == SocketMode::Shared {
            1
        } else {
            self.fallback.len().max(
                self.slots
                    .iter()
                    .rposition(|e| e.as_ref().is_some_and(|e| e.passed))
                    .map_or(1, |i| i + 1),
            )
        }
    }
}

/// `net.ipv4.tcp_migrate_req` of this network namespace (Linux 5.14+), `None` if unknown.
/// With 1, connections queued on a closing `SO_REUSEPORT` socket move to a sibling instead of
/// being reset.
pub fn tcp_migrate_req() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .ok()
        .map(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_the_same_names() {
        for m in [
            SocketMode::PerWorker,
            SocketMode::Shared,
            SocketMode::PerWorkerPort,
        ] {
            assert_eq!(m.as_str().parse::<SocketMode>(), Ok(m));
        }
        assert!("reuseport".parse::<SocketMode>().is_err());
    }

    #[test]
    fn per_worker_slots_share_the_address_and_close_alone() {
        let mut s =
            Sockets::bind(SocketMode::PerWorker, "127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = s.addr();
        assert_ne!(
            addr.port(),
            0,
            "port 0 is resolved, so every slot binds the same port"
        );
        let a = s.for_slot(0).unwrap();
        let b = s.for_slot(1).unwrap();
        assert_ne!(a, b, "two sockets");
        assert_eq!(s.for_slot(1).unwrap(), b, "a slot keeps its socket");
        assert!(s.close_slot(1).is_some());
        assert!(s.close_slot(1).is_none(), "already closed");
    }

    #[test]
    fn shared_mode_hands_every_slot_one_socket_and_never_closes_it() {
        let mut s = Sockets::bind(SocketMode::Shared, "127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert_eq!(s.for_slot(0).unwrap(), s.for_slot(3).unwrap());
        assert!(s.close_slot(0).is_none());
        assert_eq!(s.min_workers(), 1);
    }
}
