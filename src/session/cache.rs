//! A store handle's cache of the sessions it has read, so that a signed-in request costs no
//! store round trip. Runs in the worker, one cache per server thread's store handle.
//!
//! An entry is served only while three things hold:
//! - **the invalidation channel vouches for it.** Redis pushes an invalidation for every key a
//!   tracking connection read once the key changes, expires or is deleted; the store confirms
//!   the channel with a PING at least every [`VOUCH_EVERY`], and an answered PING vouches for the
//!   cache until [`TRUST_FOR`] after it was *sent* (every invalidation Redis generated before it
//!   had arrived ahead of the answer). The embedded store needs no channel: it checks a shared
//!   per-key version on every hit instead (`fresh`);
//! - **it has not expired**: each entry keeps the expiry the store reported when it was read;
//! - **no invalidation overtook the read that filled it**: a read takes a [`Ticket`] before it
//!   asks the store, and its answer is kept only if no invalidation (of any key) and no
//!   reconnection came in between, since an invalidation can arrive before the read's answer
//!   is handed to the request.
//!
//! Bounded: at most `capacity` entries, least recently used first out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use super::State;
use crate::counter::Counter;

/// How often the Redis store confirms that its invalidation channel is alive (at least every
/// 0.5 s, and well inside [`TRUST_FOR`] so that a confirmation arrives before the last one
/// lapses).
pub const VOUCH_EVERY: Duration = Duration::from_millis(450);
/// How long after a confirming PING was sent the cache may be served from.
pub const TRUST_FOR: Duration = Duration::from_millis(900);

/// What the cache counts (registered by the app before the fork, see [`crate::counter`]).
#[derive(Clone)]
pub struct CacheCounters {
    /// Reads answered from the cache.
    pub hits: Counter,
    /// Reads the cache did not answer (not cached, expired, or the channel not confirmed);
    /// concurrent misses of one session share one store read.
    pub misses: Counter,
    /// Entries dropped because the store said they changed (or the channel was lost).
    pub invalidations: Counter,
}

/// Proof that a read started at a given generation of the cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket(u64);

/// Keyed by session id; holds what a read decoded (`V`), so that a hit costs a clone and no
/// parsing.
pub(crate) struct Cache<V = State> {
    inner: Mutex<Inner<V>>,
    counters: Option<CacheCounters>,
    /// The embedded store's entries are checked one by one (`fresh`) and need no channel.
    needs_channel: bool,
}

struct Inner<V> {
    entries: LruCache<String, Entry<V>>,
    /// Moves on every invalidation and every clear, so that a read an invalidation overtook
    /// is not cached.
    generation: u64,
    /// Moves on every clear only: which connection the channel is (Redis).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    epoch: u64,
    /// Until when the invalidation channel vouches for the entries.
    trusted_until: Option<Instant>,
}

struct Entry<V> {
    value: V,
    expires: Option<Instant>,
    /// The store's version of the key when it was read (the embedded store's), or 0.
    stamp: u64,
}

