//! The routes and their handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use entities_core::{
    Client, EntityId, EntityMetadata, EntityQuery, Error, OrchestrationQuery, OrchestrationStatus,
    RuntimeStatus, Schedule, ScheduleId,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub client: Client,
    pub max_wait: Duration,
    pub prometheus: Option<PrometheusHandle>,
    /// Whether a bearer token is required (the OpenAPI document says so).
    pub token_required: bool,
    /// Set once the shutdown signal of the server has fired: `/ready` answers 503.
    pub draining: Arc<AtomicBool>,
}

type ApiResult = Result<Response, ApiError>;

/// Most entities or instances on one page.
const MAX_PAGE_SIZE: usize = 10_000;

/// The routes: every route of [`crate::ROUTES`] with its state, JSON answers for unknown
/// routes and methods, and the body limit. The checks before them are in [`crate::guard`].
pub(crate) fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/entities", get(list_entities))
        .route("/entities/{name}/{key}", get(read_entity).put(set_state))
        .route("/entities/{name}/{key}/{operation}", post(call))
        .route("/entities/{name}/{key}/{operation}/send", post(signal))
        .route("/scheduled/{name}/{key}", get(scheduled))
        .route(
            "/scheduled/{name}/{key}/signals/{id}",
            delete(cancel_signal),
        )
        .route("/scheduled/{name}/{key}/schedules", post(add_schedule))
        .route(
            "/scheduled/{name}/{key}/schedules/{id}",
            delete(cancel_schedule),
        )
        .route("/locks", get(locks))
        .route("/stats", get(stats))
        .route("/ui", get(crate::ui::index))
        .route("/ui/", get(crate::ui::index))
        .route("/ui/app.js", get(crate::ui::script))
        .route("/ui/style.css", get(crate::ui::style))
        .route("/clean", post(clean))
        .route(
            "/orchestrations",
            get(list_orchestrations).delete(purge_orchestrations),
        )
        .route(
            "/orchestrations/{id}",
            get(orchestration).post(start).delete(purge),
        )
        .route("/orchestrations/{id}/history", get(history))
        .route("/orchestrations/{id}/events/{event}", post(raise))
        .route("/orchestrations/{id}/terminate", post(terminate))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method; see /openapi.json",
    )
}

/// The path parameters, or a 400 naming what is wrong with them.
fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
}

/// The query parameters, or a 400 naming what is wrong with them.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

/// The request body as JSON, `None` when empty; 400 when it is not JSON, 413 when too large.
fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Option<Value>, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, kind, e.body_text())
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn entity_id(name: &str, key: String) -> Result<EntityId, ApiError> {
    EntityId::try_new(name, key).map_err(ApiError::from)
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn entity_json(meta: EntityMetadata<Option<Value>>) -> Value {
    json!({
        "id": meta.id.to_string(),
        "name": meta.id.name(),
        "key": meta.id.key(),
        "state": meta.state,
        "last_modified": time(meta.last_modified),
        "locked_by": meta.locked_by,
        "pending_messages": meta.pending_messages,
    })
}

fn status_json(status: OrchestrationStatus) -> Value {
    json!({
        "id": status.instance_id,
        "name": status.name,
        "status": status.status,
        "input": status.input,
        "output": status.output,
        "error": status.error,
        "held": status.held,
        "created": time(status.created),
        "updated": time(status.updated),
    })
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn accepted(value: Value) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(value)).into_response())
}

/// The longest `Idempotency-Key` taken, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` header, if the request has one; 400 if it is not text, empty, or
/// longer than [`MAX_IDEMPOTENCY_KEY`] bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not text"))?;
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "the Idempotency-Key header is empty: give a key (a UUID, say), or no header",
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::bad_request(format!(
            "the Idempotency-Key header is {} bytes long; at most {MAX_IDEMPOTENCY_KEY} are taken",
            key.len()
        )));
    }
    Ok(Some(key.to_string()))
}

