//! Durable orchestrations: functions replayed from their history that call and signal
//! entities, lock them in critical sections, and run activities, timers, sub-orchestrations
//! and external events.

pub(crate) mod context;
pub(crate) mod history;
mod status;

pub use context::{CriticalSection, OrchestrationCall, OrchestrationContext, OrchestrationSignal};
pub use status::OrchestrationStatus;

use std::future::Future;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::services::ActivityContext;

/// A registered orchestration function, type-erased.
pub trait OrchestrationFn: Send + Sync + 'static {
    /// Starts the function with its JSON input.
    fn start(
        &self,
        ctx: OrchestrationContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, Error>>;
}

/// Adapts `async fn(OrchestrationContext, I) -> Result<O, Error>`.
pub(crate) struct OrchestrationAdapter<F, I, O>(pub F, PhantomData<fn(I) -> O>);

impl<F, I, O> OrchestrationAdapter<F, I, O> {
    pub(crate) fn new(f: F) -> Self {
        Self(f, PhantomData)
    }
}

impl<F, Fut, I, O> OrchestrationFn for OrchestrationAdapter<F, I, O>
where
    F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Error>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    fn start(
        &self,
        ctx: OrchestrationContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, Error>> {
        let input = I::deserialize(&input).map_err(|err| {
            Error::Serialization(format!(
                "the orchestration input does not deserialize: {err}"
            ))
        });
        let future = input.map(|input| (self.0)(ctx, input));
        Box::pin(async move {
            let output = future?.await?;
            Ok(crate::json::to_value(&output)?)
        })
    }
}

/// A registered activity function, type-erased.
pub trait ActivityFn: Send + Sync + 'static {
    /// Runs the activity with its context and JSON input; an error is the activity's error
    /// message.
    fn run(&self, ctx: ActivityContext, input: Value) -> BoxFuture<'static, Result<Value, String>>;
}

/// Adapts `async fn(I) -> Result<O, E>` with `E: Display`.
pub(crate) struct ActivityAdapter<F, I, O, E>(pub F, PhantomData<fn(I) -> (O, E)>);

impl<F, I, O, E> ActivityAdapter<F, I, O, E> {
    pub(crate) fn new(f: F) -> Self {
        Self(f, PhantomData)
    }
}

impl<F, Fut, I, O, E> ActivityFn for ActivityAdapter<F, I, O, E>
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn run(
        &self,
        _ctx: ActivityContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, String>> {
        run_activity(input, |input| (self.0)(input))
    }
}

/// Adapts `async fn(ActivityContext, I) -> Result<O, E>` with `E: Display`.
pub(crate) struct ContextActivityAdapter<F, I, O, E>(pub F, PhantomData<fn(I) -> (O, E)>);

impl<F, I, O, E> ContextActivityAdapter<F, I, O, E> {
    pub(crate) fn new(f: F) -> Self {
        Self(f, PhantomData)
    }
}

impl<F, Fut, I, O, E> ActivityFn for ContextActivityAdapter<F, I, O, E>
where
    F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn run(&self, ctx: ActivityContext, input: Value) -> BoxFuture<'static, Result<Value, String>> {
        run_activity(input, |input| (self.0)(ctx, input))
    }
}

/// Decodes an activity's input, starts it with `start`, and encodes its output.
fn run_activity<Fut, I, O, E>(
    input: Value,
    start: impl FnOnce(I) -> Fut,
) -> BoxFuture<'static, Result<Value, String>>
where
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    I: DeserializeOwned,
    O: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let input = I::deserialize(&input)
        .map_err(|err| format!("the activity input does not deserialize: {err}"));
    let future = input.map(start);
    Box::pin(async move {
        let output = future?.await.map_err(|err| err.to_string())?;
        crate::json::to_value(&output).map_err(|err| err.to_string())
    })
}
