//! Fixtures shared by the integration tests that declare `mod support;`.
#![allow(dead_code)] // each test file uses its own share

use entities::prelude::*;

/// A counter: `add` adds its input to the state, `get` returns it.
pub(crate) fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        "get" => ctx.set_result(&value)?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// The committed state of an entity, `None` if it has none.
pub(crate) async fn state_of(client: &Client, id: &EntityId) -> Option<serde_json::Value> {
    client.get_entity_raw(id).await.unwrap().map(|m| m.state)
}
