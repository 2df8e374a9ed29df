//! The demo's page at `/` for people with a browser: a login form, or who is signed in and which
//! worker served the page. Server-rendered HTML, no script, no external asset. The form posts to
//! the same `/login` and `/logout` as programs do; a form post is answered with a redirect back
//! to `/` instead of JSON. Runs in workers.

use crate::session::web::Session;
use actix_web::http::header::{CONTENT_TYPE, LOCATION};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use super::error::AppError;
use super::{DemoState, unix_now};

/// The request is a browser's HTML form post: form-encoded, from a client that accepts HTML.
/// (curl posts forms too, with `Accept: */*`; it keeps getting JSON.)
pub fn is_form(req: &HttpRequest) -> bool {
    let accepts_html = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    accepts_html
        && req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

/// A form post's answer: on success a redirect back to the page; on failure the page with the
/// form and the reason, under the status (and headers, e.g. `Retry-After`) a program would get.
pub fn back_to_page(
    req: &HttpRequest,
    state: &DemoState,
    result: Result<HttpResponse, AppError>,
) -> HttpResponse {
    // The session middleware adds the cookie (or its removal) to whatever is answered.
    let e = match result {
        Ok(_) => {
            return HttpResponse::SeeOther()
                .insert_header((LOCATION, "/"))
                .finish();
        }
        Err(e) => e,
    };
    let why = match e.status_code().as_u16() {
        401 => "Wrong user name or password.",
        429 => "Too many failed logins; wait a few minutes.",
        503 => "Too many logins at once; try again in a second.",
        403 => "The form was posted from another site.",
        408 => "The form did not arrive in time.",
        _ => "The form could not be read.",
    };
    let mut res = e.error_response();
    res.headers_mut().insert(
        CONTENT_TYPE,
        actix_web::http::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.set_body(actix_web::body::BoxBody::new(html(&login_form(
        req,
        state,
        Some(why),
    ))))
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Whether a browser keeps a `Secure` cookie from this address over plain HTTP: it does for
/// localhost and loopback addresses (they count as secure contexts), not for others.
fn secure_cookie_works(req: &HttpRequest) -> bool {
    let info = req.connection_info();
    if info.scheme() == "https" {
        return true;
    }
    let host = info.host();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}label{display:block;margin:.6rem 0 .2rem}input{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box}\
button{margin-top:1rem;font-size:1rem;padding:.4rem 1rem}.note{background:#fff4d6;padding:.6rem;border-radius:4px}\
.error{background:#fde2e2;padding:.6rem;border-radius:4px}dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem}dt{color:#666}";

/// `GET /`.
pub async fn index(
    req: HttpRequest,
    session: Session,
    state: web::Data<DemoState>,
) -> HttpResponse {
    let user = session.get::<String>("user").ok().flatten();
    let login_at = session.get::<u64>("login_at").ok().flatten();
    let worker = &state.worker;
    let body = match (user, login_at) {
        (Some(user), Some(at))
            if unix_now().saturating_sub(at) < state.session.max_lifetime.as_secs() =>
        {
            super::login::keep_alive(&session, &state);
            format!(
                "<h1>Signed in as <span id=\"user\">{}</span></h1>\
                 <dl><dt>served by</dt><dd>worker {} in slot {}, pid <span id=\"pid\">{}</span></dd>\
                 <dt>session age</dt><dd id=\"age\">{} s</dd></dl>\
                 <p>Reload: any worker may serve the page, and the session holds on each.</p>\
                 <form method=\"post\" action=\"/logout\"><button id=\"logout\" type=\"submit\">Log out</button></form>",
                esc(&user),
                worker.id,
                worker.slot,
                worker.pid,
                unix_now().saturating_sub(at),
            )
        }
        _ => login_form(&req, &state, None),
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(html(&body))
}

/// The login form, with an error above it if the last attempt failed.
fn login_form(req: &HttpRequest, state: &DemoState, error: Option<&str>) -> String {
    let worker = &state.worker;
    let mut body = String::new();
    if let Some(e) = error {
        body += &format!("<p class=\"error\" id=\"error\">{}</p>", esc(e));
    }
    if state.session.cookie_secure && !secure_cookie_works(req) {
        body += "<p class=\"note\" id=\"insecure\">This address is plain HTTP and not \
                 localhost, so your browser will drop the session cookie (it is \
                 <code>Secure</code>) and the login will not stick. Use HTTPS (a proxy in \
                 front of clusterd), open it as <code>http://localhost</code>, or run \
                 clusterd with <code>--cookie-secure false</code> on a trusted network.</p>";
    }
    body += &format!(
        "<h1>clusterd demo</h1>\
         <form method=\"post\" action=\"/login\">\
         <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button id=\"login\" type=\"submit\">Log in</button></form>\
         <p>Served by worker {} in slot {}, pid {}.</p>",
        worker.id, worker.slot, worker.pid
    );
    body
}

/// A whole page around `body`.
fn html(body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>clusterd</title><style>{STYLE}</style></head>\
         <body>{body}</body></html>"
    )
}
