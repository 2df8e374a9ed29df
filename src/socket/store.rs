//! Restarts that lose nothing. Under systemd the master keeps its slot sockets, and the table
//! that says which is which, in the service manager's file descriptor store (`FDSTORE=1`, the
//! unit's `FileDescriptorStoreMax=`). A master started after `systemctl restart` or a crash
//! gets them back (`LISTEN_FDS`, told apart by `LISTEN_FDNAMES`) and serves on the same
//! sockets: what was queued on them waits for the new workers instead of being reset, and new
//! connections queue meanwhile instead of being refused. Runs in the master.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;

use sd_notify::NotifyState;

use super::*;

/// The stored table's name: a memfd holding the socket table ([`Inherited`] as JSON).
pub const TABLE_NAME: &str = "clusterd-table";
/// A stored slot socket's name: this, then its serial.
const SOCKET_PREFIX: &str = "clusterd-s";

/// The serial of a stored slot socket, from its name.
pub fn stored_serial(name: &str) -> Option<u64> {
    name.strip_prefix(SOCKET_PREFIX)?.parse().ok()
}

fn socket_name(serial: u64) -> String {
    format!("{SOCKET_PREFIX}{serial}")
}

/// What a previous master left in the store.
#[derive(Debug, Default)]
pub struct Stored {
    /// The table's memfd.
    pub table: Option<OwnedFd>,
    /// How many descriptors were named as the table (more than one: which is current is not
    /// known, and nothing is restored).
    pub tables: usize,
    /// Its slot sockets, by serial.
    pub sockets: BTreeMap<u64, TcpListener>,
    /// Serials of stored descriptors that are no longer listening sockets.
    pub broken: Vec<u64>,
}

impl Stored {
    /// The table the previous master wrote last.
    pub fn read_table(&self) -> Result<Inherited, SocketError> {
        if self.tables > 1 {
            return Err(SocketError::Activation(format!(
                "{} stored tables: which is current is not known",
                self.tables
            )));
        }
        let fd = self
            .table
            .as_ref()
            .ok_or_else(|| SocketError::Activation("stored sockets without their table".into()))?;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = nix::sys::uio::pread(fd, &mut buf, text.len() as i64)
                .map_err(|e| SocketError::Activation(format!("reading the stored table: {e}")))?;
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        serde_json::from_slice(&text)
            .map_err(|e| SocketError::Activation(format!("the stored table: {e}")))
    }
}

impl Sockets {
    /// How many of the table's slots had a socket unit's socket.
    pub fn passed_in(table: &Inherited) -> usize {
        table.slots.iter().flatten().filter(|e| e.1).count()
            + if table.fallback.is_empty() {
                0
            } else {
                table.fallback.len()
            }
    }

    /// Rebuilds the table a previous master stored, on its own sockets (by serial) and the
    /// socket unit's (`activation`, in order, for the slots that had one). A socket of the table
    /// that did not come back left the kernel's group when its last holder closed it, and so
    /// did those that were closing: the mirror drops them as the kernel did. Stored sockets the
    /// table does not name stay in `stored` (the caller closes them and takes them out of the
    /// store).
    pub fn restore(
        table: Inherited,
        stored: &mut Stored,
        activation: Vec<TcpListener>,
    ) -> Result<Sockets, SocketError> {
        let mode = SocketMode::from_str(&table.mode).map_err(SocketError::Activation)?;
        let mut activation = activation.into_iter();
        let mut slots = Vec::with_capacity(table.slots.len());
        let mut lost = Vec::new();
        for slot in table.slots {
            slots.push(match slot {
                Some((_, true, serial)) => Some(Entry {
                    listener: activation.next().ok_or_else(|| {
                        SocketError::Activation(
                            "the socket unit passed fewer sockets than the stored table names"
                                .into(),
                        )
                    })?,
                    passed: true,
                    serial,
                }),
                Some((_, false, serial)) => match stored.sockets.remove(&serial) {
                    Some(listener) => Some(Entry {
                        listener,
                        passed: false,
                        serial,
                    }),
                    None => {
                        lost.push(serial);
                        None
                    }
                },
                None => None,
            });
        }
        let fallback = if table.fallback.is_empty() {
            Vec::new()
        } else {
            activation.collect()
        };
        let mut s = Sockets {
            mode,
            addr: table.addr,
            backlog: table.backlog,
            slots,
            fallback,
            group: table.group,
            closing: table.closing,
            avoided: None,
            next_serial: table.next_serial,
            steer: table.steer,
        };
        // The kernel took these out of its array in the order their last holders closed
        // them, which is not known: with two or more, the mirror may have the rest in
        // another order, and the kernel's own hash is safer than a wrong program.
        let removed = s.closing.len() + lost.len();
        s.closing.extend(lost);
        s.forget_closing(&[]);
        if removed >= 2 && s.steer {
            tracing::warn!(
                sockets = removed,
                "several sockets left the group while no master watched, in an order not known: steering by the kernel's hash until a full restart"
            );
            s.release_steering();
        }
        s.steer();
        Ok(s)
    }

