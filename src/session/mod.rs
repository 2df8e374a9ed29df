//! Session storage every worker shares, behind actix-session's `SessionStore` trait, plus the
//! failed-login counters that live in the same store. Built in the worker, after `fork`
//! (fork rule 4); the cookie key ([`key`]) is loaded in the master.
//!
//! Two stores:
//! - `redis::RedisStore`: production, shared by every host that uses the same Redis. Short
//!   connect and response timeouts and no retry loop: when Redis is down a request fails in well
//!   under a second and the app answers 503, and the next request after Redis returns works.
//! - `sqlite::SqliteStore`: the embedded default, one SQLite file in the data dir shared by the
//!   workers of one host, so `cargo run` needs nothing installed.
//!
//! Both are plain actix-session stores: `SessionMiddleware::new(store, key)` in any app, with or
//! without a master. [`web::Sessions`] is a leaner middleware over the same trait and cookie,
//! which the demo uses: a signed-in read from the cache then costs little more than a route
//! without a session. The TTL actix-session hands them is the only one: a record expires that
//! long after it was saved or last renewed. A renewal (`update_ttl`, which actix-session's
//! `OnEveryRequest` policy calls) is written only once the expiry has slipped by
//! 1/`RENEW_GRANULARITY` of the TTL since the session was read, so most signed-in requests are
//! one read. The demo app checks the absolute lifetime from login on top of that.

#[cfg(any(feature = "redis", feature = "sqlite"))]
mod cache;
pub mod files;
#[cfg(feature = "redis")]
mod flight;
pub mod key;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
mod versions;
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub mod web;
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub use cache::{CacheCounters, TRUST_FOR, VOUCH_EVERY};
#[cfg(any(feature = "redis", feature = "sqlite"))]
mod store;
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub(crate) use store::Renewals;
#[cfg(any(feature = "redis", feature = "sqlite"))]
pub use store::{Counter, Found, RENEW_GRANULARITY, Reservation, State, StoreError};
