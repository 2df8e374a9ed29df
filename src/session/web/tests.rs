//! The middleware in-process (`actix_web::test`) over the real embedded store in a temporary
//! directory, next to actix-session's own middleware on the same store and key.

use std::path::PathBuf;

use actix_session::SessionMiddleware;
use actix_session::config::PersistentSession;
use actix_web::{App, HttpResponse, test, web};

use super::*;
use crate::session::sqlite::SqliteStore;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("clusterd-web-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SqliteStore::initialize(&dir).unwrap();
        TempDir(dir)
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.0).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TTL: Duration = Duration::from_secs(600);

fn ours(store: SqliteStore, key: &Key) -> Sessions<SqliteStore> {
    Sessions::new(store, key.clone(), CookieSettings::new("sid"), TTL, 16)
}

/// `GET /get`: the user or 401; `POST /set/{user}`; `POST /purge`; `POST /renew`.
macro_rules! routes {
    ($session:ty) => {
        |cfg: &mut web::ServiceConfig| {
            cfg.route(
                "/get",
                web::get().to(|s: $session| async move {
                    match s.get::<String>("user").unwrap() {
                        Some(u) => HttpResponse::Ok().body(u),
                        None => HttpResponse::Unauthorized().finish(),
                    }
                }),
            )
            .route(
                "/set/{user}",
                web::post().to(|s: $session, user: web::Path<String>| async move {
                    s.insert("user", user.into_inner()).unwrap();
                    HttpResponse::Ok().finish()
                }),
            )
            .route(
                "/purge",
                web::post().to(|s: $session| async move {
                    s.purge();
                    HttpResponse::Ok().finish()
                }),
            )
            .route(
                "/renew",
                web::post().to(|s: $session| async move {
                    s.renew();
                    HttpResponse::Ok().finish()
                }),
            );
        }
    };
}

fn set_cookie(res: &ServiceResponse<impl MessageBody>) -> Option<String> {
    res.headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_string())
}

/// The `name=value` part of a `Set-Cookie`.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// Session records in the store's file, read beside it.
async fn records(store: &SqliteStore) -> i64 {
    rusqlite::Connection::open(store.path())
        .unwrap()
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap()
}

#[actix_web::test]
async fn cookies_pass_both_ways_between_actix_session_and_this_middleware() {
    let dir = TempDir::new("compat");
    let key = Key::generate();
    let theirs = SessionMiddleware::builder(dir.store(), key.clone())
        .cookie_name("sid".into())
        .session_lifecycle(PersistentSession::default().session_ttl(CookieDuration::seconds(600)))
        .build();
    let a = test::init_service(
        App::new()
            .wrap(theirs)
            .configure(routes!(actix_session::Session)),
    )
    .await;
    let b = test::init_service(
        App::new()
            .wrap(ours(dir.store(), &key))
            .configure(routes!(Session)),
    )
    .await;

    let res =
        test::call_service(&a, test::TestRequest::post().uri("/set/alice").to_request()).await;
    let from_a = pair(&set_cookie(&res).unwrap());
    let res = test::call_service(
        &b,
        test::TestRequest::get()
            .uri("/get")
            .insert_header((COOKIE, from_a))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(test::read_body(res).await, "alice");

    let res = test::call_service(&b, test::TestRequest::post().uri("/set/bob").to_request()).await;
    let from_b = set_cookie(&res).unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(from_b.contains(attribute), "{attribute} in {from_b}");
    }
    let res = test::call_service(
        &a,
        test::TestRequest::get()
            .uri("/get")
            .insert_header((COOKIE, pair(&from_b)))
            .to_request(),
    )
    .await;
    assert_eq!(test::read_body(res).await, "bob");
}

#[actix_web::test]
async fn a_read_writes_nothing_and_each_change_does_what_actix_session_does() {
    let dir = TempDir::new("status");
    let key = Key::generate();
    let store = dir.store();
    let app = test::init_service(
        App::new()
            .wrap(ours(dir.store(), &key))
            .configure(routes!(Session)),
    )
    .await;
    let call = |method: &str, uri: &str, cookie: Option<&str>| {
        let mut req = match method {
            "GET" => test::TestRequest::get(),
            _ => test::TestRequest::post(),
        }
        .uri(uri);
        if let Some(c) = cookie {
            req = req.insert_header((COOKIE, c.to_string()));
        }
        test::call_service(&app, req.to_request())
    };

    // Anonymous and untouched: no record, no cookie.
    let res = call("GET", "/get", None).await;
    assert_eq!((res.status().as_u16(), set_cookie(&res)), (401, None));
    assert_eq!(records(&store).await, 0);

    let first = pair(&set_cookie(&call("POST", "/set/alice", None).await).unwrap());
    assert_eq!(records(&store).await, 1);
    for _ in 0..3 {
        let res = call("GET", "/get", Some(&first)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(set_cookie(&res), None, "a read sets no cookie");
    }

    // Renewed: the state moves to a new id; the old cookie names nothing.
    let second = pair(&set_cookie(&call("POST", "/renew", Some(&first)).await).unwrap());
    assert_ne!(first, second);
    assert_eq!(records(&store).await, 1);
    assert_eq!(call("GET", "/get", Some(&first)).await.status(), 401);
    let res = call("GET", "/get", Some(&second)).await;
    assert_eq!(test::read_body(res).await, "alice");

    // Purged: the record goes, the cookie is expired, the old value is anonymous.
    let res = call("POST", "/purge", Some(&second)).await;
    let removal = set_cookie(&res).unwrap();
    assert!(
        removal.starts_with("sid=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert_eq!(records(&store).await, 0);
    assert_eq!(call("GET", "/get", Some(&second)).await.status(), 401);
}

#[actix_web::test]
async fn tampered_or_foreign_cookies_are_anonymous_and_not_remembered() {
    let dir = TempDir::new("tamper");
    let key = Key::generate();
    let sessions = ours(dir.store(), &key);
    let app = test::init_service(
        App::new()
            .wrap(sessions.clone())
            .configure(routes!(Session)),
    )
    .await;
    let res = test::call_service(
        &app,
        test::TestRequest::post().uri("/set/alice").to_request(),
    )
    .await;
    let good = pair(&set_cookie(&res).unwrap());
    let value = good.strip_prefix("sid=").unwrap();
    let mut flipped = value.as_bytes().to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let foreign = {
        let other = ours(dir.store(), &Key::generate());
        let mut headers = HeaderMap::new();
        other
            .shared
            .set_cookie(&mut headers, SessionKey::try_from("x".repeat(64)).unwrap())
            .unwrap();
        pair(headers.get(SET_COOKIE).unwrap().to_str().unwrap())
    };
    let cases = [
        format!("sid={}", String::from_utf8(flipped).unwrap()),
        format!("sid={}", &value[..value.len() / 2]),
        "sid=".to_string(),
        "sid=%%%".to_string(),
        foreign,
        format!("sidx={value}"),
    ];
    for cookie in cases {
        let req = test::TestRequest::get()
            .uri("/get")
            .insert_header((COOKIE, cookie.clone()));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), 401, "{cookie}");
    }
    let remembered = || sessions.shared.memo.as_ref().unwrap().borrow().len();
    assert_eq!(remembered(), 0, "nothing that failed is remembered");
    for cookie in [
        good.clone(),
        format!("a=1; {good}; b=2"),
        format!("sidx=1;{good}"),
    ] {
        let req = test::TestRequest::get()
            .uri("/get")
            .insert_header((COOKIE, cookie.clone()));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), 200, "{cookie}");
    }
    assert_eq!(remembered(), 1);
}
