//! Tables and details for people (`--json` prints the API's JSON instead).

use serde_json::Value;

/// Longest cell of a table; longer ones are cut with `…`.
const MAX_CELL: usize = 60;

/// A JSON value in one short line: strings without quotes, null as `-`.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = text.replace(['\n', '\t'], " ");
    if text.chars().count() > MAX_CELL {
        let cut: String = text.chars().take(MAX_CELL - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = w - c.chars().count();
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(
        header
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// `entities list`.
pub(crate) fn entities(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(std::vec::Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                cell(&e["id"]),
                cell(&e["state"]),
                cell(&e["locked_by"]),
                cell(&e["pending_messages"]),
                cell(&e["last_modified"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no entities".into();
    }
    table(
        &["ENTITY", "STATE", "LOCKED BY", "PENDING", "MODIFIED"],
        rows,
    )
}

/// `entities show`.
pub(crate) fn entity(e: &Value) -> String {
    format!(
        "entity:    {}\nmodified:  {}\nlocked by: {}\npending:   {}\nstate:\n{}",
        cell(&e["id"]),
        cell(&e["last_modified"]),
        cell(&e["locked_by"]),
        cell(&e["pending_messages"]),
        serde_json::to_string_pretty(&e["state"]).unwrap_or_default()
    )
}

/// `entities locks`.
pub(crate) fn locks(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(std::vec::Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|l| vec![cell(&l["id"]), cell(&l["owner"]), waiting(&l["waiting"])])
        .collect();
    if rows.is_empty() {
        return "no locks".into();
    }
    table(&["ENTITY", "LOCKED BY", "WAITING BEHIND"], rows)
}

/// An entity's scheduled signals and recurring schedules.
pub(crate) fn scheduled(answer: &Value) -> String {
    let list = |field: &str| answer[field].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = list("signals")
        .iter()
        .map(|s| {
            vec![
                "signal".into(),
                cell(&s["id"]),
                cell(&s["operation"]),
                cell(&s["input"]),
                cell(&s["due"]),
            ]
        })
        .collect();
    rows.extend(list("schedules").iter().map(|s| {
        let when = match (&s["schedule"]["every_ms"], &s["schedule"]["cron"]) {
            (Value::Number(ms), _) => format!("every {ms} ms, next {}", cell(&s["next_fire"])),
            (_, Value::String(cron)) => format!("cron {cron}, next {}", cell(&s["next_fire"])),
            _ => cell(&s["next_fire"]),
        };
        vec![
            "schedule".into(),
            cell(&s["id"]),
            cell(&s["operation"]),
            cell(&s["input"]),
            when,
        ]
    }));
    if rows.is_empty() {
        return "nothing scheduled".into();
    }
    table(&["KIND", "ID", "OPERATION", "INPUT", "WHEN"], rows)
}

/// The operations queued behind a lock, as `deposit (client, 1.2 s), lock (t2)`.
fn waiting(list: &Value) -> String {
    let items: Vec<String> = list
        .as_array()
        .map(std::vec::Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|w| {
            let what = w["operation"].as_str().unwrap_or("lock");
            let who = w["sender"].as_str().unwrap_or("client");
            match w["waiting_ms"].as_u64() {
                Some(ms) => format!("{what} ({who}, {:.1} s)", ms as f64 / 1000.0),
                None => format!("{what} ({who})"),
            }
        })
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// An instance's status as shown: `Running (held)` for a held instance.
fn shown_status(i: &Value) -> String {
    if i["held"].is_null() {
        cell(&i["status"])
    } else {
        format!("{} (held)", cell(&i["status"]))
    }
}

/// `entities orchestrations`.
pub(crate) fn instances(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(std::vec::Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            vec![
                cell(&i["id"]),
                cell(&i["name"]),
                shown_status(i),
                cell(&i["created"]),
                cell(&i["updated"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no orchestrations".into();
    }
    table(&["ID", "NAME", "STATUS", "CREATED", "UPDATED"], rows)
}

/// `entities orchestration`.
pub(crate) fn instance(i: &Value) -> String {
    let mut out = format!(
        "instance: {}\nname:     {}\nstatus:   {}\ncreated:  {}\nupdated:  {}\ninput:    {}\n",
        cell(&i["id"]),
        cell(&i["name"]),
        shown_status(i),
        cell(&i["created"]),
        cell(&i["updated"]),
        i["input"],
    );
    if !i["held"].is_null() {
        out.push_str(&format!("held:     {}\n", cell(&i["held"])));
    }
    if !i["output"].is_null() {
        out.push_str(&format!("output:   {}\n", i["output"]));
    }
    if !i["error"].is_null() {
        out.push_str(&format!("error:    {}\n", cell(&i["error"])));
    }
    if let Some(history) = i["history"].as_array() {
        out.push_str(&format!("history:  {} events\n", history.len()));
        for (n, event) in history.iter().enumerate() {
            out.push_str(&format!("  {n:>4}  {event}\n"));
        }
    }
    out
}
