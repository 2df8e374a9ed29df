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

/// actix-session's middleware, configured as [`ours`] is.
fn theirs(store: SqliteStore, key: &Key) -> SessionMiddleware<SqliteStore> {
    SessionMiddleware::builder(store, key.clone())
        .cookie_name("sid".into())
        .session_lifecycle(PersistentSession::default().session_ttl(CookieDuration::seconds(600)))
        .build()
}

/// The same routes behind actix-session's middleware (on `$a`'s store) and behind ours (on
/// `$b`'s), with one key.
macro_rules! both {
    ($a:expr, $b:expr) => {{
        let key = Key::generate();
        let theirs = test::init_service(
            App::new()
                .wrap(theirs($a.store(), &key))
                .configure(routes!(actix_session::Session)),
        )
        .await;
        let ours = test::init_service(
            App::new()
                .wrap(ours($b.store(), &key))
                .configure(routes!(Session)),
        )
        .await;
        (theirs, ours)
    }};
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
    let (a, b) = both!(dir, dir);

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

/// Runs SQL on the store's file behind the middleware's back.
fn sql(dir: &TempDir, statement: &str) {
    rusqlite::Connection::open(dir.store().path())
        .unwrap()
        .execute(statement, [])
        .unwrap();
}

/// One line per request of a fixed story: status, body, what `Set-Cookie` did, the records
/// in the store. Ids and nonces differ between runs, so they are left out.
async fn story<S, B>(app: &S, dir: &TempDir) -> Vec<String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let store = dir.store();
    let mut lines = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    let steps: [(&str, &str, Option<usize>, Option<&str>); 16] = [
        ("GET", "/get", None, None),
        ("POST", "/set/alice", None, None), // cookie 0
        ("GET", "/get", Some(0), None),
        ("GET", "/get", Some(0), None),
        ("POST", "/set/bob", Some(0), None), // cookie 1: the same id, a fresh Max-Age
        ("GET", "/get", Some(0), None),
        ("POST", "/renew", Some(1), None), // cookie 2: a new id
        ("GET", "/get", Some(1), None),
        ("GET", "/get", Some(2), Some("DELETE FROM sessions")),
        ("POST", "/set/carol", Some(2), None), // cookie 3: a new session
        (
            "GET",
            "/get",
            Some(3),
            Some("UPDATE sessions SET state = 'not json'"),
        ),
        ("POST", "/set/dave", Some(3), None), // cookie 4: the corrupt record rewritten
        ("GET", "/get", Some(3), None),
        ("POST", "/purge", Some(4), None),
        ("GET", "/get", Some(3), None),
        ("POST", "/purge", None, None),
    ];
    for (method, uri, cookie, before) in steps {
        if let Some(statement) = before {
            sql(dir, statement);
        }
        let mut req = match method {
            "GET" => test::TestRequest::get(),
            _ => test::TestRequest::post(),
        }
        .uri(uri);
        if let Some(i) = cookie {
            req = req.insert_header((COOKIE, cookies[i].clone()));
        }
        let res = test::call_service(app, req.to_request()).await;
        let status = res.status().as_u16();
        let set = set_cookie(&res);
        let body = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        let did = match &set {
            None => "no cookie".to_string(),
            Some(c) if c.contains("Max-Age=0") => "cookie expired".to_string(),
            Some(c) => {
                cookies.push(pair(c));
                let age = c
                    .split("; ")
                    .find(|a| a.starts_with("Max-Age"))
                    .unwrap_or("");
                format!("cookie set, {age}")
            }
        };
        lines.push(format!(
            "{method} {uri} -> {status} {body:?}, {did}, {} records",
            records(&store).await
        ));
    }
    lines
}

