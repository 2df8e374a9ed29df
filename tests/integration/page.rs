//! The demo page at `/` over plain HTTP (the browser tests drive it in Chromium): a browser's
//! form post signs in and redirects back, the page names the user and the worker, a failure is
//! the form again under a 4xx, and a plain-HTTP address that is not localhost gets a note about
//! the `Secure` cookie.

use crate::harness::*;

/// A browser's form post: form-encoded, accepting HTML, from the page's own origin.
fn form(c: &Clusterd, path: &str, body: &str, cookie: Option<&str>) -> Response {
    let host = format!("127.0.0.1:{}", c.port);
    let origin = format!("http://{host}");
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("origin", origin.as_str()),
        ("host", host.as_str()),
    ];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    request(c.addr, "POST", path, &headers, body.as_bytes()).unwrap()
}

#[test]
fn the_page_signs_in_through_its_form_and_out_again() {
    let c = Clusterd::start(Opts::default().workers(2));
    let page = c.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(
        html.contains("name=\"username\"") && html.contains("name=\"password\""),
        "{html}"
    );
    assert!(
        !html.contains("id=\"insecure\""),
        "loopback keeps Secure cookies: {html}"
    );

    let r = form(&c, "/login", "username=alice&password=wonderland", None);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.cookie().expect("the session cookie with the redirect");
    for _ in 0..6 {
        let page = request(c.addr, "GET", "/", &[("cookie", &cookie)], b"").unwrap();
        let html = page.text();
        assert!(
            html.contains("Signed in as <span id=\"user\">alice</span>"),
            "{html}"
        );
        let pid = html
            .split("<span id=\"pid\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .and_then(|s| s.parse::<i32>().ok())
            .expect("the worker pid on the page");
        assert!(c.workers().contains(&pid), "{pid}");
    }
    let r = form(&c, "/logout", "", Some(&cookie));
    assert_eq!(r.status, 303);
    let after = request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(after.status, 401, "logged out on every worker");

    // A failure is the form again with the reason, under the status a program would get.
    let r = form(&c, "/login", "username=alice&password=nope", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(
        html.contains("Wrong user name or password") && html.contains("name=\"username\""),
        "{html}"
    );
    let r = form(&c, "/login", "username=alice", None);
    assert_eq!(r.status, 400, "a malformed form is still a 4xx");
    // curl posts forms too (Accept: */*): it keeps getting JSON.
    let r = request(
        c.addr,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"username=alice&password=wonderland",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"], "alice");
}

#[test]
fn a_plain_http_address_that_is_not_localhost_is_warned_about() {
    let c = Clusterd::start(Opts::default().workers(1));
    let html = request(c.addr, "GET", "/", &[("host", "shop.example:8080")], b"")
        .unwrap()
        .text();
    assert!(html.contains("id=\"insecure\""), "{html}");
    let html = request(c.addr, "GET", "/", &[("host", "localhost:8080")], b"")
        .unwrap()
        .text();
    assert!(!html.contains("id=\"insecure\""), "{html}");
}
