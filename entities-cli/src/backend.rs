//! Where the data comes from: a running runtime's HTTP API, or an SQLite store read directly
//! (`--db`). Both answer in the JSON shapes of the HTTP API, so that one renderer serves both.

use std::time::{Duration, UNIX_EPOCH};

use entities_core::store::{EntityQuery, InstanceQuery, InstanceRecord, RuntimeStatus, Store};
use entities_core::EntityId;
use entities_sqlite::SqliteStore;
use reqwest::Method;
use serde_json::{json, Value};

use crate::error::CliError;

/// The HTTP API of a running runtime.
pub(crate) struct HttpApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Percent-encodes a path segment (every byte but unreserved ones).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The path of an entity: `/entities/{name}/{key}`.
pub(crate) fn entity_path(id: &EntityId) -> String {
    format!("/entities/{}/{}", segment(id.name()), segment(id.key()))
}

impl HttpApi {
    pub(crate) fn new(url: &str, token: Option<String>) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request; the answer's JSON, or the error it carries.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.request_keyed(method, path, query, body, None).await
    }

    /// [`HttpApi::request`] with an `Idempotency-Key` header when `key` is given.
    pub(crate) async fn request_keyed(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let connect = |source| CliError::Connect {
            url: self.base.clone(),
            source,
        };
        let response = req.send().await.map_err(connect)?;
        let status = response.status();
        let text = response.text().await.map_err(connect)?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return Ok(value.unwrap_or(Value::Null));
        }
        let message = value
            .as_ref()
            .and_then(|v| v["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| text.trim().to_string());
        Err(CliError::Api {
            status: status.as_u16(),
            message,
        })
    }

    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.request(Method::GET, path, query, None).await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.request(Method::POST, path, query, body).await
    }

    /// A POST applied once per idempotency key, if one is given.
    pub(crate) async fn post_keyed(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<Value, CliError> {
        self.request_keyed(Method::POST, path, query, body, key)
            .await
    }
}

/// The source of the read-only commands.
pub(crate) enum Source {
    Http(HttpApi),
    Db(SqliteStore),
}

/// A page query of entities.
pub(crate) struct EntityFilter {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub include_stateless: bool,
    pub page_size: usize,
    pub continuation: Option<String>,
}

/// A page query of instances.
pub(crate) struct InstanceFilter {
    pub name: Option<String>,
    pub status: Option<String>,
    pub page_size: usize,
    pub continuation: Option<String>,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A status filter: a status, and for `held` (running instances that are held) the held
/// filter too.
fn parse_status(text: &str) -> Result<(RuntimeStatus, Option<bool>), CliError> {
    match text.to_ascii_lowercase().as_str() {
        "running" => Ok((RuntimeStatus::Running, None)),
        "held" => Ok((RuntimeStatus::Running, Some(true))),
        "completed" => Ok((RuntimeStatus::Completed, None)),
        "failed" => Ok((RuntimeStatus::Failed, None)),
        "terminated" => Ok((RuntimeStatus::Terminated, None)),
        _ => Err(CliError::Usage(format!(
            "`{text}` is none of running, held, completed, failed, terminated"
        ))),
    }
}

/// An instance record in the shape of `GET /orchestrations/{id}`.
fn instance_json(record: InstanceRecord) -> Value {
    let (output, error) = match record.status {
        RuntimeStatus::Completed => (record.output, None),
        RuntimeStatus::Running => (None, None),
        RuntimeStatus::Failed | RuntimeStatus::Terminated => (
            None,
            record.output.map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            }),
        ),
    };
    json!({
        "id": record.id,
        "name": record.name,
        "status": record.status,
        "input": record.input,
        "output": output,
        "error": error,
        "held": record.held,
        "created": time(record.created),
        "updated": time(record.updated),
    })
}

