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
pub mod page;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_session::config::{PersistentSession, TtlExtensionPolicy};
use actix_session::{Session, SessionMiddleware};
use actix_web::body::MessageBody;
use actix_web::cookie::{Key, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::config::SessionConfig;
use crate::session::redis::RedisStore;
use crate::session::sqlite::SqliteStore;
use crate::session::{Reservation, Store};
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
    /// Whether the store answered when the worker booted (the probes take over from there).
    up_at_boot: bool,
    /// The worker's password-hashing threads.
    hasher: hasher::Hasher,
}

/// A server thread's own store handle. Each thread opens its own Redis connection (or SQLite
/// connection): a connection's I/O runs on the runtime that opened it, and one opened on
/// another thread would cost a cross-thread wake-up per request.
#[derive(Clone)]
struct ThreadStore {
    store: Store,
    up: Arc<AtomicBool>,
}

impl DemoState {
    fn open_store(&self) -> Result<Store, BootError> {
        let s = &self.session;
        Ok(match &s.redis_url {
            Some(url) => Store::Redis(
                RedisStore::new(url, &s.prefix, s.idle_timeout, s.wait_replicas).map_err(|e| {
                    BootError::Config(format!("redis url {}: {e}", RedisStore::describe(url)))
                })?,
            ),
            None => Store::Sqlite(SqliteStore::open(&s.data_dir, s.idle_timeout).map_err(|e| {
                BootError::Config(format!(
                    "opening the embedded store in {}: {e}",
                    s.data_dir.display()
                ))
            })?),
        })
    }
}

impl WorkerApp for DemoApp {
    type State = DemoState;

