//! The client's side of orchestrations: starting, reading, waiting for, raising events to,
//! terminating, querying and purging instances.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Client;
use crate::engine::Command;
use crate::error::{Error, Result};
use crate::message::{to_millis, to_millis_ceil, Body, Message, Target};
use crate::orchestration::OrchestrationStatus;
use crate::store::{Batch, InstanceQuery, InstanceRecord, InstanceWrite, RuntimeStatus};

/// A query over orchestration instances (see [`Client::query_orchestrations`]). Every filter
/// left `None` matches every instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrchestrationQuery {
    /// Only instances of this orchestration name.
    pub name: Option<String>,
    /// Only instances with this status.
    pub status: Option<RuntimeStatus>,
    /// Only held instances (`Some(true)`, see [`OrchestrationStatus::held`]) or only
    /// instances not held (`Some(false)`).
    pub held: Option<bool>,
    /// Only instances created at or after this time.
    pub created_from: Option<SystemTime>,
    /// Only instances created before this time.
    pub created_to: Option<SystemTime>,
    /// Only instances that have ended (completed, failed or terminated), last updated
    /// before this time; running instances never match.
    pub ended_before: Option<SystemTime>,
    /// Instances per page (at least 1). For [`Client::purge_orchestrations`], how many
    /// instances one store transaction deletes.
    pub page_size: usize,
    /// The `continuation` of the previous page.
    pub continuation: Option<String>,
}

impl Default for OrchestrationQuery {
    fn default() -> Self {
        Self {
            name: None,
            status: None,
            held: None,
            created_from: None,
            created_to: None,
            ended_before: None,
            page_size: 100,
            continuation: None,
        }
    }
}

/// One page of [`Client::query_orchestrations`], in creation order.
#[derive(Clone, Debug)]
pub struct OrchestrationPage {
    /// The instances of this page.
    pub instances: Vec<OrchestrationStatus>,
    /// Pass as `OrchestrationQuery::continuation` for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// The store's form of a client's instance query.
fn instance_query(query: OrchestrationQuery) -> InstanceQuery {
    InstanceQuery {
        name: query.name,
        status: query.status,
        held: query.held,
        created_from: query.created_from.map(to_millis),
        created_to: query.created_to.map(to_millis_ceil),
        ended_before: query.ended_before.map(to_millis_ceil),
        page_size: query.page_size.max(1),
        continuation: query.continuation,
    }
}

impl Client {
    /// Lists orchestration instances by name, status and creation time, one page at a time,
    /// in creation order.
    pub async fn query_orchestrations(
        &self,
        query: OrchestrationQuery,
    ) -> Result<OrchestrationPage> {
        let query = instance_query(query);
        let page = self.shared.store.query_instances(&query).await?;
        Ok(OrchestrationPage {
            instances: page
                .instances
                .into_iter()
                .map(OrchestrationStatus::from_record)
                .collect(),
            continuation: page.continuation,
        })
    }

    /// Purges every ended instance (completed, failed or terminated) that `query` selects by
    /// name, status, creation time and end time ([`OrchestrationQuery::ended_before`]), with
    /// its history, and returns how many it purged. Running instances are never purged,
    /// whatever the query says. It deletes `page_size` instances per store transaction, so
    /// that it neither holds everything in memory nor holds back the runtime's commits;
    /// `continuation` is ignored. Purged instances are gone from every read, and their ids
    /// can be used again.
    pub async fn purge_orchestrations(&self, query: OrchestrationQuery) -> Result<u64> {
        let query = InstanceQuery {
            continuation: None,
            ..instance_query(query)
        };
        let limit = query.page_size as u64;
        let mut purged = 0;
        loop {
            let n = self.shared.store.purge_instances(&query).await?;
            purged += n;
            if n < limit {
                return Ok(purged);
            }
        }
    }

    /// The history of an orchestration instance: its recorded events as JSON, in order;
    /// `None` if the instance does not exist.
    pub async fn orchestration_history(&self, instance_id: &str) -> Result<Option<Vec<Value>>> {
        if self
            .shared
            .store
            .read_instance(instance_id)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(self.shared.store.read_history(instance_id).await?))
    }

