//! The OpenAPI 3.0 document of the API, served at `/openapi.json`. The tests check that its
//! paths and methods are exactly [`ROUTES`], and that the router answers each of them.

use serde_json::{json, Map, Value};

/// Every route of the API: its path (OpenAPI template syntax) and methods (lower case).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/entities", &["get"]),
    ("/entities/{name}/{key}", &["get", "put"]),
    ("/entities/{name}/{key}/{operation}", &["post"]),
    ("/entities/{name}/{key}/{operation}/send", &["post"]),
    ("/scheduled/{name}/{key}", &["get"]),
    ("/scheduled/{name}/{key}/signals/{id}", &["delete"]),
    ("/scheduled/{name}/{key}/schedules", &["post"]),
    ("/scheduled/{name}/{key}/schedules/{id}", &["delete"]),
    ("/locks", &["get"]),
    ("/stats", &["get"]),
    ("/clean", &["post"]),
    ("/orchestrations", &["get", "delete"]),
    ("/orchestrations/{id}", &["get", "post", "delete"]),
    ("/orchestrations/{id}/history", &["get"]),
    ("/orchestrations/{id}/events/{event}", &["post"]),
    ("/orchestrations/{id}/terminate", &["post"]),
    ("/health", &["get"]),
    ("/ready", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

fn path_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": { "type": "string", "minLength": 1 }
    })
}

fn query_param(name: &str, schema: Value, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": false, "description": description,
        "schema": schema
    })
}

/// The `Idempotency-Key` header of the sends that take one.
fn idempotency_header() -> Value {
    json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "applies the send once per key within the runtime's retention window: a retry returns what the first send returned; 1 to 255 bytes (400 otherwise)",
        "schema": { "type": "string", "minLength": 1, "maxLength": 255 }
    })
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// The request body of a route that takes JSON: optional, any JSON value.
fn json_body(description: &str, required: bool) -> Value {
    json!({
        "description": description,
        "required": required,
        "content": { "application/json": { "schema": {} } }
    })
}

fn operation(summary: &str, parameters: Vec<Value>, responses: Vec<(&str, Value)>) -> Value {
    let mut map = Map::new();
    map.insert("summary".into(), summary.into());
    if !parameters.is_empty() {
        map.insert("parameters".into(), parameters.into());
    }
    let mut answers = Map::new();
    for (code, response) in responses {
        answers.insert(code.to_string(), response);
    }
    // Every route may refuse a missing token (when one is set), a `Host` not allowed or a page
    // of another origin, and a stopped runtime or a request past the request timeout (unless
    // it says more about these).
    answers
        .entry("401")
        .or_insert_with(|| error("a token is set and was not given, or is wrong"));
    answers.entry("403").or_insert_with(|| {
        error("without a token, the `Host` is not one of the server's names (`kind` `host_not_allowed`); or an unsafe method (POST, PUT, DELETE, PATCH) comes from a page of another origin (`Origin`, or `Sec-Fetch-Site` without it; `kind` `cross_origin`)")
    });
    answers.entry("503").or_insert_with(|| {
        error("the runtime is shut down (`kind` `shut_down`), or the request ran past the server's request timeout (`kind` `request_timeout`)")
    });
    map.insert("responses".into(), answers.into());
    Value::Object(map)
}

/// An operation with a request body: a body must be declared as JSON.
fn with_body(mut op: Value, body: Value) -> Value {
    op["requestBody"] = body;
    op["responses"]["415"] =
        error("the body is not declared as JSON: send it with `Content-Type: application/json`");
    op
}

