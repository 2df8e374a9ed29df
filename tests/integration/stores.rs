//! `clusterd::session`'s Redis and SQLite stores as plain actix-session stores, in an app of
//! the test's own with no master: actix-session's store acceptance suite (its
//! `test_helpers::acceptance_test_suite`, ported step for step from `actix_test` + `awc` to
//! real HTTP on loopback), and the TTL the middleware hands over as the only TTL.

use std::net::SocketAddr;
use std::time::Duration;

use actix_session::config::{CookieContentSecurity, PersistentSession, TtlExtensionPolicy};
use actix_session::storage::SessionStore;
use actix_session::{Session, SessionExt, SessionMiddleware};
use actix_web::cookie::{Cookie, Key, time};
use actix_web::web::{self, get, post, resource};
use actix_web::{App, HttpResponse, HttpServer};
use clusterd::session::redis::RedisStore;
use clusterd::session::sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use crate::harness::*;

/// How the session middleware of a test server is set up.
#[derive(Clone)]
struct Setup {
    name: &'static str,
    path: &'static str,
    ttl: time::Duration,
    every_request: bool,
    policy: CookieContentSecurity,
}

impl Setup {
    fn new(name: &'static str, ttl: time::Duration, policy: CookieContentSecurity) -> Self {
        Setup {
            name,
            path: "/",
            ttl,
            every_request: false,
            policy,
        }
    }
}

/// A real actix-web server on a loopback port, in a thread of its own with its own runtime.
struct Srv {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Srv {
    fn drop(&mut self) {
        actix_web::rt::System::new().block_on(self.handle.stop(false));
    }
}

fn start<S, F>(store: F, s: Setup) -> Srv
where
    S: SessionStore + 'static,
    F: Fn() -> S + Clone + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let key = Key::generate();
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let mut life = PersistentSession::default().session_ttl(s.ttl);
                if s.every_request {
                    life = life.session_ttl_extension_policy(TtlExtensionPolicy::OnEveryRequest);
                }
                App::new()
                    .wrap(
                        SessionMiddleware::builder(store(), key.clone())
                            .cookie_name(s.name.into())
                            .cookie_path(s.path.into())
                            .cookie_secure(false)
                            .cookie_content_security(s.policy)
                            .session_lifecycle(life)
                            .build(),
                    )
                    .service(resource("/").route(get().to(index)))
                    .service(resource("/set100").to(|ses: Session| async move {
                        let _ = ses.insert("counter", 100);
                        "test"
                    }))
                    .service(resource("/test/").to(|ses: Session| async move {
                        match ses.get::<usize>("counter").unwrap() {
                            Some(val) => format!("counter: {val}"),
                            None => "no-changes-in-session".to_string(),
                        }
                    }))
                    .service(resource("/do_something").route(post().to(do_something)))
                    .service(resource("/login").route(post().to(login)))
                    .service(resource("/logout").route(post().to(logout)))
                    .service(
                        web::scope("/protected")
                            .guard(actix_web::guard::fn_guard(|g| {
                                g.get_session().get::<String>("user_id").unwrap().is_some()
                            }))
                            .service(resource("/count").route(get().to(count))),
                    )
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).unwrap();
            server.await
        })
    });
    let (addr, handle) = rx.recv().unwrap();
    Srv { addr, handle }
}

/// An answer: status, the cookies it sets, its body.
struct Resp {
    status: u16,
    cookies: Vec<Cookie<'static>>,
    body: Vec<u8>,
}