    async fn init(&self, worker: &WorkerInfo) -> Result<DemoState, BootError> {
        let mut state = DemoState {
            worker: worker.clone(),
            users: Arc::clone(&self.users),
            key: self.key.clone(),
            session: Arc::new(self.session.clone()),
            up_at_boot: false,
            hasher: hasher::Hasher::new(self.hash_threads, HASH_QUEUE)
                .map_err(|e| BootError::Transient(format!("starting hashing threads: {e}")))?,
        };
        // Checks the configuration once per worker; this handle then only purges expired rows.
        let store = state.open_store()?;
        // A worker starts even when Redis is down (degraded); requests that need a session get
        // 503 until it answers.
        state.up_at_boot = store.ping().await.is_ok();
        if !state.up_at_boot {
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

    fn configure(state: &DemoState, cfg: &mut web::ServiceConfig) {
        // Runs on the server thread, inside its runtime. `init` opened a store with the same
        // settings a moment ago, so a failure here is an environment change: the thread's
        // start fails and the worker exits with a boot error (the master backs off).
        let store = state
            .open_store()
            .unwrap_or_else(|e| panic!("opening the session store for a server thread: {e}"));
        let thread = ThreadStore {
            store,
            up: Arc::new(AtomicBool::new(state.up_at_boot)),
        };
        spawn_probe(
            thread.store.clone(),
            Arc::clone(&thread.up),
            state.worker.link.clone(),
        );
        cfg.app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(thread.clone()))
            .route("/healthz", web::get().to(healthz))
            .service(with_session(
                state,
                &thread,
                web::resource("/").route(web::get().to(page::index)),
            ))
            .service(with_session(
                state,
                &thread,
                web::resource("/login").route(web::post().to(login)),
            ))
            .service(with_session(
                state,
                &thread,
                web::resource("/me").route(web::get().to(me)),
            ))
            .service(with_session(
                state,
                &thread,
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

/// Wraps a resource in the session middleware (only routes that use sessions: `/healthz` keeps
/// working when the store is down) and turns the middleware's store failures into 503.
fn with_session<T, B>(
    state: &DemoState,
    thread: &ThreadStore,
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
    let s = &state.session;
    let lifecycle = PersistentSession::default()
        .session_ttl(actix_web::cookie::time::Duration::seconds(
            s.idle_timeout.as_secs() as i64,
        ))
        .session_ttl_extension_policy(TtlExtensionPolicy::OnEveryRequest);
    let middleware = SessionMiddleware::builder(thread.store.clone(), state.key.clone())
        .cookie_name(s.cookie_name.clone())
        .cookie_secure(s.cookie_secure)
        .cookie_http_only(true)
        .cookie_same_site(SameSite::Lax)
        .session_lifecycle(lifecycle)
        .build();
    resource
        .wrap(middleware)
        .wrap(from_fn(store_errors_as_503))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(AppError::MethodNotAllowed)
        }))
}

/// actix-session answers an empty 500 when its store fails (load, save, renew, delete). Behind
/// these routes the store is the only thing that can fail that way, and the client should retry,
/// not report a bug: answer 503 JSON.
async fn store_errors_as_503(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    match next.call(req).await {
        Err(e) if e.as_response_error().status_code() == StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::warn!(error = %e, "session store failed during the request");
            Err(AppError::StoreUnavailable.into())
        }
        other => other,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn healthz(state: web::Data<DemoState>, thread: web::Data<ThreadStore>) -> HttpResponse {
    let up = thread.up.load(Ordering::Relaxed);
    HttpResponse::Ok().json(serde_json::json!({
        "status": if up { "ok" } else { "degraded" },
        "worker_pid": state.worker.pid,
        "worker_id": state.worker.id,
        "store": { "kind": thread.store.kind(), "status": if up { "up" } else { "down" } },
    }))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Reads the body up to [`MAX_BODY`] and decodes JSON or a form.
async fn read_credentials(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Credentials, AppError> {
    let mime = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match mime.as_str() {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        _ => return Err(AppError::UnsupportedMediaType),
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(AppError::PayloadTooLarge(MAX_BODY));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                AppError::RequestTimeout
            }
            e => AppError::BadRequest(format!("reading body: {e}")),
        })?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(AppError::PayloadTooLarge(MAX_BODY));
        }
        body.extend_from_slice(&chunk);
    }
    let creds: Credentials = if json {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("invalid JSON: {e}")))?
    } else {
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| AppError::BadRequest(format!("invalid form: {e}")))?
    };
    if creds.username.is_empty()
        || creds.username.len() > MAX_USERNAME
        || creds.username.chars().any(char::is_control)
    {
        return Err(AppError::BadRequest(format!(
            "username must be 1 to {MAX_USERNAME} bytes without control characters"
        )));
    }
    if creds.password.is_empty() || creds.password.len() > MAX_PASSWORD {
        return Err(AppError::BadRequest(format!(
            "password must be 1 to {MAX_PASSWORD} bytes"
        )));
    }
    Ok(creds)
}

fn retry_after(c: crate::session::Counter) -> AppError {
    AppError::TooManyRequests {
        retry_after: c.resets_in.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// The client's network for the throttle: an IPv4 address, or the /64 of an IPv6 one (a host
/// usually has a whole /64, and could otherwise rotate through it).
fn client_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Refuses a state-changing request that a browser says comes from another site (login CSRF:
/// a page elsewhere posting a form that signs the victim in as the attacker). Browsers send
/// `Sec-Fetch-Site`; older ones `Origin`, compared with `Host`. A request with neither (curl,
/// programs) is not a browser's cross-site request.
fn check_same_site(req: &HttpRequest) -> Result<(), AppError> {
    const REFUSED: &str = "cross-site request refused";
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return match site {
            "same-origin" | "same-site" | "none" => Ok(()),
            _ => Err(AppError::Forbidden(REFUSED)),
        };
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or("");
        let origin_host = origin
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .trim_end_matches('/');
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(AppError::Forbidden(REFUSED));
        }
    }
    Ok(())
}

/// `POST /login`: JSON for programs; a form post gets a redirect back to the page.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    session: Session,
    state: web::Data<DemoState>,
    thread: web::Data<ThreadStore>,
) -> Result<HttpResponse, AppError> {
    if page::is_form(&req) {
        let page_state = state.clone();
        let result = login_checked(req.clone(), payload, session, state, thread).await;
        return Ok(page::back_to_page(&req, &page_state, result));
    }
    login_checked(req, payload, session, state, thread).await
}

