//! The demo web app that the `clusterd` binary serves: health, login, a protected route,
//! logout. Routes and users only, no process logic; runs in workers (state built after fork).
//!
//! | route          | answer                                                                  |
//! |----------------|-------------------------------------------------------------------------|
//! | `GET /healthz` | 200 `{"status":"ok"|"degraded","worker_pid","worker_id","store":{..}}`  |
//! | `POST /login`  | JSON or form `username`, `password`: 200, 400, 401, 413, 415, 429, 503   |
//! | `GET /me`      | 200 `{"user","worker_pid","worker_id"}`, 401 when anonymous, 503          |
//! | `POST /logout` | 200; the session is deleted from the store                              |
//! | anything else  | 404 / 405 JSON                                                          |

pub mod error;
pub mod hasher;
mod login;
pub mod metrics;
pub mod page;
pub mod service;
pub mod store;
pub mod users;
use self::login::{login, logout, me};
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::body::MessageBody;
use actix_web::cookie::Key;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{HttpResponse, web};

use self::service::SessionConfig;
use self::store::Store;
use crate::session::redis::RedisStore;
use crate::session::sqlite::SqliteStore;
use crate::session::web::{CookieSettings, Sessions};
use crate::worker::{BootError, WorkerApp, WorkerInfo};
use error::AppError;
use users::Users;

/// Largest accepted login body.
pub const MAX_BODY: usize = 4096;
/// Longest user name accepted.
pub const MAX_USERNAME: usize = 64;
/// Longest password accepted (argon2 would take anything; a megabyte is no password).
pub const MAX_PASSWORD: usize = 1024;
/// Failed logins for one user name from one client network (an IPv4 address, an IPv6 /64)
/// before 429: the limit a guesser at one address meets.
pub const PAIR_FAILURE_LIMIT: u64 = 5;
/// Failed logins for one user name from anywhere before 429: looser, so that guessing from
/// one network locks the user out of that network only, while guessing spread over many networks
/// is still capped.
pub const USER_FAILURE_LIMIT: u64 = 50;
/// Failed logins from one client network, whatever the user name, before 429.
pub const ADDR_FAILURE_LIMIT: u64 = 20;
/// Logins that may wait for a hashing thread in each worker before 503.
pub const HASH_QUEUE: usize = 32;
/// Window in which failures are counted, from the first failure.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How often each worker checks that the store answers, for `/healthz`.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The demo app: everything the master prepared (config, key, users).
pub struct DemoApp {
    /// Session settings.
    pub session: SessionConfig,
    /// The cookie key, loaded once by the master.
    pub key: Key,
    /// Users and their hashes.
    pub users: Arc<Users>,
    /// Password-hashing threads per worker (each verification takes ~19 MiB while it runs).
    pub hash_threads: usize,
}

/// Per-worker state, cloned into each server thread.
#[derive(Clone)]
pub struct DemoState {
    worker: WorkerInfo,
    users: Arc<Users>,
    key: Key,
    session: Arc<SessionConfig>,
    /// Whether the store answers: at boot, then as the server threads' probes find it.
    up: Arc<AtomicBool>,
    /// The worker's password-hashing threads.
    hasher: hasher::Hasher,
}

/// A server thread's own store handle. Each thread opens its own Redis connection (or SQLite
/// connection): a connection's I/O runs on the runtime that opened it, and one opened on
/// another thread would cost a cross-thread wake-up per request.
#[derive(Clone)]
struct ThreadStore {
    store: Store,
}

impl DemoState {
    /// This server thread's share of the worker's session cache.
    fn thread_cache_size(&self) -> usize {
        self.session.cache_size.div_ceil(self.worker.threads.max(1))
    }

    /// A store handle; `cache`: with this thread's share of the worker's session cache.
    fn open_store(&self, cache: bool) -> Result<Store, BootError> {
        let s = &self.session;
        let size = match cache {
            true => self.thread_cache_size(),
            false => 0,
        };
        Ok(match &s.redis_url {
            Some(url) => Store::Redis(
                RedisStore::new(url, &s.prefix, s.wait_replicas)
                    .map_err(|e| {
                        BootError::Config(format!("redis url {}: {e}", RedisStore::describe(url)))
                    })?
                    .with_cache(size, metrics::cache()),
            ),
            None => Store::Sqlite(
                SqliteStore::open(&s.data_dir)
                    .map_err(|e| {
                        BootError::Config(format!(
                            "opening the embedded store in {}: {e}",
                            s.data_dir.display()
                        ))
                    })?
                    .with_cache(size, metrics::cache()),
            ),
        })
    }
}

impl WorkerApp for DemoApp {
    type State = DemoState;

    async fn init(&self, worker: &WorkerInfo) -> Result<DemoState, BootError> {
        let state = DemoState {
            worker: worker.clone(),
            users: Arc::clone(&self.users),
            key: self.key.clone(),
            session: Arc::new(self.session.clone()),
            up: Arc::new(AtomicBool::new(false)),
            hasher: hasher::Hasher::new(self.hash_threads, HASH_QUEUE)
                .map_err(|e| BootError::Transient(format!("starting hashing threads: {e}")))?,
        };
        // Checks the configuration once per worker; this handle then only purges expired rows.
        let store = state.open_store(false)?;
        // A worker starts even when Redis is down (degraded); requests that need a session get
        // 503 until it answers.
        state
            .up
            .store(store.ping().await.is_ok(), Ordering::Relaxed);
        if !state.up.load(Ordering::Relaxed) {
            tracing::warn!(
                store = store.kind(),
                "session store not reachable at boot; serving degraded"
            );
        }
        if let Store::Sqlite(s) = &store {
            s.spawn_purger();
        }
        Ok(state)
    }

