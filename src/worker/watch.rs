//! A deadline for every request head and every unread body on a connection, not only the first
//! head (actix-web arms its head timer once per connection, and drains a body the handler did
//! not read with no deadline at all). Runs in workers, one small task per connection on its
//! server thread.
//!
//! What actix has read is invisible from outside its dispatcher, but the kernel knows when a
//! connection last received data (`TCP_INFO`, `tcpi_last_data_recv`). Between two requests a
//! connection should receive nothing until the client sends its next request; once data comes
//! in after the last answer, the next request's head must be whole (and reach the app) within
//! `--read-timeout`, and the rest of a body the app left unread counts the same way. Otherwise the connection is shut
//! down, and actix closes it. An idle keep-alive connection receives nothing and is left to
//! actix's keep-alive timeout.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// One connection's state, kept in its extensions.
pub(super) struct Watch {
    fd: RawFd,
    /// A request is in the app (its body has its own deadline, `layer::with_deadline`).
    in_request: Cell<bool>,
    /// When the app last answered on this connection (the connection's start before that).
    done_at: Cell<Instant>,
}

impl Watch {
    /// Starts watching the connection on `fd` (from `on_connect`, on its server thread).
    pub(super) fn start(fd: RawFd, read_timeout: Duration) -> Rc<Watch> {
        let w = Rc::new(Watch {
            fd,
            in_request: Cell::new(false),
            done_at: Cell::new(Instant::now()),
        });
        actix_web::rt::spawn(watch(Rc::downgrade(&w), read_timeout));
        w
    }

    /// A request reached the app.
    pub(super) fn request_started(&self) {
        self.in_request.set(true);
    }

    /// The app answered: from here the connection should receive nothing until the next
    /// request. (A clock read, no system call: the watch asks the kernel on its own time.)
    pub(super) fn request_done(&self) {
        self.in_request.set(false);
        self.done_at.set(Instant::now());
    }
}

/// More than a kernel jiffy at any common `HZ` (100 Hz: 10 ms).
const JIFFY_SLACK: Duration = Duration::from_millis(20);

/// How often the watch looks: a third of the read timeout, within 250 ms to 1 s.
fn tick(read_timeout: Duration) -> Duration {
    (read_timeout / 3).clamp(Duration::from_millis(250), Duration::from_secs(1))
}

async fn watch(w: Weak<Watch>, read_timeout: Duration) {
    let every = tick(read_timeout);
    // When the first byte after the last answer arrived, as far as a look could tell.
    let mut since: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        // Gone with its connection: actix dropped the extensions (on this same thread, so the
        // descriptor below is still the connection's while `w` is held).
        let Some(w) = w.upgrade() else { return };
        if w.in_request.get() {
            since = None;
            continue;
        }
        let Some(quiet) = quiet_for(w.fd) else {
            return;
        };
        let now = Instant::now();
        // The latest arrival: after the last answer means a next head (or the rest of an
        // unread body) is coming in. Until a look sees that, the latest arrival is the first.
        let arrived = now.checked_sub(quiet).unwrap_or(now);
        // The kernel counts that time in jiffies (4 - 10 ms), so the first byte of a next head
        // sent right after the answer can look older than the answer; a little slack counts it.
        if arrived + JIFFY_SLACK <= w.done_at.get() {
            since = None;
            continue;
        }
        let first = *since.get_or_insert(arrived);
        if now.duration_since(first) >= read_timeout {
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

/// How long ago the connection on `fd` last received data (`TCP_INFO`, in milliseconds).
fn quiet_for(fd: RawFd) -> Option<Duration> {
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
        (rc == 0).then(|| Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_looks_often_enough_to_cut_within_the_timeout_and_a_look() {
        assert_eq!(tick(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_millis(300)), Duration::from_millis(250));
    }
}
