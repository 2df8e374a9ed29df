//! The store's one live connection to Redis: connecting (bounded, one attempt at a time),
//! dropping it on failure, and, with the cache, its tracking: Redis's pushes applied to the
//! cache, the PING that vouches for them, the Sentinel switch that replaces the connection.
//! Runs in the worker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, PushInfo, RedisError};

use super::target::{Refused, Target, resp3};
use super::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, Inner, RESPONSE_TIMEOUT, RedisStore, StoreError};
use crate::session::cache::{Cache, VOUCH_EVERY};

/// A live connection: one node's, or the cluster's (which routes each key to its node).
#[derive(Clone)]
pub(super) enum Connection {
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

    pub(super) async fn query_pipe<T: FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
    ) -> Result<T, RedisError> {
        match self {
            Connection::Single(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// Applies Redis's pushes to the cache: an invalidation drops its keys (all of them on a
/// `FLUSHALL`), a lost connection drops everything. Runs on the connection's reader, ahead of
/// the replies that follow the push. The cache is keyed by session id: a key under `prefix`
/// names one; any other key still counts as an invalidation (the cache's generation moves).
fn invalidations(
    cache: Weak<Cache>,
    prefix: String,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    move |push: PushInfo| {
        let cache = cache.upgrade().ok_or(())?;
        match push.kind {
            redis::PushKind::Invalidate => match push.data.first() {
                Some(redis::Value::Array(keys)) => {
                    for key in keys {
                        if let redis::Value::BulkString(k) = key {
                            let k = String::from_utf8_lossy(k);
                            cache.invalidate(k.strip_prefix(prefix.as_str()).unwrap_or(&k));
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
pub(super) async fn vouch(store: Weak<Inner>) {
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
pub(super) struct Conn {
    live: Option<Connection>,
    /// Failed connect attempts since the last success.
    failures: u64,
}

impl RedisStore {
    /// The cache, while reads may use it.
    pub(super) fn cache(&self) -> Option<&Arc<Cache>> {
        self.inner
            .cache
            .get()
            .filter(|_| !self.inner.untracked.load(Ordering::Relaxed))
    }

    /// Sentinel only: listens on the sentinels' `+switch-master` channel and drops the
    /// connection the moment the service's primary changes, so requests move to the new
    /// primary even while the old one still answers (a failover by hand, a partition). Connection
    /// errors and `READONLY` replies catch the rest. Runs for as long as the store lives.
    pub(super) async fn watch_switch_master(self) {
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

    /// The live connection, or the number of failed connect attempts so far.
    fn cached(&self) -> Result<Connection, u64> {
        let c = self
            .inner
            .conn
            .lock()
            .expect("redis connection lock poisoned");
        c.live.clone().ok_or(c.failures)
    }

    pub(super) async fn connection(&self) -> Result<Connection, StoreError> {
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
            Some(cache) => config.clone().set_push_sender(invalidations(
                Arc::downgrade(cache),
                self.inner.prefix.clone(),
            )),
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
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        match conn.query::<T>(cmd).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(e)),
        }
    }

    pub(super) fn failed(&self, e: RedisError) -> StoreError {
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
}