    /// Shuts down the restored sockets of slots `from` and above (more than this master may
    /// run: `--max-workers` was lowered across the restart): no worker will accept on them, so
    /// they leave the group now, and systemd drops its copies. Returns their serials, for the
    /// store.
    pub fn shut_from(&mut self, from: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for slot in from..self.slots.len() {
            let serial = match &self.slots[slot] {
                Some(e) if !e.passed => e.serial,
                _ => continue,
            };
            shut_stale(self.slots[slot].take().map(|e| e.listener));
            self.closing.push(serial);
            self.gone(serial);
            out.push(serial);
        }
        out
    }

    /// The slots with an open socket.
    pub fn open_slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|s| self.slots[*s].is_some())
            .collect()
    }

    /// The sockets the master opened itself (not a socket unit's), by serial.
    fn own(&self) -> BTreeMap<u64, &TcpListener> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| !e.passed)
            .map(|e| (e.serial, &e.listener))
            .collect()
    }
}

/// Shuts down stored sockets this master does not use, so they leave the group and their
/// address is free to bind (systemd's copies go with them).
pub fn shut_stale(sockets: impl IntoIterator<Item = TcpListener>) {
    for l in sockets {
        let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    }
}

/// The master's side of the store: keeps it in step with the socket table.
#[derive(Debug)]
pub struct FdStore {
    table: OwnedFd,
    table_stored: bool,
    stored: BTreeSet<u64>,
    written: String,
}

impl FdStore {
    /// Under a service manager that keeps descriptors (`NOTIFY_SOCKET` set, and `FDSTORE`, which
    /// systemd 254 and later set to `FileDescriptorStoreMax=`, not 0): with the table's memfd a
    /// previous master or image left, else a new one.
    pub fn open(table: Option<OwnedFd>) -> Option<FdStore> {
        std::env::var_os("NOTIFY_SOCKET")?;
        if std::env::var("FDSTORE").is_ok_and(|max| max.trim() == "0") {
            return None;
        }
        let (table, table_stored) = match table {
            Some(fd) => (fd, true),
            None => {
                // A table left by a master whose sockets were not restored goes first: one
                // table under the name, always.
                send(
                    &[NotifyState::FdStoreRemove, NotifyState::FdName(TABLE_NAME)],
                    &[],
                );
                use nix::sys::memfd::{MFdFlags, memfd_create};
                match memfd_create(c"clusterd-table", MFdFlags::MFD_CLOEXEC) {
                    Ok(fd) => (fd, false),
                    Err(e) => {
                        tracing::warn!(error = %e, "no memfd for the socket table: a restart will bind new sockets");
                        return None;
                    }
                }
            }
        };
        Some(FdStore {
            table,
            table_stored,
            stored: BTreeSet::new(),
            written: String::new(),
        })
    }

    /// The table's memfd (it crosses an upgrade's `execve`).
    pub fn table_fd(&self) -> std::os::fd::RawFd {
        self.table.as_raw_fd()
    }

    /// Takes stored sockets that are not ours any more out of the store.
    pub fn forget(&mut self, serials: impl IntoIterator<Item = u64>) {
        for serial in serials {
            send(
                &[
                    NotifyState::FdStoreRemove,
                    NotifyState::FdName(&socket_name(serial)),
                ],
                &[],
            );
        }
    }

