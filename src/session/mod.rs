//! Session storage every worker shares, behind actix-session's [`SessionStore`] trait, plus the
//! failed-login counters that live in the same store. Built in the worker, after `fork`
//! (fork rule 4); the cookie key ([`key`]) is loaded in the master.
//!
//! Two stores:
//! - [`redis::RedisStore`]: production, shared by every host that uses the same Redis. Short
//!   connect and response timeouts and no retry loop: when Redis is down a request fails in well
//!   under a second and the app answers 503, and the next request after Redis returns works.
//! - [`sqlite::SqliteStore`]: the embedded default, one SQLite file in the data dir shared by the
//!   workers of one host, so `cargo run` needs nothing installed.
//!
//! TTL policy (both stores): a session's record expires after the idle timeout, and every
//! request that uses the session renews it: reading a record renews its expiry in the same round
//! trip, and actix-session's `OnEveryRequest` renews the cookie's Max-Age. The absolute lifetime
//! from login is checked by the app on every use.

pub mod files;
pub mod key;
pub mod redis;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;

/// A store failure. `Unavailable` is what the app turns into 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something unexpected.
    #[error("session store error: {0}")]
    Backend(String),
}

/// The session state actix-session hands to stores.
pub type State = HashMap<String, String>;

/// The configured store. An enum rather than a trait object: `SessionStore` returns
/// `impl Future`, which is not object safe, and there are exactly two.
#[derive(Clone)]
pub enum Store {
    /// Redis.
    Redis(redis::RedisStore),
    /// Embedded SQLite.
    Sqlite(sqlite::SqliteStore),
}

/// What [`Store::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Taken: the counts including this attempt, in the order of the names.
    Taken(Vec<Counter>),
    /// Refused: the first counter at its limit.
    Refused(Counter),
}

/// Count and remaining window of a failed-login counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Attempts counted in the current window (this one included).
    pub count: u64,
    /// Time until the window (and the counter) expires.
    pub resets_in: Duration,
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

fn ttl_of(ttl: &CookieDuration) -> Duration {
    Duration::from_secs(ttl.whole_seconds().max(1) as u64)
}

fn encode(state: &State) -> Result<String, anyhow::Error> {
    Ok(serde_json::to_string(state)?)
}

fn decode(text: &str) -> Result<State, LoadError> {
    serde_json::from_str(text).map_err(|e| LoadError::Deserialization(e.into()))
}

/// Runs a store operation, counting it on the scoreboard (`op` indexes `STORE_OPS`).
async fn timed<T, E>(op: usize, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = f.await;
    crate::scoreboard::count_store(op, started.elapsed(), result.is_ok());
    result
}

impl SessionStore for Store {
    async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
        let text = timed(0, async { dispatch!(self, s => s.get(key.as_ref()).await) })
            .await
            .map_err(|e| LoadError::Other(e.into()))?;
        text.map(|t| decode(&t)).transpose()
    }

    async fn save(&self, state: State, ttl: &CookieDuration) -> Result<SessionKey, SaveError> {
        let value = encode(&state).map_err(SaveError::Serialization)?;
        let key = actix_session::storage::generate_session_key();
        let created = timed(1, async {
            dispatch!(self, s => s.create(key.as_ref(), &value, ttl_of(ttl)).await)
        })
        .await
        .map_err(|e| SaveError::Other(e.into()))?;
        if !created {
            // 64 random alphanumerics colliding means the RNG is broken (e.g. not reseeded
            // after fork); refuse rather than hand one user another's session.
            return Err(SaveError::Other(anyhow::anyhow!(
                "generated session id already exists"
            )));
        }
        Ok(key)
    }

    async fn update(
        &self,
        key: SessionKey,
        state: State,
        ttl: &CookieDuration,
    ) -> Result<SessionKey, UpdateError> {
        let value = encode(&state).map_err(UpdateError::Serialization)?;
        let replaced = timed(2, async {
            dispatch!(self, s => s.replace(key.as_ref(), &value, ttl_of(ttl)).await)
        })
        .await
        .map_err(|e| UpdateError::Other(e.into()))?;
        if replaced {
            return Ok(key);
        }
        // The record expired between load and update: store the state under a new id.
        self.save(state, ttl).await.map_err(|e| match e {
            SaveError::Serialization(e) => UpdateError::Serialization(e),
            SaveError::Other(e) => UpdateError::Other(e),
        })
    }

    async fn update_ttl(
        &self,
        _key: &SessionKey,
        _ttl: &CookieDuration,
    ) -> Result<(), anyhow::Error> {
        // Nothing to do: actix-session calls this right after `load` in the same request, and
        // our `load` already renewed the record's expiry in its single round trip (GETEX, or
        // UPDATE .. RETURNING). That halves the store traffic of an authenticated request.
        Ok(())
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
        Ok(timed(3, async {
            dispatch!(self, s => s.delete(key.as_ref()).await)
        })
        .await?)
    }
}
