//! The bearer-token check.

use axum::extract::Request;
use axum::http::{header, StatusCode};
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
pub(crate) fn check(token: &[u8], request: &Request) -> Result<(), ApiError> {
    if PUBLIC.contains(&request.uri().path()) {
        return Ok(());
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(given) if bool::from(given.ct_eq(token)) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API requires `Authorization: Bearer <token>`",
        )),
    }
}
