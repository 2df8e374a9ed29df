//! The demo's store: Redis or the embedded SQLite, chosen by `--redis-url`, each operation
//! counted for `/metrics`. Runs in workers.

use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;

use super::metrics;
use crate::session::redis::RedisStore;
use crate::session::sqlite::SqliteStore;
use crate::session::{Reservation, State, StoreError};

/// The configured store. An enum rather than a trait object: `SessionStore` returns
/// `impl Future`, which is not object safe, and there are exactly two.
#[derive(Clone)]
pub enum Store {
    /// Redis.
    Redis(RedisStore),
    /// Embedded SQLite.
    Sqlite(SqliteStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Sqlite($s) => $e,
        }
    };
}

impl Store {
    /// `"redis"` or `"sqlite"`, for logs and `/healthz`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Whether the store answers right now (bounded by the store's timeouts).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// Takes one attempt on every named counter if each is below its limit, or on none: atomic
    /// over all of them, so concurrent attempts can never pass a limit, and a refused attempt
    /// writes nothing. The window of a counter starts with its first attempt.
    pub async fn reserve(
        &self,
        names: &[String],
        limits: &[u64],
        window: Duration,
    ) -> Result<Reservation, StoreError> {
        dispatch!(self, s => s.reserve(names, limits, window).await)
    }

    /// Gives back an attempt taken by [`Store::reserve`]: it succeeded, or its password could
    /// not be checked.
    pub async fn release(&self, names: &[String]) -> Result<(), StoreError> {
        dispatch!(self, s => s.release(names).await)
    }

    /// Drops a counter (after a successful login).
    pub async fn clear_counter(&self, name: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.clear_counter(name).await)
    }
}

/// Runs a store operation, counting it (`op` indexes [`metrics::STORE_OPS`]).
async fn timed<T, E>(op: usize, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = f.await;
    metrics::store(op, started.elapsed(), result.is_ok());
    result
}

impl SessionStore for Store {
    async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
        timed(0, async {
            dispatch!(self, s => SessionStore::load(s, key).await)
        })
        .await
    }

    async fn save(&self, state: State, ttl: &CookieDuration) -> Result<SessionKey, SaveError> {
        timed(1, async {
            dispatch!(self, s => SessionStore::save(s, state, ttl).await)
        })
        .await
    }

    async fn update(
        &self,
        key: SessionKey,
        state: State,
        ttl: &CookieDuration,
    ) -> Result<SessionKey, UpdateError> {
        timed(2, async {
            dispatch!(self, s => SessionStore::update(s, key, state, ttl).await)
        })
        .await
    }

    async fn update_ttl(&self, key: &SessionKey, ttl: &CookieDuration) -> anyhow::Result<()> {
        timed(4, async {
            dispatch!(self, s => SessionStore::update_ttl(s, key, ttl).await)
        })
        .await
    }

    async fn delete(&self, key: &SessionKey) -> anyhow::Result<()> {
        timed(3, async {
            dispatch!(self, s => SessionStore::delete(s, key).await)
        })
        .await
    }
}
