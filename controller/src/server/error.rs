//! The API's errors — `{"error", "fix"}` with 400/401/403/404/409/413 — and a JSON body
//! extractor whose refusals name the field and the fix instead of axum's plain text.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{CtlError, Kind};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub fix: String,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, fix: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), fix: fix.into(), retry_after: None }
    }
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad(error: impl Into<String>, fix: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, fix)
    }
    pub fn unauthorized(error: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            error,
            "log in (POST /api/v1/session) or send Authorization: Bearer <token>",
        )
    }
    pub fn forbidden(error: impl Into<String>, fix: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, error, fix)
    }
    pub fn not_found(error: impl Into<String>, fix: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error, fix)
    }
    pub fn conflict(error: impl Into<String>, fix: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, error, fix)
    }
}

/// An answer of the server's, as a command's error (`slipctl --server`, the socket): the
/// kind follows the status, so the exit code does too.
impl From<ApiError> for CtlError {
    fn from(e: ApiError) -> CtlError {
        let err = match e.status.as_u16() {
            409 => CtlError::busy(e.error),
            404 => CtlError::not_found(e.error),
            403 => CtlError::forbidden(e.error),
            400..=499 => CtlError::bad(e.error),
            _ => CtlError::failed(e.error),
        };
        if e.fix.is_empty() { err } else { err.fix(e.fix) }
    }
}

impl From<CtlError> for ApiError {
    fn from(e: CtlError) -> ApiError {
        let status = match e.kind {
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::BadInput => StatusCode::BAD_REQUEST,
            Kind::Busy => StatusCode::CONFLICT,
            Kind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, error: e.problem, fix: e.fix.unwrap_or_default(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.error, "fix": self.fix}))).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON request body: unknown fields refused naming the field, oversized bodies 413.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(refusal(rejection)),
        }
    }
}

fn refusal(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            "the request body is too large",
            format!("send at most {} bytes", super::BODY_LIMIT),
        );
    }
    let text = rejection.body_text();
    let detail = text.split_once(": ").map(|(_, d)| d).unwrap_or(&text).to_owned();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(status, "the body is not JSON", "send Content-Type: application/json")
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {detail}"),
            "see DESIGN.md \"Server\" for the fields each call takes",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status is chosen by the error's kind, never by its words; the CLI's exit code by
    /// the same kind.
    #[test]
    fn each_kind_has_its_status_and_exit_code() {
        let cases = [
            (CtlError::bad("a thing called unknown"), StatusCode::BAD_REQUEST, 2),
            (CtlError::not_found("no such deploy #9"), StatusCode::NOT_FOUND, 2),
            (CtlError::forbidden("dev may not approve"), StatusCode::FORBIDDEN, 2),
            (CtlError::busy("unknown words, busy kind"), StatusCode::CONFLICT, 3),
            (CtlError::failed("unknown failure"), StatusCode::INTERNAL_SERVER_ERROR, 1),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
            assert_eq!(ApiError::from(e).status, status);
        }
    }
}
