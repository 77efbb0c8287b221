//! Orchestration housekeeping (issue 14): purging ended instances by query, and eternal
//! orchestrations through `continue_as_new`.

use std::time::{Duration, SystemTime};

use entities::prelude::*;
use entities::{Error, OrchestrationQuery, RuntimeStatus};

const WAIT: Duration = Duration::from_secs(60);

async fn quick(_ctx: OrchestrationContext, n: i64) -> Result<i64, Error> {
    Ok(n)
}

async fn fails(_ctx: OrchestrationContext, _: ()) -> Result<(), Error> {
    Err(Error::OrchestrationFailed("on purpose".into()))
}

async fn waits(ctx: OrchestrationContext, _: ()) -> Result<String, Error> {
    ctx.wait_for_event::<String>("go").await
}

fn purge_runtime() -> entities::RuntimeBuilder {
    Runtime::builder()
        .orchestration("quick", quick)
        .orchestration("fails", fails)
        .orchestration("waits", waits)
}

async fn status(client: &Client, id: &str) -> Option<RuntimeStatus> {
    client
        .orchestration_status(id)
        .await
        .unwrap()
        .map(|s| s.status)
}

/// Waits until the instance has run its first turn (it is waiting for its event).
async fn until_started(client: &Client, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .orchestration_history(id)
        .await
        .unwrap()
        .is_none_or(|h| h.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "{id} never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn purge_orchestrations_removes_the_ended_instances_a_query_selects() {
    let runtime = purge_runtime()
        .store(SqliteStore::in_memory().unwrap())
        .start()
        .await
        .unwrap();
    let client = runtime.client();
    let mut early = Vec::new();
    for i in 0..3 {
        let id = client
            .start_orchestration_with_id("quick", &format!("early-{i}"), &i)
            .await
            .unwrap();
        client.wait_for_orchestration(&id, WAIT).await.unwrap();
        early.push(id);
    }
    let mut failed = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("fails", &format!("failed-{i}"), &())
            .await
            .unwrap();
        let done = client.wait_for_orchestration(&id, WAIT).await.unwrap();
        assert_eq!(done.status, RuntimeStatus::Failed);
        failed.push(id);
    }
    let terminated = client
        .start_orchestration_with_id("waits", "terminated", &())
        .await
        .unwrap();
    until_started(&client, &terminated).await;
    client.terminate(&terminated, "stop").await.unwrap();
    client
        .wait_for_orchestration(&terminated, WAIT)
        .await
        .unwrap();
    let mut running = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("waits", &format!("running-{i}"), &())
            .await
            .unwrap();
        until_started(&client, &id).await;
        running.push(id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut late = Vec::new();
    for i in 0..2 {
        let id = client
            .start_orchestration_with_id("quick", &format!("late-{i}"), &i)
            .await
            .unwrap();
        client.wait_for_orchestration(&id, WAIT).await.unwrap();
        late.push(id);
    }

    // Asking for running instances purges nothing.
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            status: Some(RuntimeStatus::Running),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 0);

    // By name (the running "waits" instances are untouched by a name query too).
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            name: Some("waits".into()),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the terminated one");
    assert_eq!(status(&client, &terminated).await, None);
    for id in &running {
        assert_eq!(status(&client, id).await, Some(RuntimeStatus::Running));
    }

    // By status, one per store transaction.
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            status: Some(RuntimeStatus::Failed),
            page_size: 1,
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 2);
    for id in &failed {
        assert_eq!(status(&client, id).await, None);
        assert_eq!(client.orchestration_history(id).await.unwrap(), None);
    }

    // By end time: the early ones, not those that ended after the cutoff.
    let listed = client
        .query_orchestrations(OrchestrationQuery {
            ended_before: Some(cutoff),
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<String> = listed
        .instances
        .into_iter()
        .map(|s| s.instance_id)
        .collect();
    assert_eq!(listed, early);
    let purged = client
        .purge_orchestrations(OrchestrationQuery {
            name: Some("quick".into()),
            ended_before: Some(cutoff),
            page_size: 2,
            ..OrchestrationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 3);
    for id in &early {
        assert_eq!(status(&client, id).await, None);
    }
    for id in &late {
        assert_eq!(status(&client, id).await, Some(RuntimeStatus::Completed));
    }

    // Everything that ended; the running ones stay and still finish.
    let purged = client
        .purge_orchestrations(OrchestrationQuery::default())
        .await
        .unwrap();
    assert_eq!(purged, 2);
    let left = client
        .query_orchestrations(OrchestrationQuery::default())
        .await
        .unwrap();
    let left: Vec<String> = left.instances.into_iter().map(|s| s.instance_id).collect();
    assert_eq!(left, running);
    for id in &running {
        client.raise_event(id, "go", &"now").await.unwrap();
        let done = client.wait_for_orchestration(id, WAIT).await.unwrap();
        assert_eq!(done.output::<String>().unwrap(), "now");
    }
    // A purged id can be used again.
    let again = client
        .start_orchestration_with_id("quick", &early[0], &7)
        .await
        .unwrap();
    let done = client.wait_for_orchestration(&again, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 7);
    runtime.shutdown().await.unwrap();
}