impl Resp {
    fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.cookies.iter().find(|c| c.name() == name).cloned()
    }

    fn json(&self) -> IndexResponse {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Srv {
    fn send(&self, method: &str, path: &str, cookie: Option<&Cookie>, json: Option<&str>) -> Resp {
        let pair = cookie.map(|c| format!("{}={}", c.name(), c.value()));
        let mut headers = vec![("host", "localhost")];
        if let Some(p) = &pair {
            headers.push(("cookie", p));
        }
        if json.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = json.unwrap_or("").as_bytes();
        let r = request(self.addr, method, path, &headers, body).unwrap();
        Resp {
            status: r.status,
            cookies: r
                .headers_named("set-cookie")
                .into_iter()
                .map(|h| Cookie::parse(h.to_string()).unwrap())
                .collect(),
            body: r.body,
        }
    }
    fn get(&self, path: &str, cookie: Option<&Cookie>) -> Resp {
        self.send("GET", path, cookie, None)
    }
    fn post(&self, path: &str, cookie: Option<&Cookie>, json: Option<&str>) -> Resp {
        self.send("POST", path, cookie, json)
    }
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IndexResponse {
    user_id: Option<String>,
    counter: i32,
}

fn ir(user_id: Option<&str>, counter: i32) -> IndexResponse {
    IndexResponse {
        user_id: user_id.map(Into::into),
        counter,
    }
}

async fn index(session: Session) -> actix_web::Result<HttpResponse> {
    let user_id: Option<String> = session.get::<String>("user_id").unwrap();
    let counter: i32 = session
        .get::<i32>("counter")
        .unwrap_or(Some(0))
        .unwrap_or(0);
    Ok(HttpResponse::Ok().json(&IndexResponse { user_id, counter }))
}

async fn do_something(session: Session) -> actix_web::Result<HttpResponse> {
    let user_id: Option<String> = session.get::<String>("user_id").unwrap();
    let counter: i32 = session
        .get::<i32>("counter")
        .unwrap_or(Some(0))
        .map_or(1, |inner| inner + 1);
    session.insert("counter", counter)?;
    Ok(HttpResponse::Ok().json(&IndexResponse { user_id, counter }))
}

async fn count(session: Session) -> actix_web::Result<HttpResponse> {
    let user_id: Option<String> = session.get::<String>("user_id").unwrap();
    let counter: i32 = session.get::<i32>("counter").unwrap().unwrap();
    Ok(HttpResponse::Ok().json(&IndexResponse { user_id, counter }))
}

#[derive(Deserialize)]
struct Identity {
    user_id: String,
}

async fn login(user_id: web::Json<Identity>, session: Session) -> actix_web::Result<HttpResponse> {
    let id = user_id.into_inner().user_id;
    session.insert("user_id", &id)?;
    session.renew();
    let counter: i32 = session
        .get::<i32>("counter")
        .unwrap_or(Some(0))
        .unwrap_or(0);
    Ok(HttpResponse::Ok().json(&IndexResponse {
        user_id: Some(id),
        counter,
    }))
}

async fn logout(session: Session) -> actix_web::Result<HttpResponse> {
    let id: Option<String> = session.get("user_id")?;
    let body = if let Some(id) = id {
        session.purge();
        format!("Logged out: {id}")
    } else {
        "Could not log out anonymous user".to_owned()
    };
    Ok(HttpResponse::Ok().body(body))
}

/// actix-session's `acceptance_test_suite(store, true)`: both cookie policies, five workflows.
fn acceptance<S, F>(store: F)
where
    S: SessionStore + 'static,
    F: Fn() -> S + Clone + Send + 'static,
{
    for policy in [
        CookieContentSecurity::Signed,
        CookieContentSecurity::Private,
    ] {
        basic_workflow(store.clone(), policy);
        expiration_is_refreshed_on_changes(store.clone(), policy);
        expiration_is_always_refreshed_on_every_request_if_configured(store.clone(), policy);
        complex_workflow(store.clone(), policy);
        guard(store.clone(), policy);
    }
}

fn basic_workflow<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
    policy: CookieContentSecurity,
) {
    let mut setup = Setup::new("actix-test", time::Duration::seconds(100), policy);
    setup.path = "/test/";
    let srv = start(store, setup);
    let cookie = srv.get("/set100", None).cookie("actix-test").unwrap();
    assert_eq!(cookie.path().unwrap(), "/test/");
    assert_eq!(srv.get("/test/", Some(&cookie)).body, b"counter: 100");
}

fn expiration_is_refreshed_on_changes<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
    policy: CookieContentSecurity,
) {
    let ttl = time::Duration::seconds(60);
    let srv = start(store, Setup::new("id", ttl, policy));
    let cookie_1 = srv
        .get("/set100", None)
        .cookie("id")
        .expect("Cookie is set");
    assert_eq!(cookie_1.max_age(), Some(ttl));
    // A request that reads without changing: no cookie.
    let r = srv.get("/", Some(&cookie_1));
    assert!(r.cookies.is_empty());
    let cookie_2 = srv
        .get("/set100", Some(&cookie_1))
        .cookie("id")
        .expect("Cookie is set");
    assert_eq!(cookie_2.max_age(), Some(ttl));
}

