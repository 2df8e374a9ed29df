//! A session middleware for actix-web over any actix-session store, for read-mostly traffic.
//! Runs in the worker, one instance per server thread.
//!
//! It keeps actix-session's cookie (the session id sealed with the cookie key by the `cookie`
//! crate's private jar, so cookies pass between the two both ways), its storage trait and its
//! semantics: a request whose session did not change writes nothing and sets no cookie; a
//! changed one is written with the TTL and its cookie sent again; `purge` deletes the record
//! and expires the cookie; `renew` moves the state to a new id. What it saves is the fixed cost
//! of a signed-in read, which is most of what is left once the store's cache answers it:
//! - the cookie is found in the `Cookie` header without parsing the others or building a jar;
//! - the id a cookie value decrypts to is remembered (bounded, least recently used out):
//!   decryption is a pure function of the value and the key, so a byte-identical value names
//!   the same id, and a value seen before is not percent-decoded, base64-decoded or decrypted
//!   again. A value that fails to decrypt is not remembered;
//! - a store failure is a 503 with a JSON body and `Retry-After`, not actix-session's 500.

use std::cell::{Ref, RefCell};
use std::future::{Ready, ready};
use std::rc::Rc;
use std::time::Duration;

use actix_session::storage::{LoadError, SessionKey, SessionStore};
use actix_web::body::MessageBody;
use actix_web::cookie::time::Duration as CookieDuration;
use actix_web::cookie::{Cookie, CookieJar, Key, SameSite};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{COOKIE, HeaderMap, HeaderValue, RETRY_AFTER, SET_COOKIE};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use hashlink::LruCache;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::State;

/// Longest cookie value whose id is remembered (a sealed 64-character id is about 130).
const MEMO_VALUE_MAX: usize = 512;

/// The session cookie's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// Cookie name.
    pub name: String,
    /// `Secure`.
    pub secure: bool,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Path`.
    pub path: String,
}

impl CookieSettings {
    /// `name`, `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`.
    pub fn new(name: impl Into<String>) -> Self {
        CookieSettings {
            name: name.into(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
        }
    }
}

/// The middleware: `resource.wrap(sessions.clone())` on each route that uses sessions. Clones
/// share the store handle and the remembered cookies; build one per server thread (it is not
/// `Send`), e.g. in the `HttpServer::new` closure or `App::configure`.
///
/// ```no_run
/// use std::time::Duration;
///
/// use actix_web::cookie::Key;
/// use actix_web::{App, HttpServer, web};
/// use clusterd::session::sqlite::SqliteStore;
/// use clusterd::session::web::{CookieSettings, Session, Sessions};
///
/// async fn me(session: Session) -> String {
///     match session.get::<String>("user") {
///         Ok(Some(user)) => user,
///         _ => "anonymous".into(),
///     }
/// }
///
/// # async fn run(key: Key) -> std::io::Result<()> {
/// HttpServer::new(move || {
///     let store = SqliteStore::open("/var/lib/app".as_ref()).expect("the session store");
///     let sessions = Sessions::new(
///         store,
///         key.clone(),
///         CookieSettings::new("app_session"),
///         Duration::from_secs(1800),
///         10_000,
///     );
///     App::new().service(web::resource("/me").wrap(sessions).route(web::get().to(me)))
/// })
/// .bind("127.0.0.1:8080")?
/// .run()
/// .await
/// # }
/// ```
#[derive(Clone)]
pub struct Sessions<St> {
    shared: Rc<Shared<St>>,
}

struct Shared<St> {
    store: St,
    key: Key,
    cookie: CookieSettings,
    ttl: CookieDuration,
    /// Cookie value as sent → the session id it decrypts to.
    memo: Option<RefCell<LruCache<String, String>>>,
}

impl<St: SessionStore + 'static> Sessions<St> {
    /// Sessions in `store`, their cookie sealed with `key`; a session lives `ttl` after each
    /// write (the cookie's `Max-Age` too). `remember` cookie values are remembered (0: none).
    pub fn new(
        store: St,
        key: Key,
        cookie: CookieSettings,
        ttl: Duration,
        remember: usize,
    ) -> Self {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Sessions {
            shared: Rc::new(Shared {
                store,
                key,
                cookie,
                ttl: CookieDuration::seconds(secs),
                memo: (remember > 0).then(|| RefCell::new(LruCache::new(remember))),
            }),
        }
    }
}