async fn call(
    State(app): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (name, key, operation) = path(params)?;
    let id = entity_id(&name, key)?;
    let input = body_json(body)?;
    let result = match idempotency_key(&headers)? {
        Some(k) => {
            app.client
                .idempotent(k)
                .call_entity_raw(&id, &operation, input)
                .await?
        }
        None => app.client.call_entity_raw(&id, &operation, input).await?,
    };
    ok(result.unwrap_or(Value::Null))
}

async fn signal(
    State(app): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (name, key, operation) = path(params)?;
    let id = entity_id(&name, key)?;
    let input = body_json(body)?;
    match idempotency_key(&headers)? {
        Some(k) => {
            app.client
                .idempotent(k)
                .signal_entity_raw(&id, &operation, input)
                .await?;
        }
        None => app.client.signal_entity_raw(&id, &operation, input).await?,
    }
    accepted(json!({ "id": id.to_string(), "operation": operation }))
}

/// A time as milliseconds since the Unix epoch.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn schedule_json(schedule: &Schedule) -> Value {
    match schedule {
        Schedule::Every { millis } => json!({ "every_ms": millis }),
        Schedule::Cron { expression } => json!({ "cron": expression }),
        other => json!({ "other": format!("{other:?}") }),
    }
}

async fn scheduled(
    State(app): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&name, key)?;
    let signals: Vec<Value> = app
        .client
        .pending_signals(&id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id, "operation": s.operation, "input": s.input,
                "due": time(s.due), "due_ms": millis(s.due),
            })
        })
        .collect();
    let schedules: Vec<Value> = app
        .client
        .schedules(&id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id.0, "operation": s.operation, "input": s.input,
                "schedule": schedule_json(&s.schedule),
                "next_fire": time(s.next_fire), "next_fire_ms": millis(s.next_fire),
            })
        })
        .collect();
    ok(json!({ "id": id.to_string(), "signals": signals, "schedules": schedules }))
}

/// A numeric id of a path, or a 400.
fn numeric_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a numeric id")))
}

async fn cancel_signal(
    State(app): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key, signal) = path(params)?;
    let id = entity_id(&name, key)?;
    let signal = numeric_id(&signal)?;
    if app.client.cancel_signal(&id, signal).await? {
        ok(json!({ "id": signal, "cancelled": true }))
    } else {
        Err(ApiError::not_found(format!(
            "{id} has no scheduled signal {signal} waiting"
        )))
    }
}

/// The body of `POST /scheduled/{name}/{key}/schedules`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSchedule {
    operation: String,
    #[serde(default)]
    input: Value,
    every_ms: Option<u64>,
    cron: Option<String>,
}

async fn add_schedule(
    State(app): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&name, key)?;
    let body = body_json(body)?
        .ok_or_else(|| ApiError::bad_request("the body must say what to schedule"))?;
    let new: NewSchedule = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid schedule: {e}")))?;
    let schedule = match (new.every_ms, new.cron) {
        (Some(ms), None) if ms > 0 => Schedule::every(Duration::from_millis(ms)),
        (None, Some(cron)) => Schedule::cron(&cron)?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `every_ms` (at least 1) and `cron`",
            ))
        }
    };
    let schedule = app
        .client
        .schedule(&id, &new.operation, &new.input, schedule)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": schedule.0 }))).into_response())
}

async fn cancel_schedule(
    State(app): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key, schedule) = path(params)?;
    let id = entity_id(&name, key)?;
    let schedule = ScheduleId(numeric_id(&schedule)?);
    if app.client.cancel_schedule(&id, schedule).await? {
        ok(json!({ "id": schedule.0, "cancelled": true }))
    } else {
        Err(ApiError::not_found(format!(
            "{id} has no schedule {schedule}"
        )))
    }
}

async fn read_entity(
    State(app): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&name, key)?;
    match app.client.get_entity_raw(&id).await? {
        Some(meta) => ok(entity_json(EntityMetadata {
            id: meta.id,
            state: Some(meta.state),
            last_modified: meta.last_modified,
            locked_by: meta.locked_by,
            pending_messages: meta.pending_messages,
        })),
        None => Err(ApiError::not_found(format!("{id} has no state"))),
    }
}