    /// Stores the sockets opened since the last call, takes out those closed since, then
    /// writes the table that names them. A crash in between leaves a table naming a socket
    /// that is gone (restored as gone) or a socket no table names (closed on restore).
    pub fn sync(&mut self, sockets: &Sockets) {
        let text = serde_json::to_string(&sockets.export()).unwrap_or_default();
        if text == self.written {
            return;
        }
        let own = sockets.own();
        for (serial, listener) in &own {
            if !self.stored.contains(serial) {
                // A descriptor systemd already holds (after an upgrade or a restart) is
                // recognised and not stored twice.
                send(
                    &[
                        NotifyState::FdStore,
                        NotifyState::FdName(&socket_name(*serial)),
                    ],
                    &[listener.as_fd()],
                );
                self.stored.insert(*serial);
            }
        }
        let closed: Vec<u64> = self
            .stored
            .iter()
            .copied()
            .filter(|s| !own.contains_key(s))
            .collect();
        for serial in closed {
            self.forget([serial]);
            self.stored.remove(&serial);
        }
        if let Err(e) = write_all_at_start(&self.table, text.as_bytes()) {
            tracing::warn!(error = %e, "writing the socket table for the descriptor store");
            return;
        }
        if !self.table_stored {
            send(
                &[NotifyState::FdStore, NotifyState::FdName(TABLE_NAME)],
                &[self.table.as_fd()],
            );
            self.table_stored = true;
        }
        self.written = text;
    }
}

fn send(states: &[NotifyState<'_>], fds: &[std::os::fd::BorrowedFd<'_>]) {
    if let Err(e) = sd_notify::notify_with_fds(states, fds) {
        tracing::warn!(error = %e, "sd_notify (descriptor store) failed");
    }
}

/// Replaces the memfd's content with `bytes`.
fn write_all_at_start(fd: &OwnedFd, bytes: &[u8]) -> nix::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        at += nix::sys::uio::pwrite(fd, &bytes[at..], at as i64)?;
    }
    nix::unistd::ftruncate(fd, bytes.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A per-worker table of `slots` sockets, its table as the store gives it back (through
    /// JSON), and the sockets' serials by slot.
    fn table_of(slots: usize) -> (Sockets, Inherited, Vec<u64>) {
        let mut s =
            Sockets::bind(SocketMode::PerWorker, "127.0.0.1:0".parse().unwrap(), 16).unwrap();
        for slot in 1..slots {
            s.for_slot(slot).unwrap();
        }
        let table: Inherited =
            serde_json::from_str(&serde_json::to_string(&s.export()).unwrap()).unwrap();
        let serials = table.slots.iter().flatten().map(|e| e.2).collect();
        (s, table, serials)
    }

    /// A copy of slot `slot`'s socket, as systemd would pass it back.
    fn copy(s: &Sockets, slot: usize) -> TcpListener {
        s.slots[slot]
            .as_ref()
            .unwrap()
            .listener
            .try_clone()
            .unwrap()
    }

    #[test]
    fn a_stored_table_restores_the_slots_and_drops_what_did_not_come_back() {
        let (s, table, serials) = table_of(3);
        assert_eq!(serials.len(), 3);
        // The sockets come back as systemd passes them, but slot 1's was closed meanwhile, and
        // one socket no table names came along.
        let mut stored = Stored::default();
        for (slot, serial) in serials.iter().enumerate() {
            if slot != 1 {
                stored.sockets.insert(*serial, copy(&s, slot));
            }
        }
        let stray = TcpListener::bind("127.0.0.1:0").unwrap();
        stored.sockets.insert(999, stray);
        let r = Sockets::restore(table, &mut stored, Vec::new()).unwrap();
        assert!(r.slots[0].is_some() && r.slots[1].is_none() && r.slots[2].is_some());
        assert_eq!(
            r.group,
            vec![serials[0], serials[2]],
            "slot 1 left the group"
        );
        assert_eq!(r.addr(), s.addr());
        assert_eq!(
            stored.sockets.keys().copied().collect::<Vec<_>>(),
            vec![999]
        );
        assert_eq!(stored_serial(&socket_name(42)), Some(42));
        assert_eq!(stored_serial(TABLE_NAME), None);
        assert_eq!(stored_serial("clusterd.socket"), None);
    }

    #[test]
    fn two_sockets_lost_in_an_unknown_order_hand_the_group_to_the_kernel() {
        let (s, table, serials) = table_of(4);
        let mut stored = Stored::default();
        // Slots 0 and 3 come back; 1 and 2 left the group in an order nobody saw.
        for slot in [0, 3] {
            stored.sockets.insert(serials[slot], copy(&s, slot));
        }
        let mut r = Sockets::restore(table, &mut stored, Vec::new()).unwrap();
        assert!(!r.steer, "steering by a mirror in an unknown order");
        // A slot past what may run is shut and leaves the mirror.
        let gone = r.shut_from(3);
        assert_eq!(gone, vec![serials[3]]);
        assert_eq!(r.open_slots(), vec![0]);
    }
}
