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
//! key it read changes, expires or is deleted, and a PING every [`VOUCH_EVERY`] confirms the
//! channel (see `session::cache`). A Redis without RESP3 or that refuses `CLIENT TRACKING` gets
//! uncached reads and one warning; so does a Redis Cluster, whose pushes reach the client
//! through a channel not ordered with the replies.
mod target;

use self::target::{Sentinel, Target, cluster_client, resp3};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, PushInfo, RedisError};

use super::cache::{Cache, CacheCounters, VOUCH_EVERY};
use super::{Counter, Reservation, StoreError};

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
}

/// A live connection: one node's, or the cluster's (which routes each key to its node).
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Connection::Single(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn query_pipe<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> Result<T, RedisError> {
        match self {
            Connection::Single(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// Applies Redis's pushes to the cache: an invalidation drops its keys (all of them on a
/// `FLUSHALL`), a lost connection drops everything. Runs on the connection's reader, ahead of
/// the replies that follow the push.
fn invalidations(cache: Weak<Cache>) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    move |push: PushInfo| {
        let cache = cache.upgrade().ok_or(())?;
        match push.kind {
            redis::PushKind::Invalidate => match push.data.first() {
                Some(redis::Value::Array(keys)) => {
                    for key in keys {
                        if let redis::Value::BulkString(k) = key {
                            cache.invalidate(&String::from_utf8_lossy(k));
                        }
                    }
                }
                _ => cache.clear(),
            },
            redis::PushKind::Disconnection => cache.clear(),
            _ => {}
        }
        Ok(())
    }
}

/// Why a connect attempt failed.
pub(super) enum Refused {
    /// Unreachable, timed out, refused: the next request tries again.
    Failed(String),
    /// The server does not speak RESP3 (it has no `HELLO`).
    NoResp3(String),
}

impl From<RedisError> for Refused {
    fn from(e: RedisError) -> Self {
        if e.kind() == redis::ErrorKind::RESP3NotSupported {
            Refused::NoResp3(e.to_string())
        } else {
            Refused::Failed(e.to_string())
        }
    }
}

impl Inner {
    /// Forgets the live connection, so the next request reconnects, and what the cache read
    /// through it. Whether there was one.
    fn drop_connection(&self) -> bool {
        let dropped = self
            .conn
            .lock()
            .expect("redis connection lock poisoned")
            .live
            .take()
            .is_some();
        if let Some(cache) = self.cache.get() {
            cache.clear();
        }
        dropped
    }
}

/// Confirms the invalidation channel every [`VOUCH_EVERY`] with a PING on the live connection
/// (it does not connect: requests do), for as long as the store lives. A PING that fails drops
/// the connection, as a failed request does.
async fn vouch(store: Weak<Inner>) {
    let mut tick = tokio::time::interval(VOUCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else { return };
        let Some(cache) = inner.cache.get().cloned() else {
            return;
        };
        // The epoch first: a connection replaced after it is not vouched for by this PING.
        let epoch = cache.epoch();
        let live = inner
            .conn
            .lock()
            .expect("redis connection lock poisoned")
            .live
            .clone();
        let Some(mut conn) = live else { continue };
        drop(inner);
        let sent = Instant::now();
        match conn.query::<String>(&redis::cmd("PING")).await {
            Ok(_) => cache.vouch(epoch, sent),
            Err(e) => {
                if let Some(inner) = store.upgrade()
                    && inner.drop_connection()
                {
                    tracing::warn!(error = %e, "redis connection lost; reconnecting on the next request");
                }
            }
        }
    }
}

#[derive(Default)]
struct Conn {
    live: Option<Connection>,
    /// Failed connect attempts since the last success.
    failures: u64,
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

    /// The cache, while reads may use it.
    fn cache(&self) -> Option<&Arc<Cache>> {
        self.inner
            .cache
            .get()
            .filter(|_| !self.inner.untracked.load(Ordering::Relaxed))
    }

    /// Sentinel only: listens on the sentinels' `+switch-master` channel and drops the
    /// connection the moment the service's primary changes, so requests move to the new
    /// primary even while the old one still answers (a failover by hand, a partition). Connection
    /// errors and `READONLY` replies catch the rest. Runs for as long as the store lives.
    async fn watch_switch_master(self) {
        let Target::Sentinel(s) = &self.inner.target else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let sentinels: Vec<Client> = s.sentinels.clone();
        let service = s.service.clone();
        drop(self);
        loop {
            for sentinel in &sentinels {
                let Ok(Ok(mut pubsub)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, sentinel.get_async_pubsub()).await
                else {
                    continue;
                };
                if pubsub.subscribe("+switch-master").await.is_err() {
                    continue;
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = futures_util::StreamExt::next(&mut messages).await {
                    let Some(inner) = weak.upgrade() else { return };
                    let text: String = msg.get_payload().unwrap_or_default();
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    if text.split_whitespace().next() == Some(service.as_str())
                        && inner.drop_connection()
                    {
                        tracing::info!(switch = %text, "sentinel: the primary changed; reconnecting to the new one");
                    }
                }
            }
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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

    /// The live connection, or the number of failed connect attempts so far.
    fn cached(&self) -> Result<Connection, u64> {
        let c = self
            .inner
            .conn
            .lock()
            .expect("redis connection lock poisoned");
        c.live.clone().ok_or(c.failures)
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        let seen = match self.cached() {
            Ok(conn) => return Ok(conn),
            Err(failures) => failures,
        };
        let _turn = self.inner.connecting.lock().await;
        match self.cached() {
            Ok(conn) => return Ok(conn),
            // An attempt failed while we waited for our turn: share its answer instead of
            // queueing another one behind it. This bounds every request to one connect timeout
            // of waiting plus at most one of its own.
            Err(failures) if failures != seen => {
                return Err(StoreError::Unavailable("redis is unreachable".into()));
            }
            Err(_) => {}
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut cache = self.cache().cloned();
        let mut attempt = self.connect(&config, cache.as_ref()).await;
        if cache.is_some() && matches!(attempt, Err(Refused::NoResp3(_))) {
            self.untrack("the server does not speak RESP3");
            cache = None;
            attempt = self.connect(&config, None).await;
        }
        // Tracking starts with the connection; the cache vouches from the moment it was asked.
        let mut tracked_since = None;
        if let (Some(_), Ok(Connection::Single(conn))) = (&cache, &mut attempt) {
            let sent = Instant::now();
            match redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async::<()>(conn)
                .await
            {
                Ok(()) => tracked_since = Some(sent),
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    attempt = Err(Refused::Failed(e.to_string()));
                }
                Err(e) => self.untrack(&format!("CLIENT TRACKING was refused: {e}")),
            }
        }
        let mut c = self
            .inner
            .conn
            .lock()
            .expect("redis connection lock poisoned");
        let error = match attempt {
            Ok(conn) => {
                if c.failures > 0 {
                    tracing::info!("redis reachable again");
                }
                c.failures = 0;
                c.live = Some(conn.clone());
                // The reads of the connection before are no longer tracked.
                if let Some(cache) = self.inner.cache.get() {
                    cache.clear();
                    if let Some(sent) = tracked_since {
                        cache.vouch(cache.epoch(), sent);
                    }
                }
                return Ok(conn);
            }
            Err(Refused::Failed(e) | Refused::NoResp3(e)) => e,
        };
        if c.failures == 0 {
            tracing::warn!(error = %error, "redis unreachable; session requests answer 503 until it returns");
        }
        c.failures += 1;
        Err(StoreError::Unavailable(error))
    }

    /// One connect attempt, bounded; with `cache`, over RESP3 with Redis's pushes applied to it.
    async fn connect(
        &self,
        config: &AsyncConnectionConfig,
        cache: Option<&Arc<Cache>>,
    ) -> Result<Connection, Refused> {
        let data = match cache {
            Some(cache) => config
                .clone()
                .set_push_sender(invalidations(Arc::downgrade(cache))),
            None => config.clone(),
        };
        let timed_out = |_| Refused::Failed("connect timed out".into());
        match &self.inner.target {
            // The outer timeout also covers the handshake (AUTH, SELECT, TLS).
            Target::Direct(client) => {
                let owned;
                let client = match cache {
                    Some(_) => {
                        owned = resp3(client).map_err(Refused::from)?;
                        &owned
                    }
                    None => client,
                };
                tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    client.get_multiplexed_async_connection_with_config(&data),
                )
                .await
                .map_err(timed_out)?
                .map(Connection::Single)
                .map_err(Refused::from)
            }
            // Each step of the lookup has its own timeout; a failover in progress answers fast.
            Target::Sentinel(s) => s
                .primary(config, &data, cache.is_some())
                .await
                .map(Connection::Single),
            Target::Cluster(client) => {
                tokio::time::timeout(HANDSHAKE_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(timed_out)?
                    .map(Connection::Cluster)
                    .map_err(Refused::from)
            }
        }
    }

    /// Reads stay uncached from now on, with one warning.
    fn untrack(&self, why: &str) {
        if !self.inner.untracked.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "redis: session reads are not cached (RESP3 and CLIENT TRACKING are needed)"
            );
        }
        if let Some(cache) = self.inner.cache.get() {
            cache.clear();
        }
    }

    /// Runs one command (or a pipeline packed into `cmd`); on an I/O-level failure forgets the
    /// connection so the next request reconnects.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        match conn.query::<T>(cmd).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: RedisError) -> StoreError {
        // READONLY: the node was demoted to a replica (a Sentinel failover); reconnect, which
        // looks the primary up again.
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            if self.inner.drop_connection() {
                tracing::warn!(error = %e, "redis connection lost; reconnecting on the next request");
            }
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(e.to_string())
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

    /// PING.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// GET: a session's state. A read only (the renewal is `touch`, when it is due). Uncached,
    /// the time left is not asked for, which would double the commands of every signed-in
    /// request; cached, a miss asks for it too (PTTL, in the same round trip), so that an entry
    /// is never served past the session's expiry.
    pub async fn get(&self, id: &str) -> Result<Option<(String, Option<Duration>)>, StoreError> {
        let key = self.key(id);
        let Some(cache) = self.cache() else {
            let state: Option<String> = self.query(redis::cmd("GET").arg(key)).await?;
            return Ok(state.map(|s| (s, None)));
        };
        let asked = Instant::now();
        if let Some(hit) = cache.get(&key, asked, |_| true) {
            return Ok(Some(hit));
        }
        let ticket = cache.ticket();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let mut conn = self.connection().await?;
        let (state, left_ms): (Option<String>, i64) =
            conn.query_pipe(&pipe).await.map_err(|e| self.failed(e))?;
        let Some(state) = state else { return Ok(None) };
        let expires = u64::try_from(left_ms)
            .ok()
            .map(|ms| asked + Duration::from_millis(ms));
        cache.put(ticket, &key, &state, expires, 0);
        Ok(Some((
            state,
            expires.map(|at| at.saturating_duration_since(asked)),
        )))
    }

    /// Runs a write of `id`'s record, dropping it from the cache before and after: a read
    /// that overlaps the write is not kept, and the next read asks Redis (whose invalidation
    /// of the key is on its way to the other handles).
    async fn write<T: FromRedisValue>(&self, id: &str, cmd: &Cmd) -> Result<T, StoreError> {
        let key = self.key(id);
        if let Some(cache) = self.inner.cache.get() {
            cache.invalidate(&key);
        }
        let result = self.query(cmd).await;
        if let Some(cache) = self.inner.cache.get() {
            cache.invalidate(&key);
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