async fn set_state(
    State(app): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&name, key)?;
    let Some(state) = body_json(body)? else {
        return Err(ApiError::bad_request(
            "the body must be the new state, as JSON (to remove the state, call `delete`)",
        ));
    };
    app.client.set_entity_state(&id, &state).await?;
    ok(json!({ "id": id.to_string() }))
}

/// Query of `GET /entities`.
#[derive(Deserialize)]
struct EntityListQuery {
    name: Option<String>,
    prefix: Option<String>,
    page_size: Option<usize>,
    continuation: Option<String>,
    include_state: Option<bool>,
    include_stateless: Option<bool>,
}

async fn list_entities(
    State(app): State<AppState>,
    params: Result<Query<EntityListQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(params)?;
    let page = app
        .client
        .query_entities(EntityQuery {
            name: q.name.filter(|n| !n.is_empty()),
            key_prefix: q.prefix.filter(|p| !p.is_empty()),
            include_state: q.include_state.unwrap_or(true),
            include_stateless: q.include_stateless.unwrap_or(false),
            page_size: q.page_size.unwrap_or(100).clamp(1, MAX_PAGE_SIZE),
            continuation: q.continuation.filter(|c| !c.is_empty()),
        })
        .await
        .map_err(continuation_error)?;
    ok(json!({
        "entities": page.entities.into_iter().map(entity_json).collect::<Vec<_>>(),
        "continuation": page.continuation,
    }))
}

/// A store error from a query is most likely a continuation token that was tampered with.
fn continuation_error(err: Error) -> ApiError {
    match &err {
        Error::Store(store) if store.to_string().contains("continuation") => {
            ApiError::bad_request(err.to_string())
        }
        _ => err.into(),
    }
}

