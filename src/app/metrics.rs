//! The demo's counters, registered through [`crate::counter`] as any app's are: logins by
//! outcome and session-store operations. Registered in the master (`Service::build`), counted
//! in the workers.

use std::sync::OnceLock;
use std::time::Duration;

use crate::counter::{self, Counter, Unit};
use crate::session::CacheCounters;

/// Login outcomes counted, in index order.
pub const LOGIN_OUTCOMES: [&str; 4] = ["ok", "failed", "throttled", "shed"];
/// Session-store operations counted, in index order (`renew`: a TTL renewal asked for, written
/// or found not due).
pub const STORE_OPS: [&str; 5] = ["load", "save", "update", "delete", "renew"];

struct Counters {
    logins: [Counter; LOGIN_OUTCOMES.len()],
    store_ops: [Counter; STORE_OPS.len()],
    store_errors: Counter,
    store_time: Counter,
    cache: CacheCounters,
}

static COUNTERS: OnceLock<Counters> = OnceLock::new();

/// Registers the counters (once; a reload finds them registered).
pub fn register() {
    COUNTERS.get_or_init(|| Counters {
        logins: LOGIN_OUTCOMES.map(|o| {
            counter::register(
                "clusterd_logins_total",
                "Login attempts by outcome: ok, failed (wrong name or password), throttled (429), shed (503, hashing pool full)",
                &[("outcome", o)],
                Unit::Count,
            )
        }),
        store_ops: STORE_OPS.map(|op| {
            counter::register(
                "clusterd_session_store_operations_total",
                "Session-store operations, by kind",
                &[("op", op)],
                Unit::Count,
            )
        }),
        store_errors: counter::counter(
            "clusterd_session_store_errors_total",
            "Session-store operations that failed",
        ),
        store_time: counter::register(
            "clusterd_session_store_duration_seconds_total",
            "Time spent in session-store operations",
            &[],
            Unit::Seconds,
        ),
        cache: CacheCounters {
            hits: counter::counter(
                "clusterd_session_cache_hits_total",
                "Session reads answered from the worker's cache",
            ),
            misses: counter::counter(
                "clusterd_session_cache_misses_total",
                "Session reads the cache did not answer (not cached, changed, expired, or the invalidation channel not confirmed); concurrent misses of one session share one store read",
            ),
            invalidations: counter::counter(
                "clusterd_session_cache_invalidations_total",
                "Cached sessions dropped because the store changed them or the invalidation channel was lost",
            ),
        },
    });
}

/// The session cache's counters, once registered.
pub fn cache() -> Option<CacheCounters> {
    COUNTERS.get().map(|c| c.cache.clone())
}

/// Counts a login outcome (an index into [`LOGIN_OUTCOMES`]).
pub fn login(outcome: usize) {
    if let Some(c) = COUNTERS.get() {
        c.logins[outcome].inc();
    }
}

/// Counts a store operation (an index into [`STORE_OPS`]).
pub fn store(op: usize, took: Duration, ok: bool) {
    if let Some(c) = COUNTERS.get() {
        c.store_ops[op].inc();
        c.store_time.add_duration(took);
        if !ok {
            c.store_errors.inc();
        }
    }
}
