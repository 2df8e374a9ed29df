//! The Redis session store. Built in the worker after `fork`; runs in the worker.
//!
//! One multiplexed connection per worker process, opened lazily. Every command carries a
//! response timeout and every connect a connect timeout; a failed command drops the connection
//! and the next request opens a new one. There is no retry loop, and requests never queue behind
//! more than one connect attempt: those that waited for an attempt that failed share its answer.
//! So a Redis outage costs each request well under a second, and the first request after Redis
//! returns reconnects.
//!
//! With [`RedisStore::with_cache`], reads are cached in the handle and the connection speaks
//! RESP3 with `CLIENT TRACKING on`: Redis pushes an invalidation on the same connection when a
//! key it read changes, expires or is deleted, and a PING every [`crate::session::VOUCH_EVERY`] confirms the
//! channel (see `session::cache`). A Redis without RESP3 or that refuses `CLIENT TRACKING` gets
//! uncached reads and one warning; so does a Redis Cluster, whose pushes reach the client
//! through a channel not ordered with the replies.
mod link;
mod target;

use self::link::{Conn, vouch};
use self::target::{Sentinel, Target, cluster_client};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::{Client, Cmd, FromRedisValue, RedisError};

use super::cache::{Cache, CacheCounters};
use super::flight::{self, Flights, Outcome, Turn};
use super::{Counter, Found, Reservation, StoreError};

/// How long the TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long connecting may take in all, handshake (AUTH, SELECT, TLS) included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a command may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a login waits for replicas to acknowledge its new session (under the response
/// timeout, so the WAIT itself cannot time out).
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(300);

/// Sessions in Redis under `prefix + id`, failure counters under `prefix + "throttle:" + name`.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    pub(crate) renewals: crate::session::Renewals,
}

struct Inner {
    target: Target,
    prefix: String,
    /// Replicas a new session must reach before the login answers (`--redis-wait-replicas`).
    wait_replicas: u32,
    conn: Mutex<Conn>,
    /// Serialises connect attempts, so a burst of requests during an outage makes one attempt.
    connecting: tokio::sync::Mutex<()>,
    /// The read cache, once [`RedisStore::with_cache`] made one.
    cache: OnceLock<Arc<Cache>>,
    /// The server refused RESP3 or `CLIENT TRACKING` (warned once): reads are not cached.
    untracked: AtomicBool,
    /// Cache misses under way, so concurrent misses of one session send one read.
    flights: Flights,
}

