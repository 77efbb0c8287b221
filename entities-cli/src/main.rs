//! `entities`: the command-line tool of the `entities` framework.
//!
//! It talks to a running runtime through its HTTP API (`--url`, `--token`, or the
//! environment variables `ENTITIES_URL` and `ENTITIES_TOKEN`), or reads an SQLite store
//! directly, read-only, with no runtime running (`--db PATH`: `list`, `show`,
//! `orchestrations`, `orchestration`). It prints tables for people, and JSON with `--json`.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage or input, 3 not found, 4 the operation
//! failed, 5 conflict (instance exists or still running), 6 unauthorized, 7 unreachable or
//! shut down.

mod backend;
mod error;
mod render;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use entities_core::EntityId;
use entities_sqlite::SqliteStore;
use reqwest::Method;
use serde_json::{json, Value};

use crate::backend::{entity_path, segment, EntityFilter, HttpApi, InstanceFilter, Source};
use crate::error::CliError;

/// Inspect, signal, call and repair durable entities and orchestrations.
#[derive(Debug, Parser)]
#[command(name = "entities", version, about)]
struct Cli {
    /// The runtime's HTTP API.
    #[arg(
        long,
        global = true,
        env = "ENTITIES_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The API's bearer token.
    #[arg(long, global = true, env = "ENTITIES_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read this SQLite store directly, read-only, instead of the HTTP API (for `list`,
    /// `show`, `orchestrations`, `orchestration`).
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List entities (with state, unless --all lists those without too).
    List {
        /// Only entities of this name.
        name: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Also list entities that have no state (locked or with messages waiting).
        #[arg(long)]
        all: bool,
        /// Stop after this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show an entity's state and metadata.
    Show {
        /// The entity, as @name@key.
        id: String,
    },
    /// Signal an operation (one-way); returns once it is durably stored.
    Signal {
        /// The entity, as @name@key.
        id: String,
        /// The operation.
        operation: String,
        /// The input, as JSON (quote strings: '"text"').
        input: Option<String>,
        /// Apply it once per key: a retry with the same key returns what the first send did.
        #[arg(long)]
        key: Option<String>,
    },
    /// Call an operation and print its result.
    Call {
        /// The entity, as @name@key.
        id: String,
        /// The operation.
        operation: String,
        /// The input, as JSON (quote strings: '"text"').
        input: Option<String>,
        /// Apply it once per key: a retry with the same key returns what the first send did.
        #[arg(long)]
        key: Option<String>,
    },
    /// Edit an entity's state in $EDITOR; it is written back in the entity's queue.
    Edit {
        /// The entity, as @name@key.
        id: String,
    },
    /// Delete an entity's state (its `delete` operation).
    Delete {
        /// The entity, as @name@key.
        id: String,
    },
    /// Remove empty entities and release the locks of ended orchestrations.
    Clean,
    /// List locked entities and the orchestration holding each.
    Locks,
    /// List orchestration instances.
    Orchestrations {
        /// Only instances with this status (running, held, completed, failed, terminated; held
        /// lists the running instances that are held).
        #[arg(long)]
        status: Option<String>,
        /// Only instances of this orchestration.
        #[arg(long)]
        name: Option<String>,
        /// Stop after this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show an orchestration instance.
    Orchestration {
        /// The instance id.
        id: String,
        /// Also print its history.
        #[arg(long)]
        history: bool,
    },
    /// Start an orchestration; prints the instance id.
    Start {
        /// The orchestration name.
        name: String,
        /// The input, as JSON.
        input: Option<String>,
        /// The instance id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
        /// Apply it once per key: a retry with the same key returns what the first send did.
        #[arg(long)]
        key: Option<String>,
    },
    /// List an entity's scheduled signals and recurring schedules.
    Scheduled {
        /// The entity, as @name@key.
        id: String,
    },
    /// Cancel a scheduled signal that has not run (ids from `scheduled`).
    CancelSignal {
        /// The entity, as @name@key.
        id: String,
        /// The signal's id.
        signal: u64,
    },
    /// Start a recurring schedule that signals an operation; prints its id.
    Schedule {
        /// The entity, as @name@key.
        id: String,
        /// The operation each fire signals.
        operation: String,
        /// The input, as JSON.
        input: Option<String>,
        /// Fire every this many milliseconds.
        #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
        every_ms: Option<u64>,
        /// Fire on a cron expression with seconds, in UTC ("0 */5 * * * *").
        #[arg(long)]
        cron: Option<String>,
    },
    /// Stop a recurring schedule (ids from `scheduled`).
    Unschedule {
        /// The entity, as @name@key.
        id: String,
        /// The schedule's id.
        schedule: u64,
    },
    /// Raise an event on an orchestration instance.
    Raise {
        /// The instance id.
        id: String,
        /// The event name.
        event: String,
        /// The event data, as JSON.
        data: Option<String>,
    },
    /// Terminate an orchestration instance.
    Terminate {
        /// The instance id.
        id: String,
        /// Why.
        reason: Option<String>,
    },
    /// Purge an ended orchestration instance and its history.
    Purge {
        /// The instance id.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(error::code::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

fn entity_id(text: &str) -> Result<EntityId, CliError> {
    text.parse::<EntityId>()
        .map_err(|e| CliError::Usage(format!("{e} (write the entity as @name@key)")))
}

/// The path of an entity's scheduled signals and schedules.
fn scheduled_path(id: &EntityId) -> String {
    format!("/scheduled/{}/{}", segment(id.name()), segment(id.key()))
}

fn parse_json(text: Option<&str>) -> Result<Option<Value>, CliError> {
    text.map(|text| {
        serde_json::from_str(text).map_err(|source| CliError::Json {
            text: text.to_string(),
            source,
        })
    })
    .transpose()
}

/// Prints `value` as JSON, or as `table` renders it.
fn print(json: bool, value: &Value, table: impl FnOnce(&Value) -> String) {
    let text = if json {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        table(value)
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.trim_end());
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let api = HttpApi::new(&cli.url, cli.token.clone());
    let source = match &cli.db {
        Some(path) => Source::Db(SqliteStore::open_read_only(path)?),
        None => Source::Http(HttpApi::new(&cli.url, cli.token.clone())),
    };
    let json = cli.json;
    let needs_api = |what: &str| -> Result<(), CliError> {
        if cli.db.is_some() {
            return Err(CliError::Usage(format!(
                "`{what}` needs a running runtime: drop --db and give --url"
            )));
        }
        Ok(())
    };
    match cli.command {
        Command::List {
            name,
            prefix,
            all,
            limit,
        } => {
            let mut filter = EntityFilter {
                name,
                prefix,
                include_stateless: all,
                page_size: limit.clamp(1, 1000),
                continuation: None,
            };
            let mut entities = Vec::new();
            loop {
                let page = source.entities(&filter).await?;
                if let Some(list) = page["entities"].as_array() {
                    entities.extend(list.iter().cloned());
                }
                match page["continuation"].as_str() {
                    Some(next) if entities.len() < limit => {
                        filter.continuation = Some(next.to_string());
                    }
                    _ => break,
                }
            }
            entities.truncate(limit);
            print(json, &Value::Array(entities), render::entities);
        }
        Command::Show { id } => {
            let id = entity_id(&id)?;
            let entity = source.entity(&id).await?;
            print(json, &entity, render::entity);
        }
        Command::Signal {
            id,
            operation,
            input,
            key,
        } => {
            needs_api("signal")?;
            let id = entity_id(&id)?;
            let input = parse_json(input.as_deref())?;
            let path = format!("{}/{}/send", entity_path(&id), segment(&operation));
            let answer = api
                .post_keyed(&path, &[], input.as_ref(), key.as_deref())
                .await?;
            print(json, &answer, |_| {
                format!("signal {operation} to {id} stored")
            });
        }
        Command::Call {
            id,
            operation,
            input,
            key,
        } => {
            needs_api("call")?;
            let id = entity_id(&id)?;
            let input = parse_json(input.as_deref())?;
            let path = format!("{}/{}", entity_path(&id), segment(&operation));
            let result = api
                .post_keyed(&path, &[], input.as_ref(), key.as_deref())
                .await?;
            // A result is JSON either way.
            print(true, &result, |_| String::new());
        }
        Command::Edit { id } => {
            needs_api("edit")?;
            let id = entity_id(&id)?;
            edit(&api, &id, json).await?;
        }
        Command::Delete { id } => {
            needs_api("delete")?;
            let id = entity_id(&id)?;
            let answer = api
                .post(&format!("{}/delete", entity_path(&id)), &[], None)
                .await?;
            print(json, &answer, |_| format!("{id} deleted"));
        }
        Command::Clean => {
            needs_api("clean")?;
            let answer = api.post("/clean", &[], None).await?;
            print(json, &answer, |v| {
                format!(
                    "removed {} empty entities, released {} locks",
                    v["removed_entities"], v["released_locks"]
                )
            });
        }
        Command::Locks => {
            needs_api("locks")?;
            let answer = api.get("/locks", &[]).await?;
            print(json, &answer, render::locks);
        }
        Command::Orchestrations {
            status,
            name,
            limit,
        } => {
            let mut filter = InstanceFilter {
                name,
                status,
                page_size: limit.clamp(1, 1000),
                continuation: None,
            };
            let mut instances = Vec::new();
            loop {
                let page = source.instances(&filter).await?;
                if let Some(list) = page["instances"].as_array() {
                    instances.extend(list.iter().cloned());
                }
                match page["continuation"].as_str() {
                    Some(next) if instances.len() < limit => {
                        filter.continuation = Some(next.to_string());
                    }
                    _ => break,
                }
            }
            instances.truncate(limit);
            print(json, &Value::Array(instances), render::instances);
        }
        Command::Orchestration { id, history } => {
            let mut status = source.instance(&id).await?;
            if history {
                let events = source.history(&id).await?;
                status["history"] = events["events"].clone();
            }
            print(json, &status, render::instance);
        }
        Command::Start {
            name,
            input,
            id,
            key,
        } => {
            needs_api("start")?;
            let input = parse_json(input.as_deref())?;
            let query: Vec<(&str, String)> = id.into_iter().map(|id| ("id", id)).collect();
            let answer = api
                .post_keyed(
                    &format!("/orchestrations/{}", segment(&name)),
                    &query,
                    input.as_ref(),
                    key.as_deref(),
                )
                .await?;
            print(json, &answer, |v| {
                v["id"].as_str().unwrap_or_default().to_string()
            });
        }
        Command::Raise { id, event, data } => {
            needs_api("raise")?;
            let data = parse_json(data.as_deref())?;
            let path = format!(
                "/orchestrations/{}/events/{}",
                segment(&id),
                segment(&event)
            );
            let answer = api.post(&path, &[], data.as_ref()).await?;
            print(json, &answer, |_| format!("event {event} raised on {id}"));
        }
        Command::Terminate { id, reason } => {
            needs_api("terminate")?;
            let path = format!("/orchestrations/{}/terminate", segment(&id));
            let reason = reason.map(Value::String);
            let answer = api.post(&path, &[], reason.as_ref()).await?;
            print(json, &answer, |_| format!("{id} terminated"));
        }
        Command::Scheduled { id } => {
            needs_api("scheduled")?;
            let id = entity_id(&id)?;
            let answer = api.get(&scheduled_path(&id), &[]).await?;
            print(json, &answer, render::scheduled);
        }
        Command::CancelSignal { id, signal } => {
            needs_api("cancel-signal")?;
            let id = entity_id(&id)?;
            let path = format!("{}/signals/{signal}", scheduled_path(&id));
            let answer = api.request(Method::DELETE, &path, &[], None).await?;
            print(json, &answer, |_| {
                format!("signal {signal} of {id} cancelled")
            });
        }
        Command::Schedule {
            id,
            operation,
            input,
            every_ms,
            cron,
        } => {
            needs_api("schedule")?;
            let id = entity_id(&id)?;
            let mut body = json!({ "operation": operation });
            if let Some(input) = parse_json(input.as_deref())? {
                body["input"] = input;
            }
            match (every_ms, cron) {
                (Some(ms), _) => body["every_ms"] = json!(ms),
                (None, Some(cron)) => body["cron"] = json!(cron),
                (None, None) => {
                    return Err(CliError::Usage("give --every-ms or --cron".into()));
                }
            }
            let path = format!("{}/schedules", scheduled_path(&id));
            let answer = api.post(&path, &[], Some(&body)).await?;
            print(json, &answer, |v| v["id"].to_string());
        }
        Command::Unschedule { id, schedule } => {
            needs_api("unschedule")?;
            let id = entity_id(&id)?;
            let path = format!("{}/schedules/{schedule}", scheduled_path(&id));
            let answer = api.request(Method::DELETE, &path, &[], None).await?;
            print(json, &answer, |_| {
                format!("schedule {schedule} of {id} stopped")
            });
        }
        Command::Purge { id } => {
            needs_api("purge")?;
            let answer = api
                .request(
                    Method::DELETE,
                    &format!("/orchestrations/{}", segment(&id)),
                    &[],
                    None,
                )
                .await?;
            print(json, &answer, |_| format!("{id} purged"));
        }
    }
    Ok(())
}

/// Opens the entity's state in `$VISUAL` or `$EDITOR` (default `vi`) and writes the edited
/// state back with `PUT /entities/{name}/{key}` (which runs in the entity's queue).
async fn edit(api: &HttpApi, id: &EntityId, json: bool) -> Result<(), CliError> {
    let current = api.get(&entity_path(id), &[]).await?;
    let before = serde_json::to_string_pretty(&current["state"]).unwrap_or_default() + "\n";
    let io = |context: &str| {
        let context = context.to_string();
        move |source| CliError::Io { context, source }
    };
    let mut file = tempfile::Builder::new()
        .prefix("entity-")
        .suffix(".json")
        .tempfile()
        .map_err(io("cannot create a temporary file"))?;
    file.write_all(before.as_bytes())
        .map_err(io("cannot write the temporary file"))?;
    let set = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    let editor = set("VISUAL")
        .or_else(|| set("EDITOR"))
        .unwrap_or_else(|| "vi".to_string());
    // Through the shell, so that an editor given with arguments (`code --wait`) works.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("entities-edit")
        .arg(file.path())
        .status()
        .map_err(io(&format!("cannot run the editor `{editor}`")))?;
    if !status.success() {
        return Err(CliError::Usage(format!(
            "the editor `{editor}` exited with {status}; nothing was written"
        )));
    }
    let after = std::fs::read_to_string(file.path()).map_err(io("cannot read the edited file"))?;
    let state: Value = serde_json::from_str(&after).map_err(|source| CliError::Json {
        text: after.trim().to_string(),
        source,
    })?;
    if state == current["state"] {
        print(
            json,
            &json!({ "id": id.to_string(), "changed": false }),
            |_| format!("{id}: no change"),
        );
        return Ok(());
    }
    api.request(Method::PUT, &entity_path(id), &[], Some(&state))
        .await?;
    print(
        json,
        &json!({ "id": id.to_string(), "changed": true }),
        |_| format!("{id}: state written"),
    );
    Ok(())
}
