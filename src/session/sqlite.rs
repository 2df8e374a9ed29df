//! The embedded session store: one SQLite file in the data dir, opened by each worker after
//! `fork` and shared through the file (WAL mode lets readers and one writer work at once).
//! Runs in the worker, with three connections per server thread:
//! - **session reads run on the server thread itself.** In WAL mode a read takes no lock a
//!   writer holds, and a primary-key lookup is answered from SQLite's page cache in
//!   microseconds. Handing it to another thread cost two cross-thread wake-ups per signed-in
//!   request, and that thread ran about a fifth of a core in futex wake-ups alone under load
//!   (quiet `/me` p99 was 1.5-3.5 ms that way, about 1 ms inline). This connection has no busy
//!   handler: in the rare case that SQLite answers BUSY to a reader (a WAL reset under way), the
//!   read is handed to the write thread, which waits; the server thread never sleeps. A
//!   session written by a request is visible to the next one: each read is its own
//!   transaction, and a write is committed before its response is sent.
//! - **session writes** (create, replace, delete, renew, purge) and **the login counters** each
//!   have a connection owned by a thread of their own, which runs its queries in turn. A write
//!   can wait for the database's one write lock (another worker holds it) or run a WAL
//!   checkpoint after its commit; a request waits for that only when it writes. (Not tokio's
//!   blocking pool: a login storm would wake a blocking thread per login, all contending for
//!   one connection.)
//!
//! Durability: `synchronous=NORMAL` in WAL mode survives any process crash (`kill -9`
//! included); a power cut can lose the last moments of session writes, which costs those users a
//! new login. Expired rows are purged by every worker once a minute. A session's expiry is
//! renewed on use to within 1/30 of the TTL (see [`super::RENEW_GRANULARITY`]).
//!
//! With [`SqliteStore::with_cache`], reads are cached in the handle: each write of a session
//! bumps its version in a file every worker of the host maps (`sessions.versions` beside the
//! database), and an entry is served only while its version is unchanged and it has not
//! expired.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::cache::{Cache, CacheCounters};
use super::versions::Versions;
use super::{Counter, Found, Reservation, StoreError};

/// File name inside the data dir.
pub const FILE_NAME: &str = "sessions.sqlite3";
/// How often expired rows are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// SQLite-backed sessions and counters.
#[derive(Clone)]
pub struct SqliteStore {
    /// Session reads and `ping`, run on the calling (server) thread; no busy handler. A
    /// mutex only to make the handle `Sync`: one server thread uses it, so it is never
    /// contended, and a caller that finds it taken uses `writes` instead of waiting.
    reads: Arc<Mutex<Connection>>,
    /// Session writes (create, replace, delete, renew, purge), and reads that `reads` could not
    /// answer at once.
    writes: Db,
    /// Login throttle counters: their own connection, so that a counter write waiting for the
    /// database's write lock (held by another worker) never holds up a session read.
    counters: Db,
    path: Arc<PathBuf>,
    pub(crate) renewals: super::Renewals,
    /// The host's shared versions of the sessions.
    versions: &'static Versions,
    /// The read cache, with [`SqliteStore::with_cache`].
    cache: Option<Arc<Cache>>,
}

/// A query to run on a connection's thread.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// One connection, owned by a thread that runs the jobs sent to it in order. The thread ends
/// when the last handle is dropped.
#[derive(Clone)]
struct Db(mpsc::Sender<Job>);

impl Db {
    fn spawn(conn: Connection, name: &str) -> Result<Db, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in rx {
                    // A panicking query drops its answer (the caller sees an error) and must
                    // not take the connection's later queries down with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn)));
                }
            })
            .map_err(|e| StoreError::Backend(format!("sqlite thread: {e}")))?;
        Ok(Db(tx))
    }
}

/// A counter from its row: the count and the expiry in ms, seen at `now`.
fn counter_row(count: i64, expires_at_ms: i64, now: i64) -> Counter {
    Counter {
        count: count.max(0) as u64,
        resets_in: Duration::from_millis((expires_at_ms - now).max(0) as u64),
    }
}