impl RedisStore {
    /// A store for `url` (`redis://`, `rediss://`, `redis+sentinel://host:port,.../SERVICE[/DB]`
    /// or `redis+cluster://host:port,...`), keeping sessions under `prefix`; connects on first
    /// use, so it can be made before Redis is up. `wait_replicas` > 0 makes each new session
    /// and each logout wait for that many replicas (`WAIT`). An unparsable URL is an error.
    ///
    /// Use it as any actix-session store: `SessionMiddleware::new(store, key)`. A session
    /// lives for the TTL the middleware hands over, renewed as its policy says.
    pub fn new(url: &str, prefix: &str, wait_replicas: u32) -> Result<Self, RedisError> {
        let target =
            if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
                Target::Sentinel(Sentinel::parse(url)?)
            } else if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
                Target::Cluster(Box::new(cluster_client(url)?))
            } else {
                Target::Direct(Client::open(url)?)
            };
        let watch = matches!(target, Target::Sentinel(_));
        let store = RedisStore {
            inner: Arc::new(Inner {
                target,
                prefix: prefix.to_string(),
                wait_replicas,
                conn: Mutex::new(Conn::default()),
                connecting: tokio::sync::Mutex::new(()),
                cache: OnceLock::new(),
                untracked: AtomicBool::new(false),
                flights: Flights::default(),
            }),
            renewals: crate::session::Renewals::default(),
        };
        if watch && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(store.clone().watch_switch_master());
        }
        Ok(store)
    }

    /// Caches up to `capacity` sessions in this handle (and its clones), invalidated by Redis
    /// (see the module's documentation); `counters` counts hits, misses and invalidations.
    /// Call it once, right after [`RedisStore::new`], inside the tokio runtime that will use the
    /// store (it starts the channel's PING there). `capacity` 0 leaves reads uncached.
    pub fn with_cache(self, capacity: usize, counters: Option<CacheCounters>) -> Self {
        if capacity == 0 {
            return self;
        }
        if matches!(self.inner.target, Target::Cluster(_)) {
            tracing::info!("redis cluster: session reads are not cached");
            return self;
        }
        let cache = Arc::new(Cache::new(capacity, true, counters));
        if self.inner.cache.set(cache).is_ok()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(vouch(Arc::downgrade(&self.inner)));
        }
        self
    }

    /// The URL without its password, for logs.
    pub fn describe(url: &str) -> String {
        match url
            .split_once("://")
            .and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?.1)))
        {
            Some((scheme, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.inner.prefix)
    }

    /// Every counter key carries the hash tag `{throttle}`, so the counters of one login, which
    /// the reservation script takes together, live in one Redis Cluster slot.
    fn counter_key(&self, name: &str) -> String {
        format!("{}throttle:{{throttle}}:{name}", self.inner.prefix)
    }

    /// PING. With the cache, its own confirmation answers for it while it holds (a PING
    /// answered on this connection, sent less than [`crate::session::TRUST_FOR`] ago): a
    /// health probe then costs Redis nothing beyond the cache's PINGs.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.cache().is_some_and(|c| c.vouched(Instant::now())) {
            return Ok(());
        }
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// GET: a session's state. A read only (the renewal is `touch`, when it is due). Uncached,
    /// the time left is not asked for, which would double the commands of every signed-in
    /// request; cached, a miss asks for it too (PTTL, in the same round trip), so that an entry
    /// is never served past the session's expiry.
    pub async fn get(&self, id: &str) -> Result<Option<Found>, StoreError> {
        let Some(cache) = self.cache() else {
            let state: Option<String> = self.query(redis::cmd("GET").arg(self.key(id))).await?;
            return state.map(|s| Found::read(&s, None)).transpose();
        };
        let from_cache = |now| {
            cache.lookup(id, now, |_| true).map(|(state, left)| Found {
                state,
                left,
                cached: true,
            })
        };
        let asked = Instant::now();
        if let Some(found) = from_cache(asked) {
            return Ok(Some(found));
        }
        // Counted once the read is not answered from the cache, whichever way it goes.
        let lead = match self.inner.flights.join(id) {
            Turn::Lead(lead) => {
                cache.missed();
                Some(lead)
            }
            // Another request of this session is reading it: take what that read found. A
            // record it found is served from the cache, if no invalidation refused it there.
            Turn::Follow(read) => {
                let outcome = flight::follow(read).await;
                if outcome == Some(Outcome::Found)
                    && let Some(found) = from_cache(Instant::now())
                {
                    return Ok(Some(found));
                }
                cache.missed();
                match outcome {
                    Some(Outcome::Missing) => return Ok(None),
                    Some(Outcome::Corrupt) => {
                        return Err(StoreError::Corrupt("read by a concurrent request".into()));
                    }
                    Some(Outcome::Failed) => {
                        return Err(StoreError::Unavailable(
                            "a concurrent read of this session failed".into(),
                        ));
                    }
                    // Refused by the cache, or that request went away: read for this one.
                    Some(Outcome::Found) | None => None,
                }
            }
        };
        let read = self.read(cache, id, asked).await;
        if let Some(lead) = lead {
            lead.finish(match &read {
                Ok(Some(_)) => Outcome::Found,
                Ok(None) => Outcome::Missing,
                Err(StoreError::Corrupt(_)) => Outcome::Corrupt,
                Err(_) => Outcome::Failed,
            });
        }
        read
    }

    /// A cache miss's read: the record and its time left (one round trip), offered to the cache.
    async fn read(
        &self,
        cache: &Cache,
        id: &str,
        asked: Instant,
    ) -> Result<Option<Found>, StoreError> {
        let ticket = cache.ticket();
        let key = self.key(id);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let mut conn = self.connection().await?;
        let (state, left_ms): (Option<String>, i64) =
            conn.query_pipe(&pipe).await.map_err(|e| self.failed(e))?;
        let Some(state) = state else { return Ok(None) };
        let expires = u64::try_from(left_ms)
            .ok()
            .map(|ms| asked + Duration::from_millis(ms));
        let found = Found::read(
            &state,
            expires.map(|at| at.saturating_duration_since(asked)),
        )?;
        cache.put(ticket, id, &found.state, expires, 0);
        Ok(Some(found))
    }

    /// Runs a write of `id`'s record, dropping it from the cache before and after: a read
    /// that overlaps the write is not kept, and the next read asks Redis (whose invalidation
    /// of the key is on its way to the other handles).
    async fn write<T: FromRedisValue>(&self, id: &str, cmd: &Cmd) -> Result<T, StoreError> {
        if let Some(cache) = self.inner.cache.get() {
            cache.invalidate(id);
        }
        let result = self.query(cmd).await;
        if let Some(cache) = self.inner.cache.get() {
            cache.invalidate(id);
        }
        result
    }

    /// PEXPIRE: the session lives `ttl` from now (if it still exists).
    pub async fn touch(&self, id: &str, ttl: Duration) -> Result<(), StoreError> {
        self.write::<i64>(
            id,
            redis::cmd("PEXPIRE")
                .arg(self.key(id))
                .arg(ttl.as_millis() as u64),
        )
        .await
        .map(drop)
    }

    /// SET NX EX: false when the id exists already.
    pub async fn create(&self, id: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.key(id))
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64),
            )
            .await?;
        if reply.is_some()
            && let Err(e) = self.wait("a new session").await
        {
            // The login fails (503) rather than answer for a session a failover could lose.
            let _ = self.query::<i64>(redis::cmd("DEL").arg(self.key(id))).await;
            return Err(e);
        }
        Ok(reply.is_some())
    }

    /// SET XX EX: false when the record is gone (expired or deleted).
    pub async fn replace(&self, id: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply: Option<String> = self
            .write(
                id,
                redis::cmd("SET")
                    .arg(self.key(id))
                    .arg(value)
                    .arg("XX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64),
            )
            .await?;
        Ok(reply.is_some())
    }

    /// DEL. With `--redis-wait-replicas`, a logout is as durable as a login: the deletion must
    /// reach that many replicas, or it is an error (503) and the client tries again, rather
    /// than answer for a logout that a failover could undo.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.write::<i64>(id, redis::cmd("DEL").arg(self.key(id)))
            .await?;
        self.wait("a logout").await
    }

    /// `WAIT` for `--redis-wait-replicas` replicas after a write on this connection.
    async fn wait(&self, what: &str) -> Result<(), StoreError> {
        let n = self.inner.wait_replicas;
        if n == 0 {
            return Ok(());
        }
        let acked: i64 = self
            .query(
                redis::cmd("WAIT")
                    .arg(n)
                    .arg(WAIT_TIMEOUT.as_millis() as u64),
            )
            .await?;
        if acked < i64::from(n) {
            tracing::warn!(
                acked,
                wanted = n,
                "{what} did not reach enough replicas in time; it answers 503"
            );
            return Err(StoreError::Unavailable(format!(
                "{what} reached {acked} of {n} replicas within {WAIT_TIMEOUT:?} (--redis-wait-replicas)"
            )));
        }
        Ok(())
    }

    /// Takes one attempt on every counter if each is below its limit, or on none, in one Lua
    /// script (Redis runs a script atomically). The window starts with a counter's first attempt
    /// (SET NX PX, then INCR).
    pub async fn reserve(
        &self,
        names: &[String],
        limits: &[u64],
        window: Duration,
    ) -> Result<Reservation, StoreError> {
        const RESERVE: &str = "\
            for i, k in ipairs(KEYS) do \
                local c = tonumber(redis.call('GET', k) or '0') \
                if c >= tonumber(ARGV[i + 1]) then return {0, c, redis.call('PTTL', k)} end \
            end \
            local out = {1} \
            for _, k in ipairs(KEYS) do \
                redis.call('SET', k, 0, 'NX', 'PX', ARGV[1]) \
                table.insert(out, redis.call('INCR', k)) \
                table.insert(out, redis.call('PTTL', k)) \
            end \
            return out";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RESERVE).arg(names.len());
        for name in names {
            cmd.arg(self.counter_key(name));
        }
        cmd.arg(window.as_millis() as u64);
        for limit in limits {
            cmd.arg(*limit);
        }
        let reply: Vec<i64> = self.query(&cmd).await?;
        let counter = |pair: &[i64]| Counter {
            count: pair[0].max(0) as u64,
            resets_in: Duration::from_millis(pair.get(1).copied().unwrap_or(0).max(0) as u64),
        };
        match reply.split_first() {
            Some((1, rest)) => Ok(Reservation::Taken(rest.chunks(2).map(counter).collect())),
            Some((_, rest)) if !rest.is_empty() => Ok(Reservation::Refused(counter(rest))),
            _ => Err(StoreError::Backend(format!("unexpected reply {reply:?}"))),
        }
    }

    /// Gives back an attempt taken by [`RedisStore::reserve`]. A counter that reaches zero, or
    /// had expired meanwhile (DECR would create it at -1, without expiry), is deleted.
    pub async fn release(&self, names: &[String]) -> Result<(), StoreError> {
        const RELEASE: &str = "for _, k in ipairs(KEYS) do \
            if redis.call('DECR', k) <= 0 then redis.call('DEL', k) end end return 0";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE).arg(names.len());
        for name in names {
            cmd.arg(self.counter_key(name));
        }
        self.query::<i64>(&cmd).await.map(drop)
    }

    /// DEL of a counter.
    pub async fn clear_counter(&self, name: &str) -> Result<(), StoreError> {
        self.query::<i64>(redis::cmd("DEL").arg(self.counter_key(name)))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_logs() {
        assert_eq!(
            RedisStore::describe("redis://app:s3cret@db:6379/2"),
            "redis://***@db:6379/2"
        );
        assert_eq!(
            RedisStore::describe("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