    /// Starts an orchestration with a new instance id; returns the id.
    pub async fn start_orchestration<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.start_orchestration_with_id(name, &id, input).await
    }

    /// Starts an orchestration under a chosen instance id; an id in use is an error.
    pub async fn start_orchestration_with_id<I: Serialize + ?Sized>(
        &self,
        name: &str,
        instance_id: &str,
        input: &I,
    ) -> Result<String> {
        self.check_start(name, instance_id)?;
        let input = crate::json::to_value(input)?;
        self.start_with_keys(name, instance_id, input, Vec::new(), None)
            .await
    }

    /// Refuses a start of an unknown orchestration or with an empty instance id.
    pub(crate) fn check_start(&self, name: &str, instance_id: &str) -> Result<()> {
        if !self.shared.registry.has_orchestration(name) {
            return Err(Error::UnknownFunction {
                kind: "orchestration",
                name: name.to_string(),
            });
        }
        if instance_id.is_empty() {
            return Err(Error::Config("an instance id cannot be empty".into()));
        }
        Ok(())
    }

    /// Starts an instance (name and id checked by the caller, see [`Client::check_start`])
    /// whose commit also stores `keys`.
    pub(crate) async fn start_with_keys(
        &self,
        name: &str,
        instance_id: &str,
        input: Value,
        keys: Vec<crate::store::IdempotencyKey>,
        keys_binding_since: Option<u64>,
    ) -> Result<String> {
        let now = self.shared.now_millis();
        // The record is written with the start message, so that the id is taken at once.
        let record = InstanceRecord {
            id: instance_id.to_string(),
            name: name.to_string(),
            status: RuntimeStatus::Running,
            input: input.clone(),
            output: None,
            created: now,
            updated: now,
            held: None,
        };
        let message = Message {
            id: self.shared.next_message_id(),
            target: Target::Instance(instance_id.to_string()),
            deliver_at: None,
            body: Body::Start {
                name: name.to_string(),
                input,
                parent: None,
            },
        };
        let batch = Batch {
            produced: vec![message],
            instances: vec![InstanceWrite {
                record,
                first_event: 0,
                events: Vec::new(),
                create: true,
                restart: false,
            }],
            keys,
            keys_binding_since,
            ..Batch::default()
        };
        match self.commit_and_deliver(batch, None).await {
            Err(Error::Store(err)) if err.is_conflict() => {
                return Err(Error::InstanceExists(instance_id.to_string()));
            }
            other => other?,
        }
        Ok(instance_id.to_string())
    }

    /// The status of an instance, or `None` if it does not exist (or has not started yet).
    pub async fn orchestration_status(
        &self,
        instance_id: &str,
    ) -> Result<Option<OrchestrationStatus>> {
        Ok(self
            .shared
            .store
            .read_instance(instance_id)
            .await?
            .map(OrchestrationStatus::from_record))
    }

    /// Waits until the instance has ended (completed, failed or terminated), at most `timeout`.
    pub async fn wait_for_orchestration(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<OrchestrationStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            self.shared
                .commands
                .send(Command::WatchInstance {
                    id: instance_id.to_string(),
                    done: tx,
                })
                .map_err(|_| Error::Shutdown)?;
            if let Some(status) = self.orchestration_status(instance_id).await? {
                if status.status.is_terminal() {
                    return Ok(status);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(timeout));
            }
            // The engine sends the final record once it is committed; the store is read again
            // now and then regardless, in case the end committed before the watch was set.
            let wait = (deadline - now).min(Duration::from_millis(200));
            if let Ok(Ok(record)) = tokio::time::timeout(wait, rx).await {
                return Ok(OrchestrationStatus::from_record(record));
            }
        }
    }

    /// Raises an external event on an instance (`ctx.wait_for_event(name)` receives it).
    pub async fn raise_event<D: Serialize + ?Sized>(
        &self,
        instance_id: &str,
        name: &str,
        data: &D,
    ) -> Result<()> {
        let data = crate::json::to_value(data)?;
        self.send_to_instance(
            instance_id,
            Body::Event {
                name: name.to_string(),
                data,
            },
        )
        .await
    }

    /// Terminates a running instance: it ends at once with status `Terminated`, and its locks
    /// are released. Terminating an ended instance does nothing.
    pub async fn terminate(&self, instance_id: &str, reason: &str) -> Result<()> {
        self.send_to_instance(
            instance_id,
            Body::Terminate {
                reason: reason.to_string(),
            },
        )
        .await
    }

    /// Deletes an ended instance and its history; returns whether there was one.
    pub async fn purge(&self, instance_id: &str) -> Result<bool> {
        match self.shared.store.read_instance(instance_id).await? {
            None => Ok(false),
            Some(record) if !record.status.is_terminal() => {
                Err(Error::InstanceRunning(instance_id.to_string()))
            }
            Some(_) => Ok(self.shared.store.purge_instance(instance_id).await?),
        }
    }

    async fn send_to_instance(&self, instance_id: &str, body: Body) -> Result<()> {
        match self.shared.store.read_instance(instance_id).await? {
            Some(record) if record.status.is_terminal() => return Ok(()),
            _ => {}
        }
        let message = Message {
            id: self.shared.next_message_id(),
            target: Target::Instance(instance_id.to_string()),
            deliver_at: None,
            body,
        };
        self.store_and_deliver(vec![message], None).await
    }
}
