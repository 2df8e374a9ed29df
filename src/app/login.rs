//! Logging in and out, and the protected route: reading credentials, the throttle, the
//! same-site check. Runs in workers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::session::web::Session;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::session::{RENEW_GRANULARITY, Reservation};
use error::AppError;

use super::*;

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
/// A login refused by a counter (most often the user's, which counts failures from every
/// network): if this network has no failure for this user in the window, the right password
/// from here must still work, or 50 guesses from anywhere lock the user out. Such attempts are
/// counted per wider network (an IPv6 /48, an IPv4 /24) and user, at most
/// [`PAIR_FAILURE_LIMIT`], so a guesser with many small networks gets no more than that.
/// `Some` with the counts and the names counted when the attempt may go on.
async fn fresh_network(
    store: &Store,
    pair: &str,
    net: &str,
    creds: &Credentials,
) -> Result<Option<(Vec<crate::session::Counter>, Vec<String>)>, AppError> {
    let names = vec![
        pair.to_string(),
        format!("addr:{net}"),
        format!("fresh:{}:{}", wide_network(net), creds.username),
    ];
    let limits = [PAIR_FAILURE_LIMIT, ADDR_FAILURE_LIMIT, PAIR_FAILURE_LIMIT];
    match store.reserve(&names, &limits, FAILURE_WINDOW).await? {
        Reservation::Taken(counts) if counts[0].count == 1 => Ok(Some((counts, names))),
        Reservation::Taken(_) => {
            store.release(&names).await?;
            Ok(None)
        }
        Reservation::Refused(_) => Ok(None),
    }
}

/// The wider network a [`client_network`] belongs to: an IPv6 /48, an IPv4 /24.
fn wide_network(net: &str) -> String {
    if net.contains(':') {
        net.split(':').take(3).collect::<Vec<_>>().join(":") + "::/48"
    } else {
        let mut octets: Vec<&str> = net.split('.').take(3).collect();
        octets.push("0/24");
        octets.join(".")
    }
}

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
pub(super) async fn login(
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
    let client = crate::worker::client_addr(&req);
    let net = client.map_or_else(|| "unknown".into(), client_network);
    let pair = format!("pair:{net}:{}", creds.username);
    let names = [
        pair.clone(),
        format!("user:{}", creds.username),
        format!("addr:{net}"),
    ];
    let limits = [PAIR_FAILURE_LIMIT, USER_FAILURE_LIMIT, ADDR_FAILURE_LIMIT];
    // A place in the hashing pool first: a login the pool would shed is answered without
    // touching the store.
    use super::metrics::login as count_login;
    // Outcomes, by LOGIN_OUTCOMES: 0 ok, 1 failed, 2 throttled, 3 shed.
    let place = state.hasher.place().map_err(|hasher::Busy| {
        count_login(3);
        AppError::Busy
    })?;
    // The attempt is counted before the password is checked, atomically in the shared store: of
    // any number of concurrent guesses, at most the limit get as far as argon2. A refused
    // attempt counts nothing, so guesses that were refused lock nobody out further.
    let (counts, names) = match store.reserve(&names, &limits, FAILURE_WINDOW).await? {
        Reservation::Taken(counts) => (counts, names.to_vec()),
        Reservation::Refused(at_limit) => match fresh_network(store, &pair, &net, &creds).await? {
            Some(taken) => taken,
            None => {
                count_login(2);
                return Err(retry_after(at_limit));
            }
        },
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
        tracing::info!(user = %creds.username, client = %net, failures = counts[0].count, "failed login");
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
    keep_alive(&session, &state);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": creds.username,
        "worker_pid": state.worker.pid,
        "worker_id": state.worker.id,
    })))
}