async fn login_checked(
    req: HttpRequest,
    payload: web::Payload,
    session: Session,
    state: web::Data<DemoState>,
    thread: web::Data<ThreadStore>,
) -> Result<HttpResponse, AppError> {
    check_same_site(&req)?;
    let creds = read_credentials(&req, payload).await?;
    let store = &thread.store;
    let net = req
        .peer_addr()
        .map_or_else(|| "unknown".into(), |a| client_network(a.ip()));
    let pair = format!("pair:{net}:{}", creds.username);
    let names = [
        pair.clone(),
        format!("user:{}", creds.username),
        format!("addr:{net}"),
    ];
    let limits = [PAIR_FAILURE_LIMIT, USER_FAILURE_LIMIT, ADDR_FAILURE_LIMIT];
    // A place in the hashing pool first: a login the pool would shed is answered without
    // touching the store.
    use crate::scoreboard::count_login;
    // Outcomes, by LOGIN_OUTCOMES: 0 ok, 1 failed, 2 throttled, 3 shed.
    let place = state.hasher.place().map_err(|hasher::Busy| {
        count_login(3);
        AppError::Busy
    })?;
    // The attempt is counted before the password is checked, atomically in the shared store: of
    // any number of concurrent guesses, at most the limit get as far as argon2. A refused
    // attempt counts nothing, so guesses that were refused lock nobody out further.
    let counts = match store.reserve(&names, &limits, FAILURE_WINDOW).await? {
        Reservation::Taken(counts) => counts,
        Reservation::Refused(at_limit) => {
            count_login(2);
            return Err(retry_after(at_limit));
        }
    };
    let users = Arc::clone(&state.users);
    let name = creds.username.clone();
    let ok = match place
        .run(move || users.verify(&name, &creds.password))
        .await
    {
        Ok(ok) => ok,
        Err(hasher::Busy) => {
            count_login(3);
            store.release(&names).await?;
            return Err(AppError::Busy);
        }
    };
    if !ok {
        count_login(1);
        tracing::info!(user = %creds.username, failures = counts[0].count, "failed login");
        return Err(AppError::Unauthorized("invalid username or password"));
    }
    // Success: this network's failures for the user are forgotten; the attempt is given back
    // to the looser counters.
    count_login(0);
    store.clear_counter(&pair).await?;
    store.release(&names[1..]).await?;
    // A new id at login: a session id planted before login is worthless after it.
    session.renew();
    session
        .insert("user", &creds.username)
        .and_then(|()| session.insert("login_at", unix_now()))
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": creds.username,
        "worker_pid": state.worker.pid,
        "worker_id": state.worker.id,
    })))
}

async fn me(session: Session, state: web::Data<DemoState>) -> Result<HttpResponse, AppError> {
    let user = session.get::<String>("user").ok().flatten();
    let login_at = session.get::<u64>("login_at").ok().flatten();
    let (Some(user), Some(login_at)) = (user, login_at) else {
        return Err(AppError::Unauthorized("not logged in"));
    };
    if unix_now().saturating_sub(login_at) >= state.session.max_lifetime.as_secs() {
        session.purge();
        return Err(AppError::Unauthorized("session expired; log in again"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": user,
        "worker_pid": state.worker.pid,
        "worker_id": state.worker.id,
    })))
}