impl<St> Shared<St> {
    /// The id the request's session cookie names, if it carries a valid one. The cookie is the
    /// one actix-session would take: the first cookie of that name that parses (names and
    /// values percent-decoded, unparsable ones skipped; a header that is not UTF-8 makes the
    /// request anonymous), and only its decryption decides.
    fn session_key(&self, headers: &HeaderMap) -> Option<SessionKey> {
        let name = self.cookie.name.as_str();
        for pair in cookie_pairs(headers)? {
            let Some((raw_name, raw_value)) = pair.split_once('=') else {
                continue; // no cookie at all: skipped
            };
            let raw_name = raw_name.trim();
            // A name spelled with escapes is compared once decoded (rare: parsed in full).
            if raw_name != name && !raw_name.contains('%') {
                continue;
            }
            if raw_name == name
                && let Some(memo) = &self.memo
                && let Some(id) = memo.borrow_mut().get(raw_value)
            {
                return SessionKey::try_from(id.clone()).ok();
            }
            // Percent-decoded as actix-web decodes request cookies.
            let Ok(cookie) = Cookie::parse_encoded(pair) else {
                continue;
            };
            if cookie.name() != name {
                continue;
            }
            return self.open(cookie.into_owned(), (raw_name == name).then_some(raw_value));
        }
        None
    }

    /// Decrypts `cookie`; remembers the id under the value as it was sent, if given.
    fn open(&self, cookie: Cookie<'static>, sent: Option<&str>) -> Option<SessionKey> {
        let Some(plain) = CookieJar::new().private(&self.key).decrypt(cookie) else {
            tracing::debug!("a session cookie failed to decrypt; the request is anonymous");
            return None;
        };
        let id = plain.value().to_string();
        let key = SessionKey::try_from(id.clone()).ok()?;
        if let (Some(memo), Some(sent)) = (&self.memo, sent)
            && sent.len() <= MEMO_VALUE_MAX
        {
            memo.borrow_mut().insert(sent.to_string(), id);
        }
        Some(key)
    }

    fn set_cookie(&self, headers: &mut HeaderMap, id: SessionKey) -> Result<(), SessionError> {
        let c = &self.cookie;
        let mut cookie = Cookie::new(c.name.clone(), String::from(id));
        cookie.set_secure(c.secure);
        cookie.set_http_only(c.http_only);
        cookie.set_same_site(c.same_site);
        cookie.set_path(c.path.clone());
        cookie.set_max_age(self.ttl);
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key).add(cookie);
        let sealed = jar.delta().next().ok_or(SessionError::Cookie)?;
        let value = HeaderValue::from_str(&sealed.encoded().to_string())
            .map_err(|_| SessionError::Cookie)?;
        headers.append(SET_COOKIE, value);
        Ok(())
    }

    fn remove_cookie(&self, headers: &mut HeaderMap) -> Result<(), SessionError> {
        let c = &self.cookie;
        let mut cookie = Cookie::build(c.name.clone(), "")
            .path(c.path.clone())
            .secure(c.secure)
            .http_only(c.http_only)
            .same_site(c.same_site)
            .finish();
        cookie.make_removal();
        let value = HeaderValue::from_str(&cookie.to_string()).map_err(|_| SessionError::Cookie)?;
        headers.append(SET_COOKIE, value);
        Ok(())
    }
}

/// The non-empty `;`-separated pairs of the request's `Cookie` headers, trimmed; `None` when a
/// header is not UTF-8 (actix-web then reads no cookie at all).
fn cookie_pairs(headers: &HeaderMap) -> Option<impl Iterator<Item = &str>> {
    fn text(h: &HeaderValue) -> Option<&str> {
        std::str::from_utf8(h.as_bytes()).ok()
    }
    if !headers.get_all(COOKIE).all(|h| text(h).is_some()) {
        return None;
    }
    Some(
        headers
            .get_all(COOKIE)
            .filter_map(text)
            .flat_map(|h| h.split(';'))
            .map(str::trim)
            .filter(|p| !p.is_empty()),
    )
}

impl<S, St, B> Transform<S, ServiceRequest> for Sessions<St>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    St: SessionStore + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = SessionService<S, St>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service: Rc::new(service),
            shared: Rc::clone(&self.shared),
        }))
    }
}

/// [`Sessions`] around one service.
pub struct SessionService<S, St> {
    service: Rc<S>,
    shared: Rc<Shared<St>>,
}

impl<S, St, B> Service<ServiceRequest> for SessionService<S, St>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    St: SessionStore + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let shared = Rc::clone(&self.shared);
        Box::pin(async move {
            let (key, state) = match shared.session_key(req.headers()) {
                None => (None, State::new()),
                Some(key) => match shared.store.load(&key).await {
                    Ok(Some(state)) => (Some(key), state),
                    // Expired or deleted: a change now starts a new session under a new id.
                    Ok(None) => (None, State::new()),
                    Err(LoadError::Deserialization(e)) => {
                        tracing::warn!(error = %e, "undecodable session state; starting afresh");
                        (Some(key), State::new())
                    }
                    Err(LoadError::Other(e)) => return Err(SessionError::store(e).into()),
                },
            };
            let session = Session(Rc::new(RefCell::new(Inner {
                state,
                status: SessionStatus::Unchanged,
            })));
            req.extensions_mut().insert(session.clone());
            let mut res = service.call(req).await?;
            let (status, state) = {
                let mut inner = session.0.borrow_mut();
                (inner.status, std::mem::take(&mut inner.state))
            };
            let store = &shared.store;
            let headers = res.response_mut().headers_mut();
            match (key, status) {
                (_, SessionStatus::Unchanged) => {}
                // A fresh session gets a record only once it holds something.
                (None, _) if state.is_empty() => {}
                (None, _) => {
                    let id = store
                        .save(state, &shared.ttl)
                        .await
                        .map_err(SessionError::store)?;
                    shared.set_cookie(headers, id)?;
                }
                (Some(key), SessionStatus::Changed) => {
                    let id = store
                        .update(key, state, &shared.ttl)
                        .await
                        .map_err(SessionError::store)?;
                    shared.set_cookie(headers, id)?;
                }
                (Some(key), SessionStatus::Purged) => {
                    store.delete(&key).await.map_err(SessionError::store)?;
                    shared.remove_cookie(headers)?;
                }
                (Some(key), SessionStatus::Renewed) => {
                    store.delete(&key).await.map_err(SessionError::store)?;
                    let id = store
                        .save(state, &shared.ttl)
                        .await
                        .map_err(SessionError::store)?;
                    shared.set_cookie(headers, id)?;
                }
            }
            Ok(res)
        })
    }
}

