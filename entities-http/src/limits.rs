//! Request limits of the router: a declared body over the limit is refused before it is
//! read, and a request gets the request timeout (calls and `?wait=` reads excepted).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// What the limits need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    pub body_limit: usize,
    pub request_timeout: Duration,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is larger than this server's limit of {limit} bytes"),
    )
}

/// 413 at once when the declared `Content-Length` is over the body limit, before a byte of
/// the body is read.
pub(crate) async fn declared_length(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.body_limit as u64) {
        return too_large(limits.body_limit).into_response();
    }
    next.run(request).await
}

/// Whether the request waits as long as it takes by design, bounded by its own limit: a call
/// (until the operation answers) and an orchestration read with `?wait=` (up to `max_wait`).
fn waits_by_design(request: &Request) -> bool {
    let Some(path) = request.extensions().get::<MatchedPath>() else {
        return false;
    };
    match (request.method(), path.as_str()) {
        (&Method::POST, "/entities/{name}/{key}/{operation}") => true,
        (&Method::GET, "/orchestrations/{id}") => request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=") && p != "wait=")),
        _ => false,
    }
}

fn timed_out(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "request_timeout",
        format!(
            "the request did not finish within the server's request timeout ({}); \
             whatever it did may or may not have been applied",
            humantime::format_duration(timeout)
        ),
    )
}

/// Bounds a request by the request timeout. A request that waits by design gets it for
/// reading its body only; then it runs as long as its own limit lets it.
pub(crate) async fn request_timeout(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = limits.request_timeout;
    if !waits_by_design(&request) {
        return match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(?timeout, "an HTTP request ran past the request timeout");
                timed_out(timeout).into_response()
            }
        };
    }
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, limits.body_limit)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(err)) => {
                let err = err.into_inner();
                return if err.is::<http_body_util::LengthLimitError>() {
                    too_large(limits.body_limit).into_response()
                } else {
                    ApiError::bad_request(format!("cannot read the body: {err}")).into_response()
                };
            }
            Err(_) => {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the body did not arrive within the server's request timeout ({})",
                        humantime::format_duration(timeout)
                    ),
                )
                .into_response()
            }
        };
    next.run(Request::from_parts(parts, Body::from(body))).await
}