impl Source {
    /// A page of entities, as `GET /entities` answers.
    pub(crate) async fn entities(&self, f: &EntityFilter) -> Result<Value, CliError> {
        match self {
            Source::Http(api) => {
                let mut query = vec![
                    ("page_size", f.page_size.to_string()),
                    ("include_stateless", f.include_stateless.to_string()),
                ];
                if let Some(name) = &f.name {
                    query.push(("name", name.clone()));
                }
                if let Some(prefix) = &f.prefix {
                    query.push(("prefix", prefix.clone()));
                }
                if let Some(c) = &f.continuation {
                    query.push(("continuation", c.clone()));
                }
                api.get("/entities", &query).await
            }
            Source::Db(store) => {
                let page = store
                    .query_entities(&EntityQuery {
                        name: f.name.as_ref().map(|n| n.to_lowercase()),
                        key_prefix: f.prefix.clone(),
                        include_state: true,
                        include_stateless: f.include_stateless,
                        page_size: f.page_size.max(1),
                        continuation: f.continuation.clone(),
                    })
                    .await
                    .map_err(entities_core::Error::from)?;
                let entities: Vec<Value> = page
                    .entities
                    .into_iter()
                    .map(|r| {
                        json!({
                            "id": r.id.to_string(),
                            "name": r.id.name(),
                            "key": r.id.key(),
                            "state": r.state,
                            "last_modified": time(r.last_modified),
                            "locked_by": r.lock_owner,
                            "pending_messages": r.pending_messages,
                        })
                    })
                    .collect();
                Ok(json!({ "entities": entities, "continuation": page.continuation }))
            }
        }
    }

    /// One entity, as `GET /entities/{name}/{key}` answers.
    pub(crate) async fn entity(&self, id: &EntityId) -> Result<Value, CliError> {
        match self {
            Source::Http(api) => api.get(&entity_path(id), &[]).await,
            Source::Db(store) => {
                let record = store
                    .read_entity(id)
                    .await
                    .map_err(entities_core::Error::from)?;
                match record {
                    Some(r) if r.state.is_some() => Ok(json!({
                        "id": r.id.to_string(),
                        "name": r.id.name(),
                        "key": r.id.key(),
                        "state": r.state,
                        "last_modified": time(r.last_modified),
                        "locked_by": r.lock_owner,
                        "pending_messages": r.pending_messages,
                    })),
                    _ => Err(CliError::NotFound(format!("{id} has no state"))),
                }
            }
        }
    }

    /// A page of instances, as `GET /orchestrations` answers.
    pub(crate) async fn instances(&self, f: &InstanceFilter) -> Result<Value, CliError> {
        match self {
            Source::Http(api) => {
                let mut query = vec![("page_size", f.page_size.to_string())];
                if let Some(name) = &f.name {
                    query.push(("name", name.clone()));
                }
                if let Some(status) = &f.status {
                    query.push(("status", status.clone()));
                }
                if let Some(c) = &f.continuation {
                    query.push(("continuation", c.clone()));
                }
                api.get("/orchestrations", &query).await
            }
            Source::Db(store) => {
                let status = f.status.as_deref().map(parse_status).transpose()?;
                let page = store
                    .query_instances(&InstanceQuery {
                        name: f.name.clone(),
                        status: status.map(|(status, _)| status),
                        held: status.and_then(|(_, held)| held),
                        created_from: None,
                        created_to: None,
                        ended_before: None,
                        page_size: f.page_size.max(1),
                        continuation: f.continuation.clone(),
                    })
                    .await
                    .map_err(entities_core::Error::from)?;
                let instances: Vec<Value> = page.instances.into_iter().map(instance_json).collect();
                Ok(json!({ "instances": instances, "continuation": page.continuation }))
            }
        }
    }

    /// One instance, as `GET /orchestrations/{id}` answers.
    pub(crate) async fn instance(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Source::Http(api) => {
                api.get(&format!("/orchestrations/{}", segment(id)), &[])
                    .await
            }
            Source::Db(store) => match store
                .read_instance(id)
                .await
                .map_err(entities_core::Error::from)?
            {
                Some(record) => Ok(instance_json(record)),
                None => Err(CliError::NotFound(format!(
                    "orchestration instance `{id}` not found"
                ))),
            },
        }
    }

    /// An instance's history, as `GET /orchestrations/{id}/history` answers.
    pub(crate) async fn history(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Source::Http(api) => {
                api.get(&format!("/orchestrations/{}/history", segment(id)), &[])
                    .await
            }
            Source::Db(store) => {
                self.instance(id).await?;
                let events = store
                    .read_history(id)
                    .await
                    .map_err(entities_core::Error::from)?;
                Ok(json!({ "id": id, "events": events }))
            }
        }
    }
}
