//! Errors of the demo app, each a status code and a JSON body `{"error": "..."}`. Runs in
//! workers.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};

/// Everything a route can answer besides success. No variant is a 500: a failing dependency
/// is a 503, everything the client did wrong is a 4xx.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed or absurd input.
    #[error("{0}")]
    BadRequest(String),
    /// No valid session, or wrong credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Body over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Neither JSON nor a form.
    #[error("content type must be application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// Too many failed logins.
    #[error("too many failed logins; retry in {retry_after} seconds")]
    TooManyRequests {
        /// Seconds until the counter resets.
        retry_after: u64,
    },
    /// The session store did not answer.
    #[error("session store unavailable; retry shortly")]
    StoreUnavailable,
    /// Every password-hashing thread is busy and the queue is full: 503, retry in a second.
    #[error("too many logins in progress; retry shortly")]
    Busy,
    /// The request body did not arrive within the read timeout.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// A state-changing request from another site (login CSRF).
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such route.
    #[error("not found")]
    NotFound,
    /// Route exists, method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::StoreUnavailable | AppError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }));
        let retry = match self {
            AppError::TooManyRequests { retry_after } => Some(*retry_after),
            AppError::StoreUnavailable | AppError::Busy => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<crate::session::StoreError> for AppError {
    fn from(e: crate::session::StoreError) -> Self {
        tracing::warn!(error = %e, "session store call failed");
        AppError::StoreUnavailable
    }
}