/// The first of `names` whose live count has reached its limit.
fn over_limit(
    c: &Connection,
    names: &[String],
    limits: &[u64],
    now: i64,
) -> rusqlite::Result<Option<Counter>> {
    for (name, limit) in names.iter().zip(limits) {
        let row: Option<(i64, i64)> = c
            .query_row(
                "SELECT count, expires_at_ms FROM counters WHERE name = ?1 AND expires_at_ms > ?2",
                params![name, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((count, exp)) = row
            && count.max(0) as u64 >= *limit
        {
            return Ok(Some(counter_row(count, exp, now)));
        }
    }
    Ok(None)
}

/// Retries every millisecond for up to 5 s (`n` is the number of retries so far).
fn busy_wait(n: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    n < 5000
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SQLite could not take the lock it needed (another connection holds it).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    )
}

fn err(e: rusqlite::Error) -> StoreError {
    if is_busy(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

impl SqliteStore {
    /// Creates the database file and its tables, in WAL mode, if they do not exist. The master
    /// calls this once before forking, so that workers opening the file together never race to
    /// switch its journal mode (which takes an exclusive lock and fails as "database is locked").
    /// The connection is closed again: SQLite connections must not cross `fork`.
    pub fn initialize(data_dir: &Path) -> Result<PathBuf, StoreError> {
        let path = data_dir.join(FILE_NAME);
        // NOFOLLOW: the master may be root, and the data dir belongs to the workers' user.
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY, state TEXT NOT NULL, expires_at_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS counters (
                 name TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(err)?;
        conn.close().map_err(|(_, e)| err(e))?;
        Ok(path)
    }

    /// Opens the database [`SqliteStore::initialize`] made in `data_dir` (in a worker, after
    /// fork: one store per server thread). Use it as any actix-session store:
    /// `SessionMiddleware::new(store, key)`; a session lives for the TTL the middleware hands
    /// over, renewed as its policy says.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let connect = |busy_handler: bool| -> Result<Connection, StoreError> {
            let mut conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_NOFOLLOW
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(err)?;
            // SQLite's own busy handler sleeps in steps of up to 100 ms while another worker
            // writes; retrying every millisecond keeps a short wait short. The server thread's
            // connection gets none: BUSY comes back at once.
            if busy_handler {
                conn.busy_handler(Some(busy_wait)).map_err(err)?;
            }
            // Per connection, not stored in the file.
            conn.execute_batch("PRAGMA synchronous = NORMAL;")
                .map_err(err)?;
            Ok(conn)
        };
        Ok(SqliteStore {
            reads: Arc::new(Mutex::new(connect(false)?)),
            writes: Db::spawn(connect(true)?, "sqlite-writes")?,
            counters: Db::spawn(connect(true)?, "sqlite-counters")?,
            path: Arc::new(path),
            renewals: super::Renewals::default(),
            versions: Versions::open(data_dir)?,
            cache: None,
        })
    }

    /// Caches up to `capacity` sessions in this handle (and its clones), each served only
    /// while no process of the host changed it (see the module's documentation); `counters`
    /// counts hits, misses and invalidations. `capacity` 0 leaves reads uncached.
    pub fn with_cache(mut self, capacity: usize, counters: Option<CacheCounters>) -> Self {
        self.cache = (capacity > 0).then(|| Arc::new(Cache::new(capacity, false, counters)));
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read on this thread's connection; if that connection is taken or SQLite answers
    /// BUSY, runs it again on the write thread, which waits for the database.
    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Ok(conn) = self.reads.try_lock() {
            match f(&conn) {
                Err(e) if is_busy(&e) => {}
                other => return other.map_err(err),
            }
        }
        self.with_writes(f).await
    }

    async fn with_writes<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        Self::on(&self.writes, f).await
    }

    async fn with_counters<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        Self::on(&self.counters, f).await
    }

    async fn on<T: Send + 'static>(
        db: &Db,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone (its request was cancelled); the answer is then dropped.
            let _ = tx.send(f(conn).map_err(err));
        });
        db.0.send(job)
            .map_err(|_| StoreError::Backend("sqlite thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("sqlite thread has stopped".into()))?
    }

    /// Deletes expired rows now, and then every [`PURGE_EVERY`] on the current runtime.
    pub fn spawn_purger(&self) {
        let store = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_EVERY);
            loop {
                tick.tick().await;
                let purged = store
                    .with_writes(|c| {
                        let now = now_ms();
                        Ok(
                            c.execute("DELETE FROM sessions WHERE expires_at_ms <= ?1", [now])?
                                + c.execute(
                                    "DELETE FROM counters WHERE expires_at_ms <= ?1",
                                    [now],
                                )?,
                        )
                    })
                    .await;
                match purged {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "purged expired sessions and counters"),
                    Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
                }
            }
        });
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// The state of a live session and how long it has left. A read only: WAL lets it run
    /// beside the one writer.
    pub async fn get(&self, id: &str) -> Result<Option<Found>, StoreError> {
        let Some(cache) = &self.cache else {
            return self.select(id).await;
        };
        let asked = Instant::now();
        let versions = self.versions;
        if let Some((state, left)) = cache.get(id, asked, |stamp| versions.of(id) == stamp) {
            return Ok(Some(Found {
                state,
                left,
                cached: true,
            }));
        }
        // The version before the read: a change committed after it makes the entry stale.
        let (ticket, stamp) = (cache.ticket(), versions.of(id));
        let found = self.select(id).await?;
        if let Some(Found {
            state,
            left: Some(left),
            ..
        }) = &found
        {
            cache.put(ticket, id, state, Some(asked + *left), stamp);
        }
        Ok(found)
    }

    async fn select(&self, id: &str) -> Result<Option<Found>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let now = now_ms();
            let row: Option<(String, i64)> = c
                .prepare_cached(
                    "SELECT state, expires_at_ms FROM sessions WHERE id = ?1 AND expires_at_ms > ?2",
                )?
                .query_row(params![id, now], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.map(|(s, at)| (s, Duration::from_millis((at - now).max(0) as u64))))
        })
        .await?
        .map(|(text, left)| Found::read(&text, Some(left)))
        .transpose()
    }

    /// The session lives `ttl` from now, if it is still live: a logout between the read and
    /// this write stays a logout. On the write connection, so reads do not wait for it.
    pub async fn touch(&self, id: &str, ttl: Duration) -> Result<(), StoreError> {
        let id = id.to_string();
        let versions = self.versions;
        self.with_writes(move |c| {
            let now = now_ms();
            c.prepare_cached(
                "UPDATE sessions SET expires_at_ms = ?2 WHERE id = ?1 AND expires_at_ms > ?3",
            )?
            .execute(params![id, now + ttl.as_millis() as i64, now])?;
            versions.bump(&id);
            Ok(())
        })
        .await
    }

    /// Inserts a session; false if a live one has that id.
    pub async fn create(&self, id: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (id, value) = (id.to_string(), value.to_string());
        self.with_writes(move |c| {
            let now = now_ms();
            let n = c.execute(
                "INSERT INTO sessions (id, state, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, expires_at_ms = excluded.expires_at_ms
                 WHERE sessions.expires_at_ms <= ?4",
                params![id, value, now + ttl.as_millis() as i64, now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Replaces a live session's state; false if it is gone.
    pub async fn replace(&self, id: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (id, value) = (id.to_string(), value.to_string());
        let versions = self.versions;
        self.with_writes(move |c| {
            let now = now_ms();
            let n = c.execute(
                "UPDATE sessions SET state = ?2, expires_at_ms = ?3 WHERE id = ?1 AND expires_at_ms > ?4",
                params![id, value, now + ttl.as_millis() as i64, now],
            )?;
            versions.bump(&id);
            Ok(n == 1)
        })
        .await
    }

    /// Deletes a session.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        let versions = self.versions;
        self.with_writes(move |c| {
            c.execute("DELETE FROM sessions WHERE id = ?1", [&id])?;
            versions.bump(&id);
            Ok(())
        })
        .await
    }

    /// Takes one attempt on every counter if each is below its limit, or on none. A read-only
    /// look first (no lock in WAL mode), so a refused attempt writes nothing; then the check and
    /// the increments again in one IMMEDIATE transaction, which holds the write lock from its
    /// start: concurrent workers cannot both pass a limit.
    pub async fn reserve(
        &self,
        names: &[String],
        limits: &[u64],
        window: Duration,
    ) -> Result<Reservation, StoreError> {
        let (names, limits) = (names.to_vec(), limits.to_vec());
        self.with_counters(move |c| {
            let now = now_ms();
            if let Some(refused) = over_limit(c, &names, &limits, now)? {
                return Ok(Reservation::Refused(refused));
            }
            let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            if let Some(refused) = over_limit(&tx, &names, &limits, now)? {
                return Ok(Reservation::Refused(refused));
            }
            let mut out = Vec::new();
            for name in &names {
                let (count, exp): (i64, i64) = tx.query_row(
                    "INSERT INTO counters (name, count, expires_at_ms) VALUES (?1, 1, ?2)
                     ON CONFLICT (name) DO UPDATE SET
                         count = CASE WHEN counters.expires_at_ms > ?3 THEN counters.count + 1 ELSE 1 END,
                         expires_at_ms = CASE WHEN counters.expires_at_ms > ?3 THEN counters.expires_at_ms
                                              ELSE excluded.expires_at_ms END
                     RETURNING count, expires_at_ms",
                    params![name, now + window.as_millis() as i64, now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                out.push(counter_row(count, exp, now));
            }
            tx.commit()?;
            Ok(Reservation::Taken(out))
        })
        .await
    }

    /// Gives back an attempt taken by [`SqliteStore::reserve`]; a counter at zero is deleted.
    pub async fn release(&self, names: &[String]) -> Result<(), StoreError> {
        let names = names.to_vec();
        self.with_counters(move |c| {
            let tx = c.unchecked_transaction()?;
            for name in &names {
                tx.execute(
                    "UPDATE counters SET count = count - 1 WHERE name = ?1",
                    [name],
                )?;
                tx.execute(
                    "DELETE FROM counters WHERE name = ?1 AND count <= 0",
                    [name],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Deletes a counter.
    pub async fn clear_counter(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_counters(move |c| {
            c.execute("DELETE FROM counters WHERE name = ?1", [name])
                .map(drop)
        })
        .await
    }
}