async fn logout(
    req: HttpRequest,
    session: Session,
    state: web::Data<DemoState>,
) -> Result<HttpResponse, AppError> {
    let result = check_same_site(&req).map(|()| {
        // purge deletes the record in the store and expires the cookie.
        session.purge();
        HttpResponse::Ok().json(serde_json::json!({ "status": "logged out" }))
    });
    if page::is_form(&req) {
        return Ok(page::back_to_page(&req, &state, result));
    }
    result
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

/// The routes tested in-process with `actix_web::test`: no fork, no socket. The integration
/// tests cover the same routes through the real binary and every worker.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use actix_web::{App, test};

    use super::*;
    use crate::config::{Args, Config};
    use crate::worker::MasterLink;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("clusterd-app-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn state(dir: &TempDir) -> DemoState {
        let args = Args {
            data_dir: Some(dir.0.clone()),
            ..Args::default()
        };
        let config = Config::load(&args, None).unwrap();
        SqliteStore::initialize(&dir.0).unwrap();
        let app = DemoApp {
            session: config.session,
            key: Key::generate(),
            users: Arc::new(Users::load(None).unwrap()),
            hash_threads: 1,
        };
        let info = WorkerInfo {
            id: 3,
            slot: 0,
            pid: 4711,
            link: MasterLink::detached(),
        };
        app.init(&info).await.unwrap()
    }

    fn login(body: &str) -> test::TestRequest {
        test::TestRequest::post()
            .uri("/login")
            .insert_header(("content-type", "application/json"))
            .set_payload(body.to_string())
    }

    #[actix_web::test]
    async fn healthz_names_the_worker_and_the_store() {
        let dir = TempDir::new("healthz");
        let s = state(&dir).await;
        let app = test::init_service(App::new().configure(|c| DemoApp::configure(&s, c))).await;
        let body: serde_json::Value = test::call_and_read_body_json(
            &app,
            test::TestRequest::get().uri("/healthz").to_request(),
        )
        .await;
        assert_eq!(body["status"], "ok");
        assert_eq!(body["worker_id"], 3);
        assert_eq!(body["worker_pid"], 4711);
        assert_eq!(body["store"]["kind"], "sqlite");
    }

    #[actix_web::test]
    async fn login_me_logout() {
        let dir = TempDir::new("flow");
        let s = state(&dir).await;
        let app = test::init_service(App::new().configure(|c| DemoApp::configure(&s, c))).await;

        let anonymous =
            test::call_service(&app, test::TestRequest::get().uri("/me").to_request()).await;
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

        let res = test::call_service(
            &app,
            login(r#"{"username":"alice","password":"wonderland"}"#).to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let cookie = res
            .response()
            .cookies()
            .find(|c| c.name() == "clusterd_session")
            .unwrap()
            .into_owned();
        assert!(cookie.http_only().unwrap_or(false) && cookie.secure().unwrap_or(false));

        let me = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/me")
                .cookie(cookie.clone())
                .to_request(),
        )
        .await;
        assert_eq!(me.status(), StatusCode::OK);
        let body: serde_json::Value = test::read_body_json(me).await;
        assert_eq!(body["user"], "alice");

        let out = test::call_service(
            &app,
            test::TestRequest::post()
                .uri("/logout")
                .cookie(cookie.clone())
                .to_request(),
        )
        .await;
        assert_eq!(out.status(), StatusCode::OK);
        let after = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/me")
                .cookie(cookie)
                .to_request(),
        )
        .await;
        assert_eq!(
            after.status(),
            StatusCode::UNAUTHORIZED,
            "logout deleted the stored session"
        );
    }

    #[actix_web::test]
    async fn bad_logins_are_4xx_json() {
        let dir = TempDir::new("bad");
        let s = state(&dir).await;
        let app = test::init_service(App::new().configure(|c| DemoApp::configure(&s, c))).await;
        let cases = [
            (login("{"), StatusCode::BAD_REQUEST),
            (
                login(&format!(
                    r#"{{"username":"{}","password":"x"}}"#,
                    "u".repeat(65)
                )),
                StatusCode::BAD_REQUEST,
            ),
            (
                login(&" ".repeat(MAX_BODY + 1)),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                login(r#"{"username":"alice","password":"no"}"#),
                StatusCode::UNAUTHORIZED,
            ),
            (
                test::TestRequest::post().uri("/login").set_payload("x"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                test::TestRequest::get().uri("/login"),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (test::TestRequest::get().uri("/nope"), StatusCode::NOT_FOUND),
        ];
        for (req, want) in cases {
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), want);
            let body: serde_json::Value = test::read_body_json(res).await;
            assert!(body["error"].is_string(), "{body}");
        }
    }
}