#[actix_web::test]
async fn every_change_does_what_actix_session_does() {
    let (da, db) = (TempDir::new("story-a"), TempDir::new("story-b"));
    let (a, b) = both!(da, db);
    let (theirs, ours) = (story(&a, &da).await, story(&b, &db).await);
    assert_eq!(theirs, ours);
    // And the story is the one intended, not two middlewares wrong in the same way.
    let expected = [
        "GET /get -> 401 \"\", no cookie, 0 records",
        "POST /set/alice -> 200 \"\", cookie set, Max-Age=600, 1 records",
        "GET /get -> 200 \"alice\", no cookie, 1 records",
        "GET /get -> 200 \"alice\", no cookie, 1 records",
        "POST /set/bob -> 200 \"\", cookie set, Max-Age=600, 1 records",
        "GET /get -> 200 \"bob\", no cookie, 1 records",
        "POST /renew -> 200 \"\", cookie set, Max-Age=600, 1 records",
        "GET /get -> 401 \"\", no cookie, 1 records",
        "GET /get -> 401 \"\", no cookie, 0 records",
        "POST /set/carol -> 200 \"\", cookie set, Max-Age=600, 1 records",
        "GET /get -> 401 \"\", no cookie, 1 records",
        "POST /set/dave -> 200 \"\", cookie set, Max-Age=600, 1 records",
        "GET /get -> 200 \"dave\", no cookie, 1 records",
        "POST /purge -> 200 \"\", cookie expired, 0 records",
        "GET /get -> 401 \"\", no cookie, 0 records",
        "POST /purge -> 200 \"\", no cookie, 0 records",
    ];
    assert_eq!(ours, expected);
}

/// The status of `GET /get` with each set of `Cookie` headers.
async fn statuses<S, B>(app: &S, cases: Vec<Vec<HeaderValue>>) -> Vec<u16>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let mut out = Vec::new();
    for case in cases {
        let mut req = test::TestRequest::get().uri("/get").to_request();
        for v in case {
            req.headers_mut().append(COOKIE, v);
        }
        out.push(test::call_service(app, req).await.status().as_u16());
    }
    out
}

#[actix_web::test]
async fn cookie_headers_are_read_as_actix_web_reads_them() {
    let (da, db) = (TempDir::new("headers-a"), TempDir::new("headers-b"));
    let (a, b) = both!(da, db);
    let login = |app_cookie: ServiceResponse| pair(&set_cookie(&app_cookie).unwrap());
    let ca = login(
        test::call_service(&a, test::TestRequest::post().uri("/set/alice").to_request()).await,
    );
    let cb = login(
        test::call_service(&b, test::TestRequest::post().uri("/set/alice").to_request()).await,
    );
    let value = |c: &str| c.strip_prefix("sid=").unwrap().to_string();
    let headers = |c: &str| -> Vec<Vec<HeaderValue>> {
        let v = value(c);
        let h = |s: String| HeaderValue::from_str(&s).unwrap();
        vec![
            vec![h(c.to_string())],
            vec![h(format!("a=1; {c}; b=2"))],
            vec![h(format!("sidx=1;{c}"))],
            vec![h(format!("sid=%FF; {c}"))],
            vec![h(format!("sid=garbage; {c}"))],
            vec![h(format!(" sid = {v} "))],
            vec![h(format!("si%64={v}"))],
            vec![h("lang=x".into()), h(c.to_string())],
            vec![
                HeaderValue::from_bytes(b"lang=fran\xc3\xa7ais").unwrap(),
                h(c.to_string()),
            ],
            vec![
                HeaderValue::from_bytes(b"lang=\xff").unwrap(),
                h(c.to_string()),
            ],
            vec![h(format!("{c}; sid=other"))],
            vec![h("garbage without equals".into()), h(c.to_string())],
        ]
    };
    let (theirs, ours) = (
        statuses(&a, headers(&ca)).await,
        statuses(&b, headers(&cb)).await,
    );
    assert_eq!(theirs, ours);
    assert_eq!(
        ours,
        [200, 200, 200, 200, 401, 200, 200, 200, 200, 401, 200, 200]
    );
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
