//! Errors: [`HttpError`] for serving, [`ApiError`] for what a request answers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use entities_core::{Error, StoreErrorKind};
use serde_json::json;

/// Why serving the HTTP API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot bind the HTTP API's address: {source}")]
    Bind {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the HTTP API server failed: {source}")]
    Serve {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An error answer: a status and a JSON body `{"message": .., "kind": ..}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let (status, kind) = match &err {
            Error::Operation(op) => {
                return Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "operation_failed",
                    op.message(),
                )
            }
            Error::UnknownEntity(_) => (StatusCode::NOT_FOUND, "unknown_entity"),
            Error::UnknownFunction { .. } => (StatusCode::NOT_FOUND, "unknown_orchestration"),
            Error::InstanceNotFound(_) => (StatusCode::NOT_FOUND, "instance_not_found"),
            Error::InstanceExists(_) => (StatusCode::CONFLICT, "instance_exists"),
            Error::InstanceRunning(_) => (StatusCode::CONFLICT, "instance_running"),
            Error::InvalidEntityId(_)
            | Error::Serialization(_)
            | Error::ReservedOperation(_)
            | Error::Config(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::InvalidSchedule(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::IdempotencyKey { .. } => (StatusCode::BAD_REQUEST, "idempotency_key"),
            Error::IdempotencyMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_mismatch")
            }
            Error::NotRunHere(_) => (StatusCode::CONFLICT, "not_run_here"),
            // A stored state this code cannot read (its migration failed, or newer code wrote
            // it): a conflict between the data and the code running.
            Error::StateVersion(_) => (StatusCode::CONFLICT, "state_version"),
            Error::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "shut_down"),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::Store(store) => match store.kind() {
                StoreErrorKind::Closed | StoreErrorKind::InUse => {
                    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                }
                StoreErrorKind::DiskFull
                | StoreErrorKind::ReadOnly
                | StoreErrorKind::Io
                | StoreErrorKind::Unavailable
                | StoreErrorKind::Gone => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            },
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %err, status = status.as_u16(), "HTTP request failed");
        }
        Self::new(status, kind, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "message": self.message, "kind": self.kind });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