async fn locks(State(app): State<AppState>) -> ApiResult {
    let locks = app.client.locks().await?;
    ok(Value::Array(
        locks
            .into_iter()
            .map(|lock| {
                json!({
                    "id": lock.id.to_string(),
                    "name": lock.id.name(),
                    "key": lock.id.key(),
                    "owner": lock.owner,
                    "waiting": lock.waiting.into_iter().map(|w| json!({
                        "kind": if w.operation.is_some() { "operation" } else { "lock" },
                        "operation": w.operation,
                        "sender": w.sender,
                        "call": w.call,
                        "waiting_ms": w.waited.map(|d| d.as_millis() as u64),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    ))
}

/// `GET /stats`: what the overview shows: entities by name, instances by status, the stored
/// counts and the operations that failed lately.
async fn stats(State(app): State<AppState>) -> ApiResult {
    let counts = app.client.entity_counts().await?;
    let stats = app.client.store_stats().await?;
    let mut by_status = serde_json::Map::new();
    for status in [
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
    ] {
        let count = stats
            .instances_by_status
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .sum::<u64>();
        by_status.insert(format!("{status:?}"), json!(count));
    }
    ok(json!({
        "entities": counts.into_iter().map(|(name, count)| json!({ "name": name, "count": count }))
            .collect::<Vec<_>>(),
        "orchestrations": by_status,
        "held_orchestrations": stats.instances_held,
        "locked_entities": stats.locked_entities,
        "scheduled_messages": stats.scheduled_messages,
        "stored_messages": stats.messages,
        "recent_failures": app.client.recent_failures().into_iter().map(|f| json!({
            "at": time(f.at),
            "entity": f.entity.to_string(),
            "operation": f.operation,
            "message": f.message,
        })).collect::<Vec<_>>(),
    }))
}

async fn clean(State(app): State<AppState>) -> ApiResult {
    let done = app.client.clean_entity_storage().await?;
    ok(json!({
        "removed_entities": done.removed_entities,
        "released_locks": done.released_locks,
    }))
}

/// Query of `POST /orchestrations/{name}`.
#[derive(Deserialize)]
struct StartQuery {
    id: Option<String>,
}

async fn start(
    State(app): State<AppState>,
    params: Result<Path<String>, PathRejection>,
    q: Result<Query<StartQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let name = path(params)?;
    let q = query(q)?;
    let input = body_json(body)?.unwrap_or(Value::Null);
    let key = idempotency_key(&headers)?;
    let id = match (q.id.filter(|id| !id.is_empty()), key) {
        (Some(id), Some(k)) => {
            app.client
                .idempotent(k)
                .start_orchestration_with_id(&name, &id, &input)
                .await?
        }
        (Some(id), None) => {
            app.client
                .start_orchestration_with_id(&name, &id, &input)
                .await?
        }
        (None, Some(k)) => {
            app.client
                .idempotent(k)
                .start_orchestration(&name, &input)
                .await?
        }
        (None, None) => app.client.start_orchestration(&name, &input).await?,
    };
    accepted(json!({ "id": id }))
}

/// Query of `GET /orchestrations/{id}`.
#[derive(Deserialize)]
struct StatusQuery {
    wait: Option<String>,
}

async fn orchestration(
    State(app): State<AppState>,
    params: Result<Path<String>, PathRejection>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> ApiResult {
    let id = path(params)?;
    let wait = match query(q)?.wait.filter(|w| !w.is_empty()) {
        Some(text) => Some(parse_wait(&text)?.min(app.max_wait)),
        None => None,
    };
    let Some(status) = app.client.orchestration_status(&id).await? else {
        return Err(instance_not_found(&id));
    };
    let status = match wait {
        Some(wait) if !status.status.is_terminal() => {
            match app.client.wait_for_orchestration(&id, wait).await {
                Ok(done) => done,
                Err(Error::Timeout(_)) => app
                    .client
                    .orchestration_status(&id)
                    .await?
                    .ok_or_else(|| instance_not_found(&id))?,
                Err(err) => return Err(err.into()),
            }
        }
        _ => status,
    };
    ok(status_json(status))
}

/// A duration such as `5s`, `250ms` or `1m`; a bare number is seconds.
fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|e| {
        ApiError::bad_request(format!(
            "`wait={text}` is not a duration such as `5s` or `250ms`: {e}"
        ))
    })
}

fn instance_not_found(id: &str) -> ApiError {
    ApiError::from(Error::InstanceNotFound(id.to_string()))
}

async fn history(
    State(app): State<AppState>,
    params: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path(params)?;
    match app.client.orchestration_history(&id).await? {
        Some(events) => ok(json!({ "id": id, "events": events })),
        None => Err(instance_not_found(&id)),
    }
}

/// Query of `GET /orchestrations`.
#[derive(Deserialize)]
struct InstanceListQuery {
    name: Option<String>,
    status: Option<String>,
    created_from: Option<String>,
    created_to: Option<String>,
    ended_before: Option<String>,
    page_size: Option<usize>,
    continuation: Option<String>,
}

impl InstanceListQuery {
    /// The client query this one asks for; 400 for a bad status or time.
    fn into_query(self) -> Result<OrchestrationQuery, ApiError> {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let time =
            |field: &str, s: Option<String>| nonempty(s).map(|t| parse_time(field, &t)).transpose();
        let status = nonempty(self.status)
            .as_deref()
            .map(parse_status)
            .transpose()?;
        Ok(OrchestrationQuery {
            name: nonempty(self.name),
            status: status.map(|(status, _)| status),
            held: status.and_then(|(_, held)| held),
            created_from: time("created_from", self.created_from)?,
            created_to: time("created_to", self.created_to)?,
            ended_before: time("ended_before", self.ended_before)?,
            page_size: self.page_size.unwrap_or(100).clamp(1, MAX_PAGE_SIZE),
            continuation: nonempty(self.continuation),
        })
    }
}

/// A status filter: a status, and for `held` (running instances that are held) the held
/// filter too.
fn parse_status(text: &str) -> Result<(RuntimeStatus, Option<bool>), ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "running" => Ok((RuntimeStatus::Running, None)),
        "held" => Ok((RuntimeStatus::Running, Some(true))),
        "completed" => Ok((RuntimeStatus::Completed, None)),
        "failed" => Ok((RuntimeStatus::Failed, None)),
        "terminated" => Ok((RuntimeStatus::Terminated, None)),
        _ => Err(ApiError::bad_request(format!(
            "`status={text}` is none of running, held, completed, failed, terminated"
        ))),
    }
}

fn parse_time(field: &str, text: &str) -> Result<SystemTime, ApiError> {
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        ApiError::bad_request(format!(
            "`{field}={text}` is not an RFC 3339 time such as 2024-05-01T12:00:00Z: {e}"
        ))
    })
}

async fn list_orchestrations(
    State(app): State<AppState>,
    params: Result<Query<InstanceListQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(params)?.into_query()?;
    let page = app
        .client
        .query_orchestrations(q)
        .await
        .map_err(continuation_error)?;
    ok(json!({
        "instances": page.instances.into_iter().map(status_json).collect::<Vec<_>>(),
        "continuation": page.continuation,
    }))
}

/// Purges the ended instances a query selects; at least one filter is needed.
async fn purge_orchestrations(
    State(app): State<AppState>,
    params: Result<Query<InstanceListQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(params)?.into_query()?;
    if q.name.is_none()
        && q.status.is_none()
        && q.created_from.is_none()
        && q.created_to.is_none()
        && q.ended_before.is_none()
    {
        return Err(ApiError::bad_request(
            "give at least one of name, status, created_from, created_to and ended_before \
             (status=completed purges every completed instance)",
        ));
    }
    let purged = app.client.purge_orchestrations(q).await?;
    ok(json!({ "purged": purged }))
}

/// The instance exists, or a 404.
async fn existing(app: &AppState, id: &str) -> Result<(), ApiError> {
    match app.client.orchestration_status(id).await? {
        Some(_) => Ok(()),
        None => Err(instance_not_found(id)),
    }
}

async fn raise(
    State(app): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (id, event) = path(params)?;
    let data = body_json(body)?.unwrap_or(Value::Null);
    existing(&app, &id).await?;
    app.client.raise_event(&id, &event, &data).await?;
    accepted(json!({ "id": id, "event": event }))
}

async fn terminate(
    State(app): State<AppState>,
    params: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = path(params)?;
    let reason = match body_json(body)? {
        None => "terminated through the HTTP API".to_string(),
        Some(Value::String(reason)) => reason,
        Some(other) => other.to_string(),
    };
    existing(&app, &id).await?;
    app.client.terminate(&id, &reason).await?;
    accepted(json!({ "id": id }))
}

async fn purge(
    State(app): State<AppState>,
    params: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path(params)?;
    if app.client.purge(&id).await? {
        ok(json!({ "id": id, "purged": true }))
    } else {
        Err(instance_not_found(&id))
    }
}

async fn health(State(app): State<AppState>) -> Response {
    if app.client.is_shut_down() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shut_down",
            "the runtime is shut down",
        )
        .into_response()
    } else {
        Json(json!({ "status": "ok" })).into_response()
    }
}

