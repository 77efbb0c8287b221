//! Services (issue 14): values registered by type with `Runtime::builder().service(value)`,
//! reached by class-based entities (sync and async operations), function-based entities and
//! activities through their contexts, with an error naming the type when none is registered.
// Test and example code: its public items are not an API (the workspace lints ask docs of
// library crates).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use entities::prelude::*;
use entities::{Error, MissingService};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

/// A service that records what it was asked to send.
#[derive(Default)]
pub struct Mailer {
    sent: Mutex<Vec<String>>,
}

impl Mailer {
    fn send(&self, text: impl Into<String>) {
        self.sent.lock().unwrap().push(text.into());
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

/// A second service, to check that services are told apart by type.
pub struct Greeting(&'static str);

/// A type no runtime registers.
pub struct Unregistered;

#[derive(Default, Serialize, Deserialize)]
pub struct Cart {
    items: Vec<String>,
}

#[entity]
impl Cart {
    pub fn add(&mut self, item: String) {
        self.items.push(item);
    }

    pub fn checkout(&mut self, ctx: &EntityContext) -> Result<usize, String> {
        let greeting = ctx.service::<Greeting>().map_err(|e| e.to_string())?;
        ctx.service::<Mailer>()
            .map_err(|e| e.to_string())?
            .send(format!(
                "{} {}: {}",
                greeting.0,
                ctx.id().key(),
                self.items.join(",")
            ));
        let count = self.items.len();
        self.items.clear();
        Ok(count)
    }

    pub async fn checkout_later(&mut self, ctx: &EntityContext) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        ctx.service::<Mailer>()
            .map_err(|e| e.to_string())?
            .send(format!("later {}", self.items.len()));
        Ok(())
    }

    pub fn use_unregistered(&self, ctx: &EntityContext) -> Result<(), String> {
        ctx.service::<Unregistered>().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A function entity that mails its input and counts its mails.
fn notifier(ctx: &mut EntityContext) -> Result<(), OperationError> {
    match ctx.operation_name() {
        "notify" => {
            let text: String = ctx.input()?;
            ctx.service::<Mailer>()?.send(format!("notifier: {text}"));
            let count: u64 = ctx.state_or_default()?;
            ctx.set_state(&(count + 1))?;
        }
        "unregistered" => {
            ctx.service::<Unregistered>()?;
        }
        other => return Err(OperationError::unknown_operation(other)),
    }
    Ok(())
}

/// Calls the context activity `mail`, the plain activity `double`, then `missing`.
async fn workflow(ctx: OrchestrationContext, to: String) -> Result<(String, i64, String), Error> {
    let receipt: String = ctx.call_activity("mail", &to).await?;
    let doubled: i64 = ctx.call_activity("double", &21).await?;
    let missing = ctx
        .call_activity::<()>("missing", &())
        .await
        .expect_err("the activity's service is not registered")
        .to_string();
    Ok((receipt, doubled, missing))
}

async fn start(mailer: Arc<Mailer>) -> Runtime {
    Runtime::builder()
        .store(MemoryStore::new())
        .service_arc(mailer)
        .service(Greeting("hello"))
        .entity::<Cart>()
        .entity_fn("Notifier", notifier)
        .orchestration("workflow", workflow)
        .activity_with_context("mail", |ctx: ActivityContext, to: String| async move {
            let mailer = ctx.service_arc::<Mailer>()?;
            mailer.send(format!("{} from {} to {to}", ctx.name(), ctx.instance_id()));
            Ok::<_, Error>(format!("sent to {to}"))
        })
        .activity("double", |n: i64| async move { Ok::<_, String>(n * 2) })
        .activity_with_context("missing", |ctx: ActivityContext, (): ()| async move {
            ctx.service::<Unregistered>()?;
            Ok::<_, MissingService>(())
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_class_entity_reaches_services_from_sync_and_async_operations() {
    let mailer = Arc::new(Mailer::default());
    let runtime = start(mailer.clone()).await;
    let client = runtime.client();
    client
        .signal::<Cart>("alice")
        .add("apple".into())
        .await
        .unwrap();
    client
        .signal::<Cart>("alice")
        .add("pear".into())
        .await
        .unwrap();
    assert_eq!(client.call::<Cart>("alice").checkout().await.unwrap(), 2);
    assert_eq!(mailer.sent(), ["hello alice: apple,pear"]);
    client.call::<Cart>("alice").checkout_later().await.unwrap();
    assert_eq!(mailer.sent(), ["hello alice: apple,pear", "later 0"]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_function_entity_reaches_services() {
    let mailer = Arc::new(Mailer::default());
    let runtime = start(mailer.clone()).await;
    let client = runtime.client();
    let id = EntityId::new("Notifier", "n1");
    client
        .call_entity::<(), _>(&id, "notify", &"first")
        .await
        .unwrap();
    client
        .call_entity::<(), _>(&id, "notify", &"second")
        .await
        .unwrap();
    assert_eq!(mailer.sent(), ["notifier: first", "notifier: second"]);
    let state = client.get_entity_raw(&id).await.unwrap().unwrap().state;
    assert_eq!(state, serde_json::json!(2));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn activities_with_a_context_reach_services_and_plain_activities_still_run() {
    let mailer = Arc::new(Mailer::default());
    let runtime = start(mailer.clone()).await;
    let client = runtime.client();
    let id = client
        .start_orchestration("workflow", &"bob")
        .await
        .unwrap();
    let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed, "{:?}", done.error);
    let (receipt, doubled, missing): (String, i64, String) = done.output().unwrap();
    assert_eq!(receipt, "sent to bob");
    assert_eq!(doubled, 42);
    assert!(
        missing.contains("lifecycle_services::Unregistered"),
        "the error names the type: {missing}"
    );
    assert_eq!(mailer.sent(), [format!("mail from {id} to bob")]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_service_fails_the_operation_with_an_error_naming_the_type() {
    let runtime = start(Arc::new(Mailer::default())).await;
    let client = runtime.client();
    let err = client
        .call::<Cart>("carol")
        .use_unregistered()
        .await
        .unwrap_err();
    let Error::Operation(op) = &err else {
        panic!("expected an operation error, got {err:?}");
    };
    assert!(
        op.message().contains("`lifecycle_services::Unregistered`")
            && op.message().contains(".service("),
        "the error names the type and says how to register it: {op}"
    );
    let err = client
        .call_entity::<(), _>(&EntityId::new("Notifier", "n2"), "unregistered", &())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("lifecycle_services::Unregistered"),
        "{err}"
    );
    // The entities go on.
    client
        .call_entity::<(), _>(&EntityId::new("Notifier", "n2"), "notify", &"still here")
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runtime_without_the_service_says_so_and_one_type_is_registered_once() {
    // The same entity without its services: the error names the first one it asks for.
    let runtime = Runtime::builder()
        .store(MemoryStore::new())
        .entity::<Cart>()
        .start()
        .await
        .unwrap();
    let err = runtime
        .client()
        .call::<Cart>("dave")
        .checkout()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("lifecycle_services::Greeting"),
        "{err}"
    );
    runtime.shutdown().await.unwrap();

    let twice = Runtime::builder()
        .store(MemoryStore::new())
        .service(Greeting("a"))
        .service(Greeting("b"))
        .start()
        .await;
    match twice {
        Err(Error::Config(message)) => assert!(
            message.contains("lifecycle_services::Greeting") && message.contains("twice"),
            "{message}"
        ),
        other => panic!("expected a configuration error, got {:?}", other.err()),
    }
}

#[test]
fn missing_service_names_its_type() {
    let err = MissingService::of::<Vec<u8>>();
    assert_eq!(err.type_name(), "alloc::vec::Vec<u8>");
    assert!(err.to_string().contains("`alloc::vec::Vec<u8>`"));
}
