//! The routes tested in-process with `actix_web::test`: no fork, no socket. The integration
//! tests cover the same routes through the real binary and every worker.

use std::path::PathBuf;

use actix_web::http::StatusCode;
use actix_web::{App, test};

use super::*;
use crate::worker::MasterLink;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("clusterd-app-{tag}-{}", std::process::id()));
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
    SqliteStore::initialize(&dir.0).unwrap();
    let app = DemoApp {
        session: service::SessionConfig::new(service::tests::defaults(&[]), dir.0.clone()).unwrap(),
        key: Key::generate(),
        users: Arc::new(Users::load(None).unwrap()),
        hash_threads: 1,
    };
    let info = WorkerInfo {
        id: 3,
        slot: 0,
        pid: 4711,
        link: MasterLink::detached(),
        threads: 1,
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
async fn health_names_the_store() {
    let dir = TempDir::new("healthz");
    let s = state(&dir).await;
    let health = DemoApp::health(&s);
    assert!(!health.degraded);
    assert_eq!(health.details["store"]["kind"], "sqlite");
    assert_eq!(health.details["store"]["status"], "up");
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
