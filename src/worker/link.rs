//! The worker's end of its pipe to the master: one byte per message. Runs in workers.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Bytes a worker writes on its pipe to the master. One byte per message, so a write is
/// atomic whichever thread makes it.
pub(crate) mod message {
    /// The server accepts connections.
    pub const READY: u8 = b'R';
    /// The app's dependencies answer (e.g. the session store).
    pub const UP: u8 = b'U';
    /// The app's dependencies do not answer; the worker serves degraded.
    pub const DOWN: u8 = b'D';
    /// A retiring worker shut its slot's socket down: it has left the SO_REUSEPORT group.
    pub const SOCKET_CLOSED: u8 = b'C';
}

/// The worker's end of its pipe to the master. The master reads readiness and health from it
/// (shown in systemd's STATUS line) and EOF when the worker is gone.
#[derive(Clone)]
pub struct MasterLink(Arc<LinkInner>);

struct LinkInner {
    /// `None` for a detached link (an app run outside clusterd's master, e.g. in tests).
    pipe: Option<std::fs::File>,
    /// Last health sent: 0 none yet, else the message byte.
    last: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for MasterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterLink").finish_non_exhaustive()
    }
}

impl MasterLink {
    pub(super) fn new(fd: OwnedFd) -> Self {
        MasterLink(Arc::new(LinkInner {
            pipe: Some(fd.into()),
            last: Default::default(),
        }))
    }

    /// A link to no master: reports go nowhere. For running a [`WorkerApp`](super::WorkerApp) on its own, as
    /// the app's tests do.
    pub fn detached() -> Self {
        MasterLink(Arc::new(LinkInner {
            pipe: None,
            last: Default::default(),
        }))
    }

    pub(super) fn send(&self, byte: u8) {
        let Some(pipe) = &self.0.pipe else { return };
        // EPIPE (master gone) is harmless: SIGPIPE is ignored and the worker is stopping anyway.
        if let Err(e) = std::io::Write::write_all(&mut &*pipe, &[byte]) {
            tracing::debug!(error = %e, "writing to the master's pipe failed");
        }
    }

    /// Tells the master whether the app's dependencies answer. Only changes are sent.
    pub fn report_health(&self, ok: bool) {
        let byte = if ok { message::UP } else { message::DOWN };
        if let Some(r) = crate::scoreboard::mine() {
            r.store.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
        }
        if self.0.last.swap(byte, Ordering::Relaxed) != byte {
            self.send(byte);
        }
    }
}