pub(super) async fn me(
    session: Session,
    state: web::Data<DemoState>,
) -> Result<HttpResponse, AppError> {
    let user = session.get::<String>("user").ok().flatten();
    let login_at = session.get::<u64>("login_at").ok().flatten();
    let (Some(user), Some(login_at)) = (user, login_at) else {
        return Err(AppError::Unauthorized("not logged in"));
    };
    if unix_now().saturating_sub(login_at) >= state.session.max_lifetime.as_secs() {
        session.purge();
        return Err(AppError::Unauthorized("session expired; log in again"));
    }
    keep_alive(&session, &state);
    Ok(HttpResponse::Ok().json(Me {
        user,
        worker_id: state.worker.id,
        worker_pid: state.worker.pid,
    }))
}

/// `GET /me`'s answer (fields in the order `json!` would sort them).
#[derive(serde::Serialize)]
struct Me {
    user: String,
    worker_id: u64,
    worker_pid: u32,
}

/// Renews a signed-in session's idle timeout about once per 1/[`RENEW_GRANULARITY`] of it, by a
/// state change: the session middleware then writes the session with a fresh TTL and sends the
/// cookie again with a fresh `Max-Age`. Between renewals a signed-in request writes nothing and
/// sets no cookie, which is what lets the session cache answer it alone. A session then expires
/// between 29/30 of the idle timeout and all of it after its last use.
///
/// A renewal costs the store a write and every worker holding the session a read (the write
/// invalidates their copies), so three things keep renewals apart:
/// - each renewal picks the moment of the next one at random between half and all of the
///   interval (`renew_at`, in milliseconds, in the session, so every worker agrees): sessions
///   that signed in together, as a burst of logins or a load test does, renew at different
///   moments, not all in the same second;
/// - the workers take turns ([`TURNS`] of them by slot, up to half a second apart): the first
///   to see a session due renews it, and the others, seeing the renewed state by their turn,
///   do not write it again;
/// - the requests of one session that a server thread serves while that session's renewal is
///   being written still read the state before it; the first renews, the others leave it to
///   that one for one turn, after which a renewal that did not land is tried again.
pub(super) fn keep_alive(session: &Session, state: &DemoState) {
    let every =
        (state.session.idle_timeout.as_millis() as u64 / u64::from(RENEW_GRANULARITY)).max(1_000);
    let now = unix_now_ms();
    // Sessions written before `renew_at` existed carry the second of their last renewal
    // (`renewed_at`): due one interval after it, and renewed in turns like the others.
    let renew_at = session.get::<u64>("renew_at").ok().flatten().or_else(|| {
        let renewed = session.get::<u64>("renewed_at").ok().flatten()?;
        Some(renewed.saturating_mul(1_000).saturating_add(every))
    });
    let turn = (state.worker.slot as u64 % TURNS) * turn_step(every);
    if !renewal_due(now, renew_at.map(|at| at + turn), every) {
        return;
    }
    if let (Some(at), Ok(Some(user))) = (renew_at, session.get::<String>("user")) {
        let login_at = session.get::<u64>("login_at").ok().flatten().unwrap_or(0);
        let hold = Duration::from_millis(turn_step(every));
        if !RENEWALS.with(|claims| claims.borrow_mut().claim((user, login_at, at), hold)) {
            return;
        }
    }
    let next = next_renewal(now, every, &mut rand::rng());
    session.remove("renewed_at");
    let _ = session.insert("renew_at", next);
}

/// Renewal turns: workers whose slots differ by less than this renew a due session at
/// different moments.
const TURNS: u64 = 4;

/// How far apart the turns are, and how long a server thread leaves a session's renewal to the
/// request that started it: long enough for a renewal's write to reach the other workers'
/// caches, short against the renewal interval `every` (milliseconds).
fn turn_step(every: u64) -> u64 {
    (every / 16).min(500)
}

/// Claims kept at most by one server thread (more are forgotten, which costs duplicate writes).
const RENEWAL_CLAIMS_KEPT: usize = 4096;

thread_local! {
    static RENEWALS: RefCell<Claims> = RefCell::new(Claims::default());
}

/// Renewals a server thread started recently, by the session they renew: its user, login time
/// and the `renew_at` the renewal replaces (random to the millisecond, so two sessions share it
/// by chance only, and then one renews a turn later).
#[derive(Default)]
struct Claims(HashMap<(String, u64, u64), Instant>);