/// What a request did to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Read at most: nothing is written.
    Unchanged,
    /// An entry was inserted or removed: the state is written and the cookie sent again.
    Changed,
    /// Ended: the record is deleted and the cookie expired.
    Purged,
    /// Moved to a new id (at login, against session fixation).
    Renewed,
}

struct Inner {
    state: State,
    status: SessionStatus,
}

/// The request's session: JSON values by name. The extractor of routes wrapped in
/// [`Sessions`]; elsewhere it is an empty session whose changes nobody keeps.
#[derive(Clone)]
pub struct Session(Rc<RefCell<Inner>>);

impl Session {
    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, serde_json::Error> {
        self.0
            .borrow()
            .state
            .get(key)
            .map(|v| serde_json::from_str(v))
            .transpose()
    }

    /// Every entry, as JSON text.
    pub fn entries(&self) -> Ref<'_, State> {
        Ref::map(self.0.borrow(), |i| &i.state)
    }

    /// What the request did to the session so far.
    pub fn status(&self) -> SessionStatus {
        self.0.borrow().status
    }

    /// Sets `key` (ignored once the session is purged).
    pub fn insert<T: Serialize>(
        &self,
        key: impl Into<String>,
        value: T,
    ) -> Result<(), serde_json::Error> {
        let mut inner = self.0.borrow_mut();
        if inner.status != SessionStatus::Purged {
            let value = serde_json::to_string(&value)?;
            inner.changed();
            inner.state.insert(key.into(), value);
        }
        Ok(())
    }

    /// Removes `key`, returning its JSON text.
    pub fn remove(&self, key: &str) -> Option<String> {
        let mut inner = self.0.borrow_mut();
        if inner.status == SessionStatus::Purged {
            return None;
        }
        inner.changed();
        inner.state.remove(key)
    }

    /// Removes every entry; the session (and its id) stays.
    pub fn clear(&self) {
        let mut inner = self.0.borrow_mut();
        if inner.status != SessionStatus::Purged {
            inner.changed();
            inner.state.clear();
        }
    }

    /// Ends the session: its record is deleted and the cookie expired.
    pub fn purge(&self) {
        let mut inner = self.0.borrow_mut();
        inner.status = SessionStatus::Purged;
        inner.state.clear();
    }

    /// Keeps the state under a new id: the old id is worthless after this request.
    pub fn renew(&self) {
        let mut inner = self.0.borrow_mut();
        if inner.status != SessionStatus::Purged {
            inner.status = SessionStatus::Renewed;
        }
    }
}

impl Inner {
    fn changed(&mut self) {
        if self.status == SessionStatus::Unchanged {
            self.status = SessionStatus::Changed;
        }
    }
}

impl FromRequest for Session {
    type Error = actix_web::Error;
    type Future = Ready<Result<Session, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let mut ext = req.extensions_mut();
        let session = ext.get::<Session>().cloned().unwrap_or_else(|| {
            let detached = Session(Rc::new(RefCell::new(Inner {
                state: State::new(),
                status: SessionStatus::Unchanged,
            })));
            ext.insert(detached.clone());
            detached
        });
        ready(Ok(session))
    }
}

/// A session could not be loaded or kept: 503 with `Retry-After: 1` (the store is the only
/// part that fails in practice; the client should retry, not report a bug).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store failed.
    #[error("session store unavailable; retry shortly")]
    Store(#[source] anyhow::Error),
    /// The cookie could not be built (a configured name that is no header value).
    #[error("session store unavailable; retry shortly")]
    Cookie,
}

impl SessionError {
    fn store(e: impl Into<anyhow::Error>) -> SessionError {
        let e = e.into();
        tracing::warn!(error = %e, "session store failed during the request");
        SessionError::Store(e)
    }
}

impl ResponseError for SessionError {
    fn status_code(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::ServiceUnavailable()
            .insert_header((RETRY_AFTER, 1))
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
