//! The socket table as it crosses `execve` on an upgrade, and how the new image takes it
//! over. Runs in the master.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;

use socket2::Socket;

use super::*;

/// The socket table as it crosses `execve` when the master upgrades itself: descriptor numbers
/// (inherited by the new image) and the table's bookkeeping, so that the new image goes on with
/// the same sockets, the same mirror of the kernel's group and the same steering.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Inherited {
    pub(super) mode: String,
    pub(super) addr: SocketAddr,
    pub(super) backlog: u32,
    /// Index = slot: (descriptor, passed by systemd, serial).
    pub(super) slots: Vec<Option<(RawFd, bool, u64)>>,
    pub(super) fallback: Vec<RawFd>,
    pub(super) group: Vec<u64>,
    pub(super) closing: Vec<u64>,
    pub(super) next_serial: u64,
    pub(super) steer: bool,
}

impl Inherited {
    /// The layout's name and the address of slot 0.
    pub fn layout(&self) -> (&str, SocketAddr) {
        (&self.mode, self.addr)
    }

    /// Every descriptor it names.
    pub fn fds(&self) -> Vec<RawFd> {
        let slots = self.slots.iter().flatten().map(|(fd, _, _)| *fd);
        slots.chain(self.fallback.iter().copied()).collect()
    }
}

impl Sockets {
    /// Describes the table for the next image. The descriptors stay owned here; the caller
    /// makes them inheritable just before `execve` (and close-on-exec again if it fails).
    pub fn export(&self) -> Inherited {
        Inherited {
            mode: self.mode.as_str().to_string(),
            addr: self.addr,
            backlog: self.backlog,
            slots: self
                .slots
                .iter()
                .map(|e| {
                    e.as_ref()
                        .map(|e| (e.listener.as_raw_fd(), e.passed, e.serial))
                })
                .collect(),
            fallback: self.fallback.iter().map(AsRawFd::as_raw_fd).collect(),
            group: self.group.clone(),
            closing: self.closing.clone(),
            next_serial: self.next_serial,
            steer: self.steer,
        }
    }

    /// Takes over the table the previous image exported. Each descriptor must be an open
    /// listening stream socket; it becomes close-on-exec again.
    pub fn import(state: Inherited) -> Result<Self, SocketError> {
        let mode = SocketMode::from_str(&state.mode).map_err(SocketError::Activation)?;
        let adopt = |fd: RawFd| -> Result<TcpListener, SocketError> {
            let socket = Socket::from(crate::fd::adopt(fd).ok_or_else(|| {
                SocketError::Activation(format!("inherited socket fd {fd} is not open"))
            })?);
            if !socket.is_listener().unwrap_or(false) {
                return Err(SocketError::Activation(format!(
                    "inherited fd {fd} is not a listening socket"
                )));
            }
            Ok(socket.into())
        };
        let mut slots = Vec::with_capacity(state.slots.len());
        for slot in state.slots {
            slots.push(match slot {
                Some((fd, passed, serial)) => Some(Entry {
                    listener: adopt(fd)?,
                    passed,
                    serial,
                }),
                None => None,
            });
        }
        let fallback = state
            .fallback
            .into_iter()
            .map(adopt)
            .collect::<Result<_, _>>()?;
        Ok(Sockets {
            mode,
            addr: state.addr,
            backlog: state.backlog,
            slots,
            fallback,
            group: state.group,
            closing: state.closing,
            // The previous image's program may avoid a slot: unknown, so the first
            // `Sockets::avoid` re-steers whatever it decides.
            avoided: None,
            next_serial: state.next_serial,
            steer: state.steer,
        })
    }

    /// A slot's socket is gone from the group while the exec happened (its worker shut it down
    /// or died): forget it. For closing sockets the new image cannot ask about.
    pub fn forget_closing(&mut self, keep: &[u64]) {
        let gone: Vec<u64> = self
            .closing
            .iter()
            .copied()
            .filter(|s| !keep.contains(s))
            .collect();
        for serial in gone {
            self.gone(serial);
        }
    }
}