impl Claims {
    /// Whether this request renews the session (no other did in the last `hold`).
    fn claim(&mut self, session: (String, u64, u64), hold: Duration) -> bool {
        let now = Instant::now();
        if self.0.get(&session).is_some_and(|at| now < *at + hold) {
            return false;
        }
        if self.0.len() >= RENEWAL_CLAIMS_KEPT {
            self.0.retain(|_, at| now < *at + hold);
            if self.0.len() >= RENEWAL_CLAIMS_KEPT {
                self.0.clear();
            }
        }
        self.0.insert(session, now);
        true
    }
}

/// Whether a session whose next renewal is due at `renew_at` (unknown: a fresh session, or one
/// from an older build) renews at `now`, renewals coming `every` apart at most (milliseconds).
/// A moment further ahead than that means the clock went back: renewing now keeps the session
/// alive.
fn renewal_due(now: u64, renew_at: Option<u64>, every: u64) -> bool {
    renew_at.is_none_or(|at| now >= at || at > now + every)
}

/// When the session renewed at `now` renews next: from `every` / 2 on, and early enough that
/// the last turn, and a claim held by a request of another session that drew the same moment,
/// still come within `every`.
fn next_renewal(now: u64, every: u64, rng: &mut impl rand::Rng) -> u64 {
    let last = every - TURNS * turn_step(every);
    now + rng.random_range(every.div_ceil(2)..=last)
}

pub(super) async fn logout(
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

#[cfg(test)]
mod tests {
    use super::{Claims, next_renewal, renewal_due};
    use std::time::Duration;

    #[test]
    fn a_session_renews_when_its_moment_comes_or_it_has_none() {
        assert!(renewal_due(1_000, None, 60));
        assert!(!renewal_due(1_000, Some(1_001), 60));
        assert!(renewal_due(1_001, Some(1_001), 60));
        assert!(renewal_due(1_100, Some(1_001), 60));
        // Further ahead than one interval: the clock went back, renew rather than wait.
        assert!(!renewal_due(1_000, Some(1_060), 60));
        assert!(renewal_due(1_000, Some(1_061), 60));
    }

    #[test]
    fn sessions_renewed_together_next_renew_spread_over_the_second_half_of_the_interval() {
        let mut rng = rand::rng();
        let next: Vec<u64> = (0..1_000)
            .map(|_| next_renewal(1_000, 160, &mut rng))
            .collect();
        // Every 160 ms: turns 10 ms apart; the last of the 4 turns and a claim of another
        // session fit before 1,160.
        assert!(
            next.iter().all(|at| (1_080..=1_120).contains(at)),
            "{next:?}"
        );
        let distinct: std::collections::BTreeSet<_> = next.iter().collect();
        // 41 possible moments; 1,000 draws leave none out but by a broken generator.
        assert_eq!(distinct.len(), 41, "{distinct:?}");
        // A minute: turns half a second apart.
        let next: Vec<u64> = (0..1_000)
            .map(|_| next_renewal(0, 60_000, &mut rng))
            .collect();
        assert!(
            next.iter().all(|at| (30_000..=58_000).contains(at)),
            "{next:?}"
        );
        assert!(next.iter().any(|at| *at < 35_000) && next.iter().any(|at| *at > 53_000));
    }

    #[test]
    fn one_request_per_session_renews_until_its_claim_lapses() {
        let mut claims = Claims::default();
        let hold = Duration::from_millis(500);
        let session = |at: u64| ("alice".to_string(), 1_000, at);
        assert!(claims.claim(session(5_000), hold));
        assert!(!claims.claim(session(5_000), hold));
        // Another session (another renew_at) is not held up.
        assert!(claims.claim(session(5_001), hold));
        // A claim older than its hold no longer holds: that renewal did not land.
        let stale = claims.0.get_mut(&session(5_000)).unwrap();
        *stale -= hold;
        assert!(claims.claim(session(5_000), hold));
    }
}