impl<V: Clone> Cache<V> {
    /// A cache of `capacity` (> 0) entries. `needs_channel`: entries are served only while
    /// [`Cache::vouch`] says the invalidation channel is alive (Redis).
    pub(crate) fn new(
        capacity: usize,
        needs_channel: bool,
        counters: Option<CacheCounters>,
    ) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                entries: LruCache::new(capacity.max(1)),
                generation: 0,
                epoch: 0,
                trusted_until: None,
            }),
            counters,
            needs_channel,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, which: impl Fn(&CacheCounters) -> &Counter, n: u64) {
        if let Some(c) = &self.counters
            && n > 0
        {
            which(c).add(n);
        }
    }

    /// The cached value of `id` and its time left, if it may be served at `now`; `fresh`
    /// checks the entry's stamp against the store's shared version. Counts a hit or a miss.
    /// (The Redis store counts its own misses, since concurrent misses share a read.)
    #[cfg(any(feature = "sqlite", test))]
    pub(crate) fn get(
        &self,
        id: &str,
        now: Instant,
        fresh: impl FnOnce(u64) -> bool,
    ) -> Option<(V, Option<Duration>)> {
        let found = self.lookup(id, now, fresh);
        if found.is_none() {
            self.missed();
        }
        found
    }

    /// [`Cache::get`] that counts a hit but leaves a miss to the caller ([`Cache::missed`]):
    /// a read that waits for a concurrent one and is then answered from the cache is a hit.
    pub(crate) fn lookup(
        &self,
        id: &str,
        now: Instant,
        fresh: impl FnOnce(u64) -> bool,
    ) -> Option<(V, Option<Duration>)> {
        let found = {
            let mut inner = self.lock();
            let trusted = !self.needs_channel || inner.trusted_until.is_some_and(|t| now < t);
            match inner.entries.get(id) {
                Some(e) if trusted && e.expires.is_none_or(|at| now < at) => {
                    if fresh(e.stamp) {
                        Ok((e.value.clone(), e.expires.map(|at| at - now)))
                    } else {
                        Err(true)
                    }
                }
                _ => Err(false),
            }
        };
        match found {
            Ok(hit) => {
                self.count(|c| &c.hits, 1);
                Some(hit)
            }
            Err(stale) => {
                if stale {
                    self.invalidate(id);
                }
                None
            }
        }
    }

    /// Counts a read the cache did not answer.
    pub(crate) fn missed(&self) {
        self.count(|c| &c.misses, 1);
    }

    /// Taken before a read asks the store.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.lock().generation)
    }

    /// Keeps what a read found, unless an invalidation or a reconnection came since its ticket.
    pub(crate) fn put(
        &self,
        ticket: Ticket,
        id: &str,
        value: &V,
        expires: Option<Instant>,
        stamp: u64,
    ) {
        let mut inner = self.lock();
        if inner.generation == ticket.0 {
            inner.entries.insert(
                id.to_string(),
                Entry {
                    value: value.clone(),
                    expires,
                    stamp,
                },
            );
        }
    }

    /// The store says `id` changed (or this handle is about to change it).
    pub(crate) fn invalidate(&self, id: &str) {
        let dropped = {
            let mut inner = self.lock();
            inner.generation += 1;
            inner.entries.remove(id).is_some()
        };
        self.count(|c| &c.invalidations, u64::from(dropped));
    }

    /// Forgets everything and stops trusting the channel: it was lost, or replaced by a new
    /// connection whose tracking starts empty.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn clear(&self) {
        let dropped = {
            let mut inner = self.lock();
            inner.generation += 1;
            inner.epoch += 1;
            inner.trusted_until = None;
            let n = inner.entries.len();
            inner.entries.clear();
            n
        };
        self.count(|c| &c.invalidations, dropped as u64);
    }

    /// Which channel the cache is on now (see [`Cache::vouch`]).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The channel was confirmed by a PING sent at `sent`: entries may be served until
    /// [`TRUST_FOR`] after it. `epoch` is [`Cache::epoch`] from before the PING: the
    /// confirmation of a channel that was lost or replaced since is ignored.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn vouch(&self, epoch: u64, sent: Instant) {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            let until = sent + TRUST_FOR;
            inner.trusted_until = Some(inner.trusted_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Whether a confirmation of the channel holds at `now`: a PING sent less than
    /// [`TRUST_FOR`] before was answered on the connection the cache is on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn vouched(&self, now: Instant) -> bool {
        self.lock().trusted_until.is_some_and(|t| now < t)
    }

    /// Entries held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_is_served_until_the_channel_vouches_and_only_while_it_does() {
        let c = Cache::<String>::new(4, true, None);
        let t0 = Instant::now();
        c.put(c.ticket(), "a", &"A".into(), None, 0);
        assert!(c.get("a", t0, |_| true).is_none(), "never vouched");
        assert!(!c.vouched(t0));
        c.vouch(c.epoch(), t0);
        assert!(c.vouched(t0 + ms(10)));
        assert_eq!(c.get("a", t0 + ms(10), |_| true).unwrap().0, "A");
        assert!(c.get("a", t0 + TRUST_FOR, |_| true).is_none(), "too late");
        assert!(!c.vouched(t0 + TRUST_FOR));
        c.clear();
        c.vouch(c.epoch(), t0 + ms(1000));
        assert!(
            c.get("a", t0 + ms(1001), |_| true).is_none(),
            "a clear drops the entries"
        );
    }

    #[test]
    fn a_confirmation_of_a_replaced_channel_is_ignored() {
        let c = Cache::<String>::new(4, true, None);
        let t0 = Instant::now();
        let before = c.epoch();
        c.clear(); // the connection was replaced while the PING was out
        c.vouch(before, t0);
        c.put(c.ticket(), "a", &"A".into(), None, 0);
        assert!(c.get("a", t0, |_| true).is_none());
        c.invalidate("x"); // an invalidation does not stop a confirmation
        c.vouch(c.epoch(), t0);
        assert!(c.get("a", t0, |_| true).is_some());
    }

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let c = Cache::<String>::new(4, false, None);
        let t0 = Instant::now();
        let ticket = c.ticket();
        c.invalidate("b"); // any key: the push may have been about this one's earlier value
        c.put(ticket, "a", &"old".into(), None, 0);
        assert!(c.get("a", t0, |_| true).is_none());
        c.put(c.ticket(), "a", &"new".into(), None, 0);
        assert_eq!(c.get("a", t0, |_| true).unwrap().0, "new");
        c.invalidate("a");
        assert!(c.get("a", t0, |_| true).is_none());
    }

    #[test]
    fn entries_expire_with_the_store_and_report_their_time_left() {
        let c = Cache::<String>::new(4, false, None);
        let t0 = Instant::now();
        c.put(c.ticket(), "a", &"A".into(), Some(t0 + ms(500)), 0);
        assert_eq!(c.get("a", t0 + ms(100), |_| true).unwrap().1, Some(ms(400)));
        assert!(c.get("a", t0 + ms(500), |_| true).is_none());
    }

    #[test]
    fn a_stale_stamp_drops_the_entry_and_the_oldest_entry_goes_first() {
        let c = Cache::<String>::new(2, false, None);
        let t0 = Instant::now();
        c.put(c.ticket(), "a", &"A".into(), None, 7);
        assert!(c.get("a", t0, |s| s == 8).is_none());
        assert_eq!(c.len(), 0);
        c.put(c.ticket(), "a", &"A".into(), None, 0);
        c.put(c.ticket(), "b", &"B".into(), None, 0);
        assert!(c.get("a", t0, |_| true).is_some()); // a is now the most recent
        c.put(c.ticket(), "c", &"C".into(), None, 0);
        assert_eq!(c.len(), 2);
        assert!(
            c.get("b", t0, |_| true).is_none(),
            "b was least recently used"
        );
        assert!(c.get("a", t0, |_| true).is_some());
    }
}
