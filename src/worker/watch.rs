//! A deadline for every request head and every unread body on a connection, not only the first
//! head (actix-web arms its head timer once per connection, and drains a body the handler did
//! not read with no deadline at all). Runs in workers, one small task per connection on its
//! server thread.
//!
//! What actix has read is invisible from outside its dispatcher, but the kernel counts every
//! byte a connection received (`TCP_INFO`, `tcpi_bytes_received`). Between two requests a
//! connection should receive nothing until the client sends its next request; once bytes come
//! in, the next request's head must be whole (and reach the app) within `--read-timeout`, and
//! the rest of a body the app left unread counts the same way. Otherwise the connection is shut
//! down, and actix closes it. An idle keep-alive connection receives nothing and is left to
//! actix's keep-alive timeout.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// One connection's state, kept in its extensions.
pub(super) struct Watch {
    fd: RawFd,
    /// A request is in the app (its body has its own deadline, `layer::with_deadline`).
    in_request: Cell<bool>,
    /// Bytes received when the last request left the app.
    settled: Cell<u64>,
}

impl Watch {
    /// Starts watching the connection on `fd` (from `on_connect`, on its server thread).
    pub(super) fn start(fd: RawFd, read_timeout: Duration) -> Rc<Watch> {
        let w = Rc::new(Watch {
            fd,
            in_request: Cell::new(false),
            settled: Cell::new(0),
        });
        actix_web::rt::spawn(watch(Rc::downgrade(&w), read_timeout));
        w
    }

    /// A request reached the app.
    pub(super) fn request_started(&self) {
        self.in_request.set(true);
    }

    /// The app answered: from here the connection should receive nothing until the next
    /// request.
    pub(super) fn request_done(&self) {
        self.in_request.set(false);
        self.settled.set(received(self.fd).unwrap_or(0));
    }
}

/// How often the watch looks: a third of the read timeout, within 250 ms to 1 s.
fn tick(read_timeout: Duration) -> Duration {
    (read_timeout / 3).clamp(Duration::from_millis(250), Duration::from_secs(1))
}

async fn watch(w: Weak<Watch>, read_timeout: Duration) {
    let every = tick(read_timeout);
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        // Gone with its connection: actix dropped the extensions (on this same thread, so the
        // descriptor below is still the connection's while `w` is held).
        let Some(w) = w.upgrade() else { return };
        if w.in_request.get() {
            since = None;
            continue;
        }
        let Some(now_received) = received(w.fd) else {
            return;
        };
        if now_received <= w.settled.get() {
            since = None;
            continue;
        }
        let first = *since.get_or_insert_with(tokio::time::Instant::now);
        if first.elapsed() >= read_timeout {
            tracing::debug!(
                timeout_s = read_timeout.as_secs(),
                "a request head or an unread body did not arrive in time; closing the connection"
            );
            // The dispatcher sees the end of the stream and closes the connection itself.
            let _ = nix::sys::socket::shutdown(w.fd, nix::sys::socket::Shutdown::Both);
            return;
        }
    }
}

/// Bytes the connection on `fd` received so far (`TCP_INFO`).
fn received(fd: RawFd) -> Option<u64> {
    // SAFETY: `info` is a plain C struct the kernel fills up to `len` bytes; `fd` is the
    // connection's socket, open while its `Watch` lives (see `watch`).
    unsafe {
        let mut info: nix::libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<nix::libc::tcp_info>() as nix::libc::socklen_t;
        let rc = nix::libc::getsockopt(
            fd,
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            (&mut info as *mut nix::libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_bytes_received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_looks_often_enough_to_cut_within_twice_the_timeout() {
        assert_eq!(tick(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_millis(300)), Duration::from_millis(250));
    }
}
