//! What the API answers when a request is wrong, and the extractors that
//! turn bad bodies and query strings into those answers.
//!
//! Every error is JSON `{"error": "...", "field": "..."}` with a 4xx status
//! (5xx only when nova itself failed), so a client can point at the field it
//! got wrong. Bodies and query strings are parsed with `serde_path_to_error`,
//! which names the field even deep inside a document.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// An error answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// What went wrong, in words.
    pub error: String,
    /// The field, parameter or header that was wrong, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A policy's reasons, when it denied the action.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
            reasons: Vec::new(),
        }
    }

    pub fn bad(field: &str, error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error).field(field)
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }

    pub fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, error)
    }

    pub fn internal(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }

    pub fn field(mut self, field: &str) -> ApiError {
        self.field = Some(field.to_string());
        self
    }

    /// A nova error from the library, with the field it concerns when the
    /// message names one of `fields` (as `--plan` or `plan`).
    pub fn from_nova(e: Error, fields: &[&str]) -> ApiError {
        let text = e.to_string();
        let status = match &e {
            Error::Usage(_) | Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Unfinished(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The library's messages name the flag or the thing near their start
        // ("--phase x: ...", "unknown plan `x`", "no agent ...").
        let head: String = text.chars().take(60).collect::<String>().to_lowercase();
        let field = fields
            .iter()
            .find(|f| head.contains(&format!("--{}", f.trim_end_matches('s'))))
            .or_else(|| {
                fields
                    .iter()
                    .find(|f| head.contains(&format!("{} ", f.trim_end_matches('s'))))
            });
        let mut err = ApiError::new(status, text);
        err.field = field.map(|f| f.to_string());
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<crate::queue::backend::QueueError> for ApiError {
    fn from(e: crate::queue::backend::QueueError) -> ApiError {
        use crate::queue::backend::QueueError;
        match e {
            QueueError::NotFound(_) => ApiError::not_found(e.to_string()),
            QueueError::FailedPrecondition(m) => ApiError::conflict(m),
            QueueError::InvalidArgument(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            QueueError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

/// A JSON body of `T`: `application/json`, at most [`MAX_BODY`] bytes, and
/// every field as `T` says, or a 4xx naming what was wrong.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)",
            )
            .field("Content-Type"));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        if bytes.len() > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is {} bytes; at most {MAX_BODY}", bytes.len()),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let status = if inner.is_data() {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::BAD_REQUEST
                };
                let mut err = ApiError::new(status, format!("body: {inner}"));
                if path != "." {
                    err.field = Some(path);
                } else if let Some(name) = missing_field(&inner.to_string()) {
                    err.field = Some(name);
                }
                err
            })
    }
}

/// The query string as `T`, or a 400 naming the parameter.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryArgs)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, format!("query: {inner}"));
                err.field = if path != "." {
                    Some(path)
                } else {
                    missing_field(&inner)
                };
                err
            })
    }
}

/// The field of serde's "missing field `x`" and "unknown field `x`" messages.
fn missing_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}