/// Readiness, for load balancers: 200 while this process can serve; 503 with the reason
/// while the server drains, once the runtime has shut down, or while the store does not
/// answer (within the ping timeout of [`Client::ready`]).
async fn ready(State(app): State<AppState>) -> Response {
    if app.draining.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down: it finishes the requests under way and takes no new ones",
        )
        .into_response();
    }
    match app.client.ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(Error::Shutdown) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shut_down",
            "the runtime is shut down",
        )
        .into_response(),
        Err(err) => {
            let cause = match &err {
                Error::Store(store) => store.to_string(),
                other => other.to_string(),
            };
            tracing::warn!(error = %cause, "not ready: the store cannot be reached");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the store cannot be reached: {cause}"),
            )
            .into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let text = match &app.prometheus {
        Some(handle) => {
            if let Err(err) = app.client.record_store_metrics().await {
                tracing::debug!(error = %err, "the store's gauges are not refreshed");
            }
            handle.run_upkeep();
            handle.render()
        }
        None => "# no Prometheus recorder: another metrics recorder was installed first\n".into(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi(State(app): State<AppState>) -> Response {
    let doc = crate::openapi::openapi();
    let doc = if app.token_required {
        crate::openapi::with_token(doc)
    } else {
        doc
    };
    Json(doc).into_response()
}
