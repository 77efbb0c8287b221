//! Values that JSON cannot carry back (a non-finite float, nesting deeper than serde_json
//! reads) are refused when they would be stored: the operation, send or orchestration that
//! produced one fails, and what was stored before stays readable.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use entities::prelude::*;
use entities::{Error, SqliteStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A gauge whose reading can be driven to infinity.
#[derive(Default, Serialize, Deserialize)]
pub struct Gauge {
    reading: f64,
    updates: u32,
}

#[entity]
impl Gauge {
    pub fn set(&mut self, reading: f64) {
        self.reading = reading;
        self.updates += 1;
    }

    pub fn divide(&mut self, by: f64) {
        self.reading /= by;
        self.updates += 1;
    }

    pub fn squared(&self) -> f64 {
        self.reading * self.reading
    }

    pub fn get(&self) -> f64 {
        self.reading
    }
}

/// Arrays nested `levels` deep around a number.
fn nested(levels: usize) -> Value {
    (0..levels).fold(Value::from(1), |v, _| Value::Array(vec![v]))
}

/// A function entity whose state is arrays nested as deep as its input says; it also records
/// the inputs of `record`.
fn nest(ctx: &mut EntityContext) -> Result<(), OperationError> {
    match ctx.operation_name() {
        "nest" => ctx.set_state(&nested(ctx.input()?))?,
        "record" => {
            let mut seen: Vec<Value> = ctx.state_or_default()?;
            seen.push(ctx.input()?);
            ctx.set_state(&seen)?;
        }
        "get" => ctx.set_result(&ctx.state::<Value>())?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

async fn divide_by_zero(_ctx: OrchestrationContext, x: f64) -> Result<f64, Error> {
    Ok(x / 0.0)
}

async fn runtime() -> Runtime {
    Runtime::builder()
        .store(SqliteStore::in_memory().unwrap())
        .entity::<Gauge>()
        .entity_fn("Nest", nest)
        .orchestration("divide_by_zero", divide_by_zero)
        .start()
        .await
        .unwrap()
}

fn operation_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Operation(err)) => err.message().to_string(),
        other => panic!("expected an operation error, got {other:?}"),
    }
}

fn serialization_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Serialization(message)) => message,
        other => panic!("expected a serialization error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_state_set_to_infinity_fails_the_operation_and_keeps_the_previous_state() {
    let runtime = runtime().await;
    let client = runtime.client();
    client.call::<Gauge>("g").set(2.0).await.unwrap();

    let message = operation_message(client.call::<Gauge>("g").divide(0.0).await);
    assert!(
        message.contains("f64 value inf at .reading cannot be stored"),
        "{message}"
    );
    let stored = client.get_entity::<Gauge>("g").await.unwrap().unwrap();
    assert_eq!((stored.state.reading, stored.state.updates), (2.0, 1));

    // A result that is infinite fails its call too.
    client.call::<Gauge>("g").set(1e200).await.unwrap();
    let message = operation_message(client.call::<Gauge>("g").squared().await);
    assert!(
        message.contains("f64 value inf cannot be stored"),
        "{message}"
    );

    // The entity goes on working.
    client.call::<Gauge>("g").divide(4.0).await.unwrap();
    assert_eq!(client.call::<Gauge>("g").get().await.unwrap(), 2.5e199);
    let stored = client.get_entity::<Gauge>("g").await.unwrap().unwrap();
    assert_eq!(stored.state.updates, 3);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_state_nested_too_deep_fails_the_operation_and_keeps_the_previous_state() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Nest", "n");
    client
        .call_entity::<(), _>(&id, "nest", &3usize)
        .await
        .unwrap();

    let message = operation_message(client.call_entity::<(), _>(&id, "nest", &200usize).await);
    assert!(message.contains("more than 100 levels deep"), "{message}");
    let stored = client.get_entity_raw(&id).await.unwrap().unwrap();
    assert_eq!(stored.state, nested(3));

    client
        .call_entity::<(), _>(&id, "nest", &100usize)
        .await
        .unwrap();
    let state: Option<Value> = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(state, Some(nested(100)));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_input_that_cannot_be_read_back_is_refused_and_never_stored() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = EntityId::new("Nest", "inputs");

    let message = serialization_message(client.signal_entity(&id, "record", &f64::NAN).await);
    assert!(
        message.contains("f64 value NaN cannot be stored"),
        "{message}"
    );
    let message = serialization_message(client.signal_entity(&id, "record", &nested(200)).await);
    assert!(message.contains("more than 100 levels deep"), "{message}");
    let message = serialization_message(client.signal::<Gauge>("g").set(f64::INFINITY).await);
    assert!(message.contains("f64 value inf"), "{message}");
    serialization_message(client.call::<Gauge>("g").set(f64::NEG_INFINITY).await);
    serialization_message(
        client
            .start_orchestration("divide_by_zero", &f64::NAN)
            .await,
    );

    // Only the valid signal reached the entity, and nothing reached the gauge.
    client.signal_entity(&id, "record", &1).await.unwrap();
    let seen: Option<Value> = client.call_entity(&id, "get", &()).await.unwrap();
    assert_eq!(seen, Some(serde_json::json!([1])));
    assert!(client.get_entity::<Gauge>("g").await.unwrap().is_none());
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_infinite_orchestration_output_fails_the_instance() {
    let runtime = runtime().await;
    let client = runtime.client();
    let id = client
        .start_orchestration("divide_by_zero", &1.0)
        .await
        .unwrap();
    let done = client
        .wait_for_orchestration(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, RuntimeStatus::Failed);
    let error = done.error.unwrap_or_default();
    assert!(error.contains("f64 value inf cannot be stored"), "{error}");
    runtime.shutdown().await.unwrap();
}