/// The OpenAPI document of a router without a token (`/openapi.json` of a router with one
/// also declares the bearer scheme on every operation but `/health` and `/ready`).
pub fn openapi() -> Value {
    let name = || path_param("name", "entity name (case-insensitive)");
    let key = || path_param("key", "entity key, percent-encoded (`/` as `%2F`)");
    let id = || path_param("id", "orchestration instance id");
    let any = json!({});
    let string = json!({ "type": "string" });
    // 0 and sizes past the most a page holds are accepted, and cut to 1 and that most.
    let integer = json!({ "type": "integer", "minimum": 0 });
    let entity_ref = json!({ "$ref": "#/components/schemas/Entity" });
    let status_ref = json!({ "$ref": "#/components/schemas/OrchestrationStatus" });

    let paths = json!({
        "/entities": {
            "get": operation("List entities by name and key prefix, page by page", vec![
                query_param("name", string.clone(), "only entities of this name"),
                query_param("prefix", string.clone(), "only keys starting with this"),
                query_param("page_size", integer.clone(), "entities per page (default 100)"),
                query_param("continuation", string.clone(), "the continuation of the previous page"),
                query_param("include_state", json!({"type": "boolean"}), "include states (default true)"),
                query_param("include_stateless", json!({"type": "boolean"}), "include entities without state (default false)"),
            ], vec![
                ("200", ok_json("a page", json!({
                    "type": "object", "required": ["entities"],
                    "properties": {
                        "entities": { "type": "array", "items": entity_ref.clone() },
                        "continuation": { "type": "string", "nullable": true }
                    }
                }))),
                ("400", error("bad query")),
            ]),
        },
        "/entities/{name}/{key}": {
            "get": operation("Read an entity's committed state and metadata", vec![name(), key()], vec![
                ("200", ok_json("the entity", entity_ref.clone())),
                ("400", error("bad entity id")),
                ("404", error("the entity has no state")),
            ]),
            "put": with_body(operation("Replace an entity's state; runs in the entity's queue (waits for its lock)", vec![name(), key()], vec![
                ("200", ok_json("applied", json!({ "type": "object" }))),
                ("400", error("no state given, bad JSON or bad entity id")),
                ("404", error("unknown entity name")),
                ("413", error("body too large")),
                ("422", error("the state cannot be replaced")),
            ]), json_body("the new state", true)),
        },
        "/entities/{name}/{key}/{operation}": {
            "post": with_body(operation("Call an operation and wait for its result", vec![
                name(), key(), path_param("operation", "operation name"), idempotency_header(),
            ], vec![
                ("200", ok_json("the operation's result", any.clone())),
                ("400", error("bad JSON, bad entity id, reserved operation name, or an Idempotency-Key empty or over 255 bytes")),
                ("404", error("unknown entity name")),
                ("408", error("the body did not arrive within the server's request timeout (the call itself waits as long as the operation takes)")),
                ("413", error("body too large")),
                ("422", error("the operation's own error, or (kind `idempotency_mismatch`) the idempotency key was claimed by another request")),
            ]), json_body("the operation's input; empty for none", false)),
        },
        "/entities/{name}/{key}/{operation}/send": {
            "post": with_body(operation("Signal an operation (one-way); answers once durably stored", vec![
                name(), key(), path_param("operation", "operation name"), idempotency_header(),
            ], vec![
                ("202", ok_json("stored", json!({ "type": "object" }))),
                ("400", error("bad JSON, bad entity id, reserved operation name, or an Idempotency-Key empty or over 255 bytes")),
                ("404", error("unknown entity name")),
                ("422", error("the idempotency key was claimed by another request (kind `idempotency_mismatch`)")),
                ("413", error("body too large")),
            ]), json_body("the operation's input; empty for none", false)),
        },
        "/scheduled/{name}/{key}": {
            "get": operation("List an entity's scheduled one-off signals and recurring schedules", vec![name(), key()], vec![
                ("200", ok_json("what is scheduled", json!({
                    "type": "object", "required": ["id", "signals", "schedules"],
                    "properties": {
                        "id": string.clone(),
                        "signals": { "type": "array", "items": {
                            "type": "object", "required": ["id", "operation", "due", "due_ms"],
                            "properties": {
                                "id": { "type": "integer" }, "operation": string.clone(),
                                "input": any.clone(), "due": string.clone(), "due_ms": { "type": "integer" }
                            }
                        }},
                        "schedules": { "type": "array", "items": {
                            "type": "object", "required": ["id", "operation", "schedule", "next_fire", "next_fire_ms"],
                            "properties": {
                                "id": { "type": "integer" }, "operation": string.clone(),
                                "input": any.clone(), "schedule": { "type": "object" },
                                "next_fire": string.clone(), "next_fire_ms": { "type": "integer" }
                            }
                        }}
                    }
                }))),
                ("400", error("bad entity id")),
            ]),
        },
        "/scheduled/{name}/{key}/signals/{id}": {
            "delete": operation("Cancel a scheduled signal that has not run", vec![
                name(), key(), path_param("id", "the signal's id (from the list)"),
            ], vec![
                ("200", ok_json("cancelled", json!({ "type": "object" }))),
                ("400", error("bad entity id or signal id")),
                ("404", error("no such signal waiting")),
                ("409", error("the entity's partition is run by another process")),
            ]),
        },
        "/scheduled/{name}/{key}/schedules": {
            "post": with_body(operation("Start a recurring schedule of an operation", vec![name(), key()], vec![
                ("201", ok_json("scheduled", json!({
                    "type": "object", "required": ["id"], "properties": { "id": { "type": "integer" } }
                }))),
                ("400", error("bad JSON, bad entity id, bad schedule or reserved operation name")),
                ("404", error("unknown entity name")),
                ("413", error("body too large")),
            ]), json!({
                "description": "the operation, its input, and exactly one of `every_ms` and `cron` (with seconds, UTC)",
                "required": true,
                "content": { "application/json": { "schema": {
                    "type": "object", "required": ["operation"], "additionalProperties": false,
                    "properties": {
                        "operation": string.clone(), "input": any.clone(),
                        "every_ms": { "type": "integer", "minimum": 1 }, "cron": string.clone()
                    }
                }}}
            })),
        },
        "/scheduled/{name}/{key}/schedules/{id}": {
            "delete": operation("Stop a recurring schedule", vec![
                name(), key(), path_param("id", "the schedule's id"),
            ], vec![
                ("200", ok_json("cancelled", json!({ "type": "object" }))),
                ("400", error("bad entity id or schedule id")),
                ("404", error("no such schedule")),
                ("409", error("the entity's partition is run by another process")),
            ]),
        },
        "/locks": {
            "get": operation("List locked entities and the instance holding each", vec![], vec![
                ("200", ok_json("the locks", json!({
                    "type": "array",
                    "items": {
                        "type": "object", "required": ["id", "name", "key", "owner", "waiting"],
                        "properties": {
                            "id": string.clone(), "name": string.clone(),
                            "key": string.clone(), "owner": string.clone(),
                            "waiting": {
                                "type": "array",
                                "description": "operations and lock requests queued behind the lock in this process, oldest first",
                                "items": {
                                    "type": "object",
                                    "required": ["kind", "operation", "sender", "call", "waiting_ms"],
                                    "properties": {
                                        "kind": { "type": "string", "enum": ["operation", "lock"] },
                                        "operation": { "type": ["string", "null"] },
                                        "sender": { "type": ["string", "null"], "description": "the orchestration instance; null for a client" },
                                        "call": { "type": "boolean" },
                                        "waiting_ms": { "type": ["integer", "null"], "minimum": 0 }
                                    }
                                }
                            }
                        }
                    }
                }))),
            ]),
        },
        "/stats": {
            "get": operation("Entities by name, instances by status, stored counts, recent operation failures", vec![], vec![
                ("200", ok_json("the counts", json!({
                    "type": "object",
                    "required": ["entities", "orchestrations", "held_orchestrations", "locked_entities", "scheduled_messages", "stored_messages", "recent_failures"],
                    "properties": {
                        "entities": {
                            "type": "array",
                            "items": {
                                "type": "object", "required": ["name", "count"],
                                "properties": { "name": string.clone(), "count": { "type": "integer", "minimum": 0 } }
                            }
                        },
                        "orchestrations": {
                            "type": "object",
                            "additionalProperties": { "type": "integer", "minimum": 0 }
                        },
                        "held_orchestrations": { "type": "integer", "minimum": 0 },
                        "locked_entities": { "type": "integer", "minimum": 0 },
                        "scheduled_messages": { "type": "integer", "minimum": 0 },
                        "stored_messages": { "type": "integer", "minimum": 0 },
                        "recent_failures": {
                            "type": "array",
                            "items": {
                                "type": "object", "required": ["at", "entity", "operation", "message"],
                                "properties": {
                                    "at": string.clone(), "entity": string.clone(),
                                    "operation": string.clone(), "message": string.clone()
                                }
                            }
                        }
                    }
                }))),
            ]),
        },
        "/clean": {
            "post": operation("Remove empty entities, release locks of ended instances", vec![], vec![
                ("200", ok_json("what was done", json!({
                    "type": "object",
                    "properties": {
                        "removed_entities": { "type": "integer" },
                        "released_locks": { "type": "integer" }
                    }
                }))),
            ]),
        },
        "/orchestrations": {
            "get": operation("List orchestration instances, page by page, in creation order", vec![
                query_param("name", string.clone(), "only instances of this orchestration"),
                query_param("status", json!({ "type": "string", "enum": ["running", "held", "completed", "failed", "terminated"] }), "only instances with this status (held: running instances that are held)"),
                query_param("created_from", json!({ "type": "string", "format": "date-time" }), "created at or after"),
                query_param("created_to", json!({ "type": "string", "format": "date-time" }), "created before"),
                query_param("ended_before", json!({ "type": "string", "format": "date-time" }), "ended, last updated before"),
                query_param("page_size", integer.clone(), "instances per page (default 100)"),
                query_param("continuation", string.clone(), "the continuation of the previous page"),
            ], vec![
                ("200", ok_json("a page", json!({
                    "type": "object", "required": ["instances"],
                    "properties": {
                        "instances": { "type": "array", "items": status_ref.clone() },
                        "continuation": { "type": "string", "nullable": true }
                    }
                }))),
                ("400", error("bad query")),
            ]),
            "delete": operation("Purge every ended instance a query selects (running ones never); at least one filter", vec![
                query_param("name", string.clone(), "only instances of this orchestration"),
                query_param("status", json!({ "type": "string", "enum": ["running", "held", "completed", "failed", "terminated"] }), "only instances with this status (held: running instances that are held)"),
                query_param("created_from", json!({ "type": "string", "format": "date-time" }), "created at or after"),
                query_param("created_to", json!({ "type": "string", "format": "date-time" }), "created before"),
                query_param("ended_before", json!({ "type": "string", "format": "date-time" }), "ended, last updated before"),
                query_param("page_size", integer.clone(), "instances purged per store transaction (default 100)"),
            ], vec![
                ("200", ok_json("how many were purged", json!({
                    "type": "object", "required": ["purged"],
                    "properties": { "purged": { "type": "integer", "minimum": 0 } }
                }))),
                ("400", error("bad query, or no filter")),
            ]),
        },
        "/orchestrations/{id}": {
            "get": operation("Read an instance's status, waiting for its end with ?wait=", vec![
                id(),
                query_param("wait", json!({ "type": "string", "pattern": "^[0-9]{1,4}(ms|s|m)?$" }), "wait up to this long (e.g. 5s, 250ms, 1m; a bare number is seconds) for the instance to end"),
            ], vec![
                ("200", ok_json("the status", status_ref.clone())),
                ("400", error("bad wait")),
                ("404", error("no such instance")),
                ("503", error("the runtime is shut down, or (without `wait`) the request ran past the server's request timeout")),
            ]),
            "post": with_body(operation("Start an instance of the orchestration named in the path", vec![
                path_param("id", "orchestration name"),
                query_param("id", string.clone(), "instance id (default: a new UUID)"),
                idempotency_header(),
            ], vec![
                ("202", ok_json("started", json!({
                    "type": "object", "required": ["id"], "properties": { "id": string.clone() }
                }))),
                ("400", error("bad JSON, or an Idempotency-Key empty or over 255 bytes")),
                ("404", error("unknown orchestration name")),
                ("409", error("the instance id exists")),
                ("413", error("body too large")),
            ]), json_body("the input; empty for null", false)),
            "delete": operation("Purge an ended instance and its history", vec![id()], vec![
                ("200", ok_json("purged", json!({ "type": "object" }))),
                ("404", error("no such instance")),
                ("409", error("the instance is running")),
            ]),
        },
        "/orchestrations/{id}/history": {
            "get": operation("Read an instance's recorded history", vec![id()], vec![
                ("200", ok_json("the events", json!({
                    "type": "object",
                    "properties": { "id": string.clone(), "events": { "type": "array", "items": {} } }
                }))),
                ("404", error("no such instance")),
            ]),
        },
        "/orchestrations/{id}/events/{event}": {
            "post": with_body(operation("Raise an event on an instance", vec![
                id(), path_param("event", "event name"),
            ], vec![
                ("202", ok_json("stored", json!({ "type": "object" }))),
                ("400", error("bad JSON")),
                ("404", error("no such instance")),
                ("413", error("body too large")),
            ]), json_body("the event data; empty for null", false)),
        },
        "/orchestrations/{id}/terminate": {
            "post": with_body(operation("Terminate a running instance", vec![id()], vec![
                ("202", ok_json("stored", json!({ "type": "object" }))),
                ("400", error("bad JSON")),
                ("404", error("no such instance")),
                ("413", error("body too large")),
            ]), json_body("the reason, a JSON string; empty for a default", false)),
        },
        "/health": {
            "get": operation("Liveness (needs no token)", vec![], vec![
                ("200", ok_json("running", json!({ "type": "object" }))),
            ]),
        },
        "/ready": {
            "get": operation("Readiness, for load balancers (needs no token): 200 while this process can serve", vec![], vec![
                ("200", ok_json("ready", json!({
                    "type": "object", "required": ["status"],
                    "properties": { "status": { "type": "string", "enum": ["ready"] } }
                }))),
                ("503", error("not ready; `kind` says why: `draining` (the server is shutting down and finishes the requests under way), `shut_down` (the runtime has shut down) or `store_unavailable` (the store does not answer)")),
            ]),
        },
        "/metrics": {
            "get": operation("Metrics in the Prometheus text format", vec![], vec![
                ("200", json!({ "description": "metrics", "content": { "text/plain": { "schema": { "type": "string" } } } })),
            ]),
        },
        "/openapi.json": {
            "get": operation("This document", vec![], vec![
                ("200", ok_json("the OpenAPI document", json!({ "type": "object" }))),
            ]),
        },
    });

    let mut paths = paths;
    // The probes answer whatever the `Host`, and take no unsafe method.
    for probe in ["/health", "/ready"] {
        if let Some(answers) = paths[probe]["get"]["responses"].as_object_mut() {
            answers.remove("403");
        }
    }

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "entities",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable entities and orchestrations over HTTP. Request bodies are JSON (`Content-Type: application/json`). Without a token, the server answers only to its own names in `Host` (IP addresses, localhost, and names it is given), and takes unsafe methods only from its own pages (`Origin`)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["message"],
                    "properties": { "message": string.clone(), "kind": string.clone() }
                },
                "Entity": {
                    "type": "object",
                    "required": ["id", "name", "key", "last_modified", "pending_messages"],
                    "properties": {
                        "id": string.clone(), "name": string.clone(), "key": string.clone(),
                        "state": any.clone(),
                        "last_modified": { "type": "string", "format": "date-time" },
                        "locked_by": { "type": "string", "nullable": true },
                        "pending_messages": { "type": "integer" }
                    }
                },
                "OrchestrationStatus": {
                    "type": "object",
                    "required": ["id", "name", "status", "created", "updated"],
                    "properties": {
                        "id": string.clone(), "name": string.clone(),
                        "status": { "type": "string", "enum": ["Running", "Completed", "Failed", "Terminated"] },
                        "input": any.clone(), "output": any.clone(),
                        "error": { "type": "string", "nullable": true },
                        "held": { "type": "string", "nullable": true, "description": "why a running instance is held: its code departed from its history" },
                        "created": { "type": "string", "format": "date-time" },
                        "updated": { "type": "string", "format": "date-time" }
                    }
                }
            }
        },
    })
}

/// The document of a router that requires a bearer token: every operation but those of the
/// paths served without one (`/health`, `/ready`) declares it.
pub(crate) fn with_token(mut doc: Value) -> Value {
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, ops) in paths.iter_mut() {
            if crate::auth::PUBLIC.contains(&path.as_str()) {
                continue;
            }
            if let Some(ops) = ops.as_object_mut() {
                for op in ops.values_mut() {
                    op["security"] = json!([{ "bearer": [] }]);
                }
            }
        }
    }
    doc
}
