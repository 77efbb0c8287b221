//! The checks every request passes before the routes see it: the browser checks, the declared
//! length, the bearer token, then the request timeout around the routed request.
//!
//! They run in one service around the routed router rather than as a layer per check: a
//! `from_fn` layer boxes a future and clones the service beneath it for every request, and a
//! route layer clones the handler with its state; with four checks that cost about a tenth
//! of a call's throughput.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::Service;

use crate::browser::Policy;
use crate::error::ApiError;
use crate::limits::RequestLimits;

/// What the checks need.
#[derive(Debug)]
pub(crate) struct Checks {
    /// The browser checks' settings.
    pub browser: Policy,
    /// The bearer token, when one is required.
    pub token: Option<Arc<[u8]>>,
    /// The body limit and the request timeout.
    pub limits: RequestLimits,
}

impl Checks {
    /// Whether the request may reach the routes, from its head alone.
    fn admit(&self, request: &Request) -> Result<(), ApiError> {
        crate::browser::check(&self.browser, request)?;
        crate::limits::check_declared_length(&self.limits, request.headers())?;
        if let Some(token) = &self.token {
            crate::auth::check(token, request)?;
        }
        Ok(())
    }
}

/// The routed router behind the checks.
#[derive(Clone)]
pub(crate) struct Guard {
    routes: Router,
    checks: Arc<Checks>,
}

impl Guard {
    /// `routes` (with their state) behind `checks`.
    pub(crate) fn new(routes: Router, checks: Checks) -> Self {
        Self {
            routes,
            checks: Arc::new(checks),
        }
    }
}

impl<B> Service<axum::http::Request<B>> for Guard
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        if let Err(err) = self.checks.admit(&request) {
            let response = err.into_response();
            return Box::pin(std::future::ready(Ok(response)));
        }
        let limits = self.checks.limits;
        if crate::limits::waits_by_design(&request) {
            let routes = self.routes.clone();
            return Box::pin(async move {
                Ok(crate::limits::read_then_run(limits, routes, request).await)
            });
        }
        let answer = self.routes.call(request);
        Box::pin(async move {
            let answer = async { answer.await.unwrap_or_else(|never| match never {}) };
            Ok(crate::limits::bounded(limits.request_timeout, answer).await)
        })
    }
}