fn expiration_is_always_refreshed_on_every_request_if_configured<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
    policy: CookieContentSecurity,
) {
    let ttl = time::Duration::seconds(60);
    let mut setup = Setup::new("id", ttl, policy);
    setup.every_request = true;
    let srv = start(store, setup);
    let cookie_1 = srv
        .get("/set100", None)
        .cookie("id")
        .expect("Cookie is set");
    assert_eq!(cookie_1.max_age(), Some(ttl));
    let cookie_2 = srv
        .get("/", Some(&cookie_1))
        .cookie("id")
        .expect("Cookie is set");
    assert_eq!(cookie_2.max_age(), Some(ttl));
}

fn complex_workflow<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
    policy: CookieContentSecurity,
) {
    let ttl = time::Duration::days(7);
    let srv = start(store, Setup::new("test-session", ttl, policy));
    let name = "test-session";
    // 1: no session data, no cookie.
    let r1 = srv.get("/", None);
    assert!(r1.cookies.is_empty());
    assert_eq!(r1.json(), ir(None, 0));
    // 2: state {"counter": 1}, cookie #1.
    let r2 = srv.post("/do_something", None, None);
    assert_eq!(r2.json(), ir(None, 1));
    let cookie_1 = r2.cookie(name).unwrap();
    assert_eq!(cookie_1.max_age(), Some(ttl));
    // 3: read with #1, no new cookie.
    let r3 = srv.get("/", Some(&cookie_1));
    assert!(r3.cookies.is_empty());
    assert_eq!(r3.json(), ir(None, 1));
    // 4: change with #1: cookie #2.
    let r4 = srv.post("/do_something", Some(&cookie_1), None);
    assert_eq!(r4.json(), ir(None, 2));
    let cookie_2 = r4.cookie(name).unwrap();
    assert_eq!(cookie_2.max_age(), cookie_1.max_age());
    // 5: login with #2: renewed, cookie #3.
    let r5 = srv.post("/login", Some(&cookie_2), Some(r#"{"user_id":"ferris"}"#));
    let cookie_3 = r5.cookie(name).unwrap();
    assert_ne!(cookie_2.value(), cookie_3.value());
    assert_eq!(r5.json(), ir(Some("ferris"), 2));
    // 6 and 7.
    assert_eq!(srv.get("/", Some(&cookie_3)).json(), ir(Some("ferris"), 2));
    assert_eq!(
        srv.post("/do_something", Some(&cookie_3), None).json(),
        ir(Some("ferris"), 3)
    );
    // 8: the session #2 named was invalidated by the renewal.
    let r8 = srv.get("/", Some(&cookie_2));
    assert!(r8.cookies.is_empty());
    assert_eq!(r8.json(), ir(None, 0));
    // 9: logout with #3: the cookie is removed.
    let r9 = srv.post("/logout", Some(&cookie_3), None);
    let removal = r9.cookie(name).unwrap();
    assert_eq!(0, removal.max_age().map(|t| t.whole_seconds()).unwrap());
    assert_eq!("/", removal.path().unwrap());
    // 10: #3 is gone from the store.
    let r10 = srv.get("/", Some(&cookie_3));
    assert!(r10.cookies.is_empty());
    assert_eq!(r10.json(), ir(None, 0));
}

fn guard<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
    policy: CookieContentSecurity,
) {
    let srv = start(
        store,
        Setup::new("test-session", time::Duration::days(7), policy),
    );
    let name = "test-session";
    assert_ne!(srv.get("/protected/count", None).status, 200);
    let cookie_1 = srv
        .post("/login", None, Some(r#"{"user_id":"ferris"}"#))
        .cookie(name)
        .unwrap();
    let r3 = srv.post("/do_something", Some(&cookie_1), None);
    assert_eq!(r3.json(), ir(Some("ferris"), 1));
    let cookie_2 = r3.cookie(name).unwrap();
    let r4 = srv.get("/protected/count", Some(&cookie_2));
    assert_eq!(r4.json(), ir(Some("ferris"), 1));
}

/// Under `session_ttl(2 s)`: a session idle for 3.6 s is gone, one used every 0.9 s lives on
/// past 2 s (4 s here). "Used" as each policy renews: any request with `OnEveryRequest`, a
/// request that changes the state with the default `OnStateChanges` (a read alone renews
/// nothing there, with actix-session's own stores too).
fn the_middlewares_ttl_is_the_only_ttl<S: SessionStore + 'static>(
    store: impl Fn() -> S + Clone + Send + 'static,
) {
    for every_request in [true, false] {
        let mut setup = Setup::new(
            "s",
            time::Duration::seconds(2),
            CookieContentSecurity::Private,
        );
        setup.every_request = every_request;
        let srv = start(store.clone(), setup);
        let idle = srv.get("/set100", None).cookie("s").unwrap();
        let mut used = srv.post("/do_something", None, None).cookie("s").unwrap();
        for n in 2..6 {
            std::thread::sleep(Duration::from_millis(900));
            let r = if every_request {
                srv.get("/", Some(&used))
            } else {
                srv.post("/do_something", Some(&used), None)
            };
            assert_eq!(
                r.json().counter,
                if every_request { 1 } else { n },
                "used every second"
            );
            if let Some(c) = r.cookie("s") {
                used = c;
            }
        }
        assert_eq!(
            srv.get("/test/", Some(&idle)).body,
            b"no-changes-in-session",
            "idle for 3.6 s"
        );
    }
}

/// The embedded store, with a read cache of `cache` sessions per server thread (0: none).
fn sqlite(tag: &str, cache: usize) -> (TempDir, impl Fn() -> SqliteStore + Clone + Send + 'static) {
    let dir = TempDir::new(tag);
    SqliteStore::initialize(dir.path()).unwrap();
    let path = dir.path().to_path_buf();
    (dir, move || {
        SqliteStore::open(&path).unwrap().with_cache(cache, None)
    })
}

/// The Redis store, with a read cache of `cache` sessions per server thread (0: none).
fn redis(r: &Redis, cache: usize) -> impl Fn() -> RedisStore + Clone + Send + 'static {
    let url = r.url();
    move || {
        RedisStore::new(&url, "test:", 0)
            .unwrap()
            .with_cache(cache, None)
    }
}

#[test]
fn the_sqlite_store_passes_actix_sessions_acceptance_suite_cached_or_not() {
    for cache in [0, 100] {
        let (_dir, store) = sqlite("acceptance-sqlite", cache);
        acceptance(store);
    }
}

#[test]
fn the_redis_store_passes_actix_sessions_acceptance_suite_cached_or_not() {
    let r = Redis::start();
    for cache in [0, 100] {
        acceptance(redis(&r, cache));
    }
}

#[test]
fn both_stores_keep_a_session_for_the_middlewares_ttl_only_cached_or_not() {
    let r = Redis::start();
    for cache in [0, 100] {
        let (_dir, store) = sqlite("ttl-sqlite", cache);
        the_middlewares_ttl_is_the_only_ttl(store);
        the_middlewares_ttl_is_the_only_ttl(redis(&r, cache));
    }
}

/// A write to a session that another worker deleted (a logout) since this request read it is
/// dropped: storing it under a new id would sign the user who just logged out in again.
async fn an_update_does_not_bring_a_deleted_session_back(store: impl SessionStore) {
    let ttl = time::Duration::seconds(60);
    let state: std::collections::HashMap<String, String> =
        [("user".to_string(), "\"alice\"".to_string())].into();
    let key = store.save(state.clone(), &ttl).await.unwrap();
    let id = key.as_ref().to_string();
    store.delete(&key).await.unwrap();
    let after = store.update(key, state, &ttl).await.unwrap();
    assert_eq!(after.as_ref(), id, "no new session");
    assert_eq!(store.load(&after).await.unwrap(), None, "still logged out");
}

#[test]
fn both_stores_let_a_logout_win_over_a_concurrent_write() {
    let r = Redis::start();
    let (_dir, sqlite) = sqlite("deleted-sqlite", 0);
    let redis = redis(&r, 0);
    actix_web::rt::System::new().block_on(async move {
        an_update_does_not_bring_a_deleted_session_back(sqlite()).await;
        an_update_does_not_bring_a_deleted_session_back(redis()).await;
    });
}
