//! What both stores share: their errors, the throttle's counter types, and actix-session's
//! `SessionStore` over each, with the renewal rule of the module's documentation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// A session record that is not the store's JSON: the session is treated as empty.
    #[error("undecodable session: {0}")]
    Corrupt(String),
}

/// The session state actix-session hands to stores.
pub type State = HashMap<String, String>;

/// What a store's `reserve` did (the login throttle's counters).
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

/// actix-session's TTL as a std duration, at least a millisecond.
fn ttl_of(ttl: &CookieDuration) -> Duration {
    Duration::from_millis(ttl.whole_milliseconds().clamp(1, u64::MAX as i128) as u64)
}

fn encode(state: &State) -> Result<String, anyhow::Error> {
    Ok(serde_json::to_string(state)?)
}

/// A record's state as the store keeps it (JSON).
fn decode(text: &str) -> Result<State, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// What a store's read of a live session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The session's state.
    pub state: State,
    /// Its time left, when the read told it.
    pub left: Option<Duration>,
    /// Answered from the handle's cache (whose entry kept the time left the store reported).
    pub cached: bool,
}

impl Found {
    /// A record the store itself just answered (not the cache), decoded.
    pub(crate) fn read(text: &str, left: Option<Duration>) -> Result<Found, StoreError> {
        Ok(Found {
            state: decode(text)?,
            left,
            cached: false,
        })
    }
}

/// A renewal is written once the expiry has slipped by 1/30 of the TTL (a minute at 30
/// minutes).
pub const RENEW_GRANULARITY: u32 = 30;

/// When each session this store handle (one server thread's) knows of expires at the
/// earliest: from its own writes (a save, an update, a renewal: the expiry is at least that,
/// since another worker can only push it further or delete the session, which a read then
/// finds), or from a read that returned the time left. A renewal that would move the expiry by
/// less than 1/[`RENEW_GRANULARITY`] of the TTL is not written; one of a session this handle
/// knows nothing of is. Bounded: when full, everything is forgotten, which only means the next
/// renewal of each is written.
#[derive(Clone, Default)]
pub(crate) struct Renewals(Arc<Mutex<HashMap<String, Instant>>>);

/// Sessions remembered at most by one store handle.
const RENEWALS_KEPT: usize = 4096;

impl Renewals {
    fn known(&self, id: &str, expires: Instant) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= RENEWALS_KEPT && !m.contains_key(id) {
            m.clear();
        }
        m.insert(id.to_string(), expires);
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Whether a renewal to `ttl` from now is worth writing.
    fn due(&self, id: &str, ttl: Duration) -> bool {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id)
            .is_none_or(|at| *at + ttl / RENEW_GRANULARITY < Instant::now() + ttl)
    }
}

/// actix-session's `SessionStore` for a store with `get` (a [`Found`]), `create`, `replace`,
/// `touch` and `delete`, and a `renewals` field.
macro_rules! session_store {
    ($store:ty) => {
        impl SessionStore for $store {
            async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
                let found = self.get(key.as_ref()).await.map_err(|e| match e {
                    StoreError::Corrupt(_) => LoadError::Deserialization(e.into()),
                    _ => LoadError::Other(e.into()),
                })?;
                let Some(found) = found else {
                    self.renewals.forget(key.as_ref());
                    return Ok(None);
                };
                // A cached entry reports the expiry its read already recorded.
                if let (Some(left), false) = (found.left, found.cached) {
                    self.renewals.known(key.as_ref(), Instant::now() + left);
                }
                Ok(Some(found.state))
            }

            async fn save(
                &self,
                state: State,
                ttl: &CookieDuration,
            ) -> Result<SessionKey, SaveError> {
                let value = encode(&state).map_err(SaveError::Serialization)?;
                let key = actix_session::storage::generate_session_key();
                let expires = Instant::now() + ttl_of(ttl);
                let created = self
                    .create(key.as_ref(), &value, ttl_of(ttl))
                    .await
                    .map_err(|e| SaveError::Other(e.into()))?;
                if !created {
                    // 64 random alphanumerics colliding means the RNG is broken (e.g. not
                    // reseeded after fork); refuse rather than hand one user another's session.
                    return Err(SaveError::Other(anyhow::anyhow!(
                        "generated session id already exists"
                    )));
                }
                self.renewals.known(key.as_ref(), expires);
                Ok(key)
            }

            async fn update(
                &self,
                key: SessionKey,
                state: State,
                ttl: &CookieDuration,
            ) -> Result<SessionKey, UpdateError> {
                let value = encode(&state).map_err(UpdateError::Serialization)?;
                let expires = Instant::now() + ttl_of(ttl);
                let replaced = self
                    .replace(key.as_ref(), &value, ttl_of(ttl))
                    .await
                    .map_err(|e| UpdateError::Other(e.into()))?;
                if replaced {
                    self.renewals.known(key.as_ref(), expires);
                    return Ok(key);
                }
                self.renewals.forget(key.as_ref());
                // The record was deleted (a logout on another worker) or expired since this
                // request read it. Storing the state under a new id, as actix-session's own
                // stores do, would sign a user who just logged out in again (the request's
                // state still names them): the deletion wins, the change is dropped, and the
                // cookie keeps naming the gone record, so the next request is anonymous.
                Ok(key)
            }

            async fn update_ttl(
                &self,
                key: &SessionKey,
                ttl: &CookieDuration,
            ) -> Result<(), anyhow::Error> {
                let ttl = ttl_of(ttl);
                if self.renewals.due(key.as_ref(), ttl) {
                    let expires = Instant::now() + ttl;
                    self.touch(key.as_ref(), ttl).await?;
                    self.renewals.known(key.as_ref(), expires);
                }
                Ok(())
            }

            async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
                self.renewals.forget(key.as_ref());
                Ok(self.delete(key.as_ref()).await?)
            }
        }
    };
}

#[cfg(feature = "redis")]
session_store!(super::redis::RedisStore);
#[cfg(feature = "sqlite")]
session_store!(super::sqlite::SqliteStore);
