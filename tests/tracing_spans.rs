//! The runtime's tracing spans: a batch, each operation (with its entity and operation name),
//! each orchestration turn, each commit, and the SQLite writer inside the commit's span.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entities::prelude::*;
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Each new span as `name(fields) < parent`.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        self.0.lock().unwrap().push(format!(
            "{}({}) < {parent}",
            attrs.metadata().name(),
            fields.0.trim_end()
        ));
    }
}

fn counter(ctx: &mut EntityContext) -> Result<(), OperationError> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation_name() {
        "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

async fn one(_ctx: OrchestrationContext, _: ()) -> Result<i64, entities::Error> {
    Ok(1)
}

#[tokio::test]
async fn batches_operations_turns_and_commits_have_spans() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(
        spans
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .store(SqliteStore::open(dir.path().join("spans.db")).unwrap())
        .entity_fn("Counter", counter)
        .orchestration("one", one)
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    client
        .call_entity::<(), _>(&EntityId::new("Counter", "traced"), "add", &1)
        .await
        .unwrap();
    let id = client.start_orchestration("one", &()).await.unwrap();
    client
        .wait_for_orchestration(&id, Duration::from_secs(10))
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();

    let spans = spans.0.lock().unwrap().clone();
    let has = |pattern: &str| spans.iter().any(|s| s.contains(pattern));
    assert!(has("batch(batch="), "{spans:#?}");
    assert!(
        has("operation(entity=@counter@traced operation=add) < batch"),
        "{spans:#?}"
    );
    assert!(
        has(&format!("orchestration_turn(instance={id}) < batch")),
        "{spans:#?}"
    );
    assert!(has("commit(entities=") && has(") < batch"), "{spans:#?}");
    assert!(has("sqlite_write() < commit"), "{spans:#?}");
}
