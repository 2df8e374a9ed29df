//! The requests a worker is answering, over all its server threads: how many (a graceful stop
//! waits for them), and the oldest, published on the scoreboard so the master can say what a
//! hung worker was doing and `status` can show it. Runs in workers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::scoreboard::REQUEST_TEXT;

/// Requests in flight, read without the lock.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Every request in flight by its number (numbers only grow, so the first is the oldest).
static TABLE: Mutex<Table> = Mutex::new(Table {
    next: 0,
    open: BTreeMap::new(),
});

struct Table {
    next: u64,
    open: BTreeMap<u64, Started>,
}

#[derive(Clone, Copy)]
struct Started {
    ms: u64,
    text: [u8; REQUEST_TEXT],
    len: usize,
}

/// The number of the first request that came after the stop began (`u64::MAX`: no stop).
static DRAIN_FROM: AtomicU64 = AtomicU64::new(u64::MAX);

/// Requests in flight now.
pub(super) fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the start of a stop: requests in flight now are the ones it waits for.
pub(super) fn stop_began() {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    DRAIN_FROM.store(t.next, Ordering::Relaxed);
}

/// Whether request `own` came after the worker began to stop while it still finishes a
/// request from before: what `/healthz` calls draining. A request that was already there when
/// the stop began is answered as before it; and a stop whose older requests all ended (a
/// rollout under a load of quick requests ends them within microseconds) is not "draining":
/// its remaining answers, each with `Connection: close`, move clients to a worker that serves,
/// and are no failures to them.
pub(super) fn draining(own: u64) -> bool {
    let from = DRAIN_FROM.load(Ordering::Relaxed);
    from != u64::MAX
        && own >= from
        && TABLE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .first_key_value()
            .is_some_and(|(seq, _)| *seq < from)
}

/// One request in flight, from its head until it is dropped (also when the client goes and
/// the request's future with it).
pub(super) struct InFlight(u64);

/// A request's number, in its extensions (for [`draining`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Number(pub(super) u64);

impl InFlight {
    /// Counts a request whose head was just parsed: `method` and `path` (no query).
    pub(super) fn start(method: &str, path: &str) -> InFlight {
        COUNT.fetch_add(1, Ordering::Relaxed);
        let mut started = Started {
            ms: crate::scoreboard::now_ms(),
            text: [0; REQUEST_TEXT],
            len: 0,
        };
        for part in [method.as_bytes(), b" ", path.as_bytes()] {
            let n = part.len().min(REQUEST_TEXT - started.len);
            started.text[started.len..started.len + n].copy_from_slice(&part[..n]);
            started.len += n;
        }
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let seq = t.next;
        t.next += 1;
        let was_empty = t.open.is_empty();
        t.open.insert(seq, started);
        if was_empty {
            publish(seq, Some(&started));
        }
        InFlight(seq)
    }

    /// The request's number.
    pub(super) fn number(&self) -> Number {
        Number(self.0)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        COUNT.fetch_sub(1, Ordering::Relaxed);
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let was_oldest = t.open.first_key_value().is_some_and(|(k, _)| *k == self.0);
        t.open.remove(&self.0);
        if was_oldest {
            match t.open.first_key_value() {
                Some((seq, next)) => publish(*seq, Some(next)),
                None => publish(self.0, None),
            }
        }
    }
}

/// Writes the oldest request to this worker's record (called under the table's lock, so
/// writes do not interleave).
fn publish(seq: u64, oldest: Option<&Started>) {
    if let Some(r) = crate::scoreboard::mine() {
        r.set_request(oldest.map(|s| (s.ms, seq as u16, &s.text[..s.len])));
    }
}
