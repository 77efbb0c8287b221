//! The bearer-token check.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The paths served without a token: liveness and readiness probes carry no secret, and the
/// dashboard's static files hold none (the page asks for the token and sends it with its API
/// requests).
pub(crate) const PUBLIC: [&str; 6] = [
    "/health",
    "/ready",
    "/ui",
    "/ui/",
    "/ui/app.js",
    "/ui/style.css",
];

/// Lets a request through when it carries `Authorization: Bearer <token>`; the [`PUBLIC`]
/// paths always pass. The token is compared in constant time.
pub(crate) async fn require_token(
    State(token): State<Arc<[u8]>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if PUBLIC.contains(&path) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(given) if bool::from(given.ct_eq(&token)) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API requires `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}