    fn health_label(&self) -> Option<String> {
        let kind = if self.session.redis_url.is_some() {
            "redis"
        } else {
            "sqlite"
        };
        Some(format!("store {kind}"))
    }

    fn health(state: &DemoState) -> crate::worker::Health {
        let up = state.up.load(Ordering::Relaxed);
        let kind = if state.session.redis_url.is_some() {
            "redis"
        } else {
            "sqlite"
        };
        let mut details = serde_json::Map::new();
        details.insert(
            "store".into(),
            serde_json::json!({ "kind": kind, "status": if up { "up" } else { "down" } }),
        );
        crate::worker::Health {
            degraded: !up,
            details,
        }
    }

    fn configure(state: &DemoState, cfg: &mut web::ServiceConfig) {
        // Runs on the server thread, inside its runtime. `init` opened a store with the same
        // settings a moment ago, so a failure here is an environment change: the thread's
        // start fails and the worker exits with a boot error (the master backs off).
        let store = state
            .open_store(true)
            .unwrap_or_else(|e| panic!("opening the session store for a server thread: {e}"));
        let thread = ThreadStore { store };
        spawn_probe(
            thread.store.clone(),
            Arc::clone(&state.up),
            state.worker.link.clone(),
        );
        let sessions = sessions(state, &thread);
        cfg.app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(thread.clone()))
            .service(with_session(
                &sessions,
                web::resource("/").route(web::get().to(page::index)),
            ))
            .service(with_session(
                &sessions,
                web::resource("/login").route(web::post().to(login)),
            ))
            .service(with_session(
                &sessions,
                web::resource("/me").route(web::get().to(me)),
            ))
            .service(with_session(
                &sessions,
                web::resource("/logout").route(web::post().to(logout)),
            ));
        #[cfg(debug_assertions)]
        cfg.route("/debug/sleep/{ms}", web::get().to(debug_sleep))
            .route("/debug/block/{ms}", web::get().to(debug_block));
        cfg.default_service(web::to(|| async {
            Err::<HttpResponse, _>(AppError::NotFound)
        }));
    }
}

/// Checks every [`PROBE_EVERY`] that the store answers, for `/healthz` and for the master
/// (systemd's STATUS line).
fn spawn_probe(store: Store, up: Arc<AtomicBool>, link: crate::worker::MasterLink) {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            let ok = store.ping().await.is_ok();
            up.store(ok, Ordering::Relaxed);
            link.report_health(ok);
        }
    });
}

/// The session middleware of one server thread, shared by its routes (and so its remembered
/// cookies). Renewed by `login::keep_alive`'s state change, not on every request: a read
/// writes nothing and sets no cookie.
fn sessions(state: &DemoState, thread: &ThreadStore) -> Sessions<Store> {
    let s = &state.session;
    let cookie = CookieSettings {
        secure: s.cookie_secure,
        ..CookieSettings::new(s.cookie_name.clone())
    };
    Sessions::new(
        thread.store.clone(),
        state.key.clone(),
        cookie,
        s.idle_timeout,
        state.thread_cache_size(),
    )
}

/// Wraps a resource in the session middleware (only routes that use sessions: `/healthz` keeps
/// working when the store is down; the middleware answers 503 when the store fails).
fn with_session<T, B>(
    sessions: &Sessions<Store>,
    resource: actix_web::Resource<T>,
) -> impl actix_web::dev::HttpServiceFactory + use<T, B>
where
    T: actix_web::dev::ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    resource
        .wrap(sessions.clone())
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(AppError::MethodNotAllowed)
        }))
}

fn unix_now() -> u64 {
    unix_now_ms() / 1_000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Debug builds only: a request that takes `ms` milliseconds (at most 10 s), so tests can have
/// a request in flight during a stop or a reload.
#[cfg(debug_assertions)]
async fn debug_sleep(
    path: web::Path<String>,
    state: web::Data<DemoState>,
) -> Result<HttpResponse, AppError> {
    let ms: u64 = path
        .parse()
        .map_err(|_| AppError::BadRequest("milliseconds expected".into()))?;
    // Tests wait for this line to know the request is in flight.
    tracing::info!(ms, "debug sleep started");
    tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "slept_ms": ms.min(10_000), "worker_pid": state.worker.pid })))
}

/// Blocks the server thread (a blocking call inside async code, the bug the heartbeat is
/// there to catch). Debug builds only.
#[cfg(debug_assertions)]
async fn debug_block(path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let ms: u64 = path
        .parse()
        .map_err(|_| AppError::BadRequest("milliseconds expected".into()))?;
    tracing::info!(ms, "debug block started");
    std::thread::sleep(Duration::from_millis(ms.min(120_000)));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "blocked_ms": ms })))
}
