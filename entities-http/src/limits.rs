//! Request limits: a declared body over the limit is refused before it is read, and a
//! request gets the request timeout (calls and `?wait=` reads excepted).

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

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
pub(crate) fn check_declared_length(
    limits: &RequestLimits,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.body_limit as u64) {
        return Err(too_large(limits.body_limit));
    }
    Ok(())
}

/// Whether the request waits as long as it takes by design, bounded by its own limit: a call
/// (`POST /entities/{name}/{key}/{operation}`, until the operation answers) and an
/// orchestration read with `?wait=` (`GET /orchestrations/{id}`, up to `max_wait`).
pub(crate) fn waits_by_design(request: &Request) -> bool {
    let mut segments = request.uri().path().split('/').skip(1);
    let mut next = || segments.next().filter(|s| !s.is_empty());
    match (request.method(), next(), next(), next(), next(), next()) {
        (&Method::POST, Some("entities"), Some(_), Some(_), Some(_), None) => true,
        (&Method::GET, Some("orchestrations"), Some(_), None, None, None) => request
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

/// The answer of `answer`, or 503 (`request_timeout`) when it takes longer than `timeout`.
pub(crate) async fn bounded(timeout: Duration, answer: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(timeout, answer).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?timeout, "an HTTP request ran past the request timeout");
            timed_out(timeout).into_response()
        }
    }
}

/// Runs a request that waits by design: its body must arrive within the request timeout;
/// then it runs as long as its own limit lets it.
pub(crate) async fn read_then_run(
    limits: RequestLimits,
    routes: Router,
    request: Request,
) -> Response {
    let timeout = limits.request_timeout;
    let (parts, body) = request.into_parts();
    // A small body has nearly always arrived with the head: the timer is armed only when
    // reading it has to wait.
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limits.body_limit));
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match first {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(timeout, read).await,
    };
    let body = match read {
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
    let request = Request::from_parts(parts, Body::from(body));
    match routes.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_by_design() {
        let request = |method: Method, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        for (method, uri) in [
            (Method::POST, "/entities/counter/a/add"),
            (Method::POST, "/entities/counter/a%2Fb/add?x=1"),
            (Method::GET, "/orchestrations/o1?wait=5s"),
            (Method::GET, "/orchestrations/o1?a=1&wait=1s"),
        ] {
            assert!(waits_by_design(&request(method, uri)), "{uri}");
        }
        for (method, uri) in [
            (Method::POST, "/entities/counter/a/add/send"),
            (Method::POST, "/entities/counter/a"),
            (Method::POST, "/entities/counter//add"),
            (Method::PUT, "/entities/counter/a/add"),
            (Method::GET, "/orchestrations/o1"),
            (Method::GET, "/orchestrations/o1?wait="),
            (Method::GET, "/orchestrations/o1/history?wait=1s"),
            (Method::POST, "/other/counter/a/add"),
        ] {
            assert!(!waits_by_design(&request(method, uri)), "{uri}");
        }
    }
}
