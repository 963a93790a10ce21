//! The configuration reference, made from the resource types themselves: their JSON Schema
//! (derived with schemars from the serde attributes and `///` docs in `resources`) rendered
//! as Markdown tables. `docs/configuration.md` holds the rendered text and a test checks it
//! is current, so the reference cannot drift from what the parser accepts.

use schemars::Schema;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write;

/// The JSON Schema (draft 2020-12) of a bootstrap file, which contains every resource type.
/// Editors that validate YAML against a JSON Schema can use it.
pub fn bootstrap_schema() -> Schema {
    schemars::schema_for!(crate::Bootstrap)
}

/// The reference as Markdown: one section per type, starting from the bootstrap file and
/// following its fields, then the kinds only the control plane holds (`Telemetry`), each
/// with a table of fields (or of values, for an enumeration).
pub fn markdown() -> String {
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    let mut duration = Value::Null;
    for (name, schema) in [("Bootstrap", bootstrap_schema()), ("Telemetry", schemars::schema_for!(crate::Telemetry))] {
        let root = schema.as_value();
        let empty = Map::new();
        let defs = root.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
        let mut queue = VecDeque::from([(name.to_owned(), root)]);
        while let Some((name, def)) = queue.pop_front() {
            if !seen.insert(name.clone()) || name == "Duration" {
                continue;
            }
            section(&mut out, &name, def);
            let mut refs = Vec::new();
            collect_refs(def, &mut refs);
            for r in refs {
                if let Some(d) = defs.get(&r) {
                    queue.push_back((r, d));
                }
            }
        }
        if let Some(d) = defs.get("Duration") {
            duration = d.clone();
        }
    }
    out.push_str("### Duration\n\n");
    out.push_str(&description(&duration));
    out.push('\n');
    out
}

fn section(out: &mut String, name: &str, def: &Value) {
    let _ = write!(out, "### {name}\n\n");
    let text = description(def);
    if !text.is_empty() {
        let _ = write!(out, "{text}\n\n");
    }
    if let Some(props) = def.get("properties").and_then(Value::as_object) {
        let required: BTreeSet<&str> = def
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| field | type | default | meaning |\n|---|---|---|---|\n");
        for (field, prop) in props {
            let default = if required.contains(field.as_str()) {
                "required".to_owned()
            } else {
                prop.get("default").map(render_default).unwrap_or_else(|| "—".to_owned())
            };
            let _ = writeln!(out, "| `{field}` | {} | {default} | {} |", type_of(prop), cell(&description(prop)));
        }
        out.push('\n');
    } else if let Some(values) = enum_values(def) {
        out.push_str("| value | meaning |\n|---|---|\n");
        for (value, meaning) in values {
            let _ = writeln!(out, "| `{value}` | {} |", cell(&meaning));
        }
        out.push('\n');
    }
}

/// The values of a string enumeration: `oneOf` of `const`s (each maybe described) or `enum`.
fn enum_values(def: &Value) -> Option<Vec<(String, String)>> {
    if let Some(list) = def.get("enum").and_then(Value::as_array) {
        return Some(list.iter().filter_map(Value::as_str).map(|v| (v.to_owned(), String::new())).collect());
    }
    let variants = def.get("oneOf")?.as_array()?;
    let mut values = Vec::new();
    for v in variants {
        if let Some(c) = v.get("const").and_then(Value::as_str) {
            values.push((c.to_owned(), description(v)));
        } else if let Some(list) = v.get("enum").and_then(Value::as_array) {
            values.extend(list.iter().filter_map(Value::as_str).map(|c| (c.to_owned(), description(v))));
        } else {
            return None;
        }
    }
    Some(values)
}

fn description(v: &Value) -> String {
    v.get("description")
        .and_then(Value::as_str)
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn render_default(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Array(a) if a.is_empty() => "—".to_owned(),
        Value::Object(o) if o.values().all(|v| v.as_str() == Some("") || v.is_null()) => "—".to_owned(),
        other => format!("`{other}`"),
    }
}

/// A short human name of a property's type, with links to the sections of named types.
fn type_of(prop: &Value) -> String {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return if name == "Duration" {
            "[duration](#duration)".to_owned()
        } else {
            format!("[{name}](#{})", name.to_lowercase())
        };
    }
    if let Some(any) = prop.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> =
            any.iter().filter(|s| s.get("type").and_then(Value::as_str) != Some("null")).map(type_of).collect();
        return parts.join(" or ");
    }
    if let Some(c) = prop.get("const") {
        return render_default(c);
    }
    let types: Vec<&str> = match prop.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    match types.as_slice() {
        ["array"] => format!("list of {}", prop.get("items").map(type_of).unwrap_or_else(|| "any".to_owned())),
        ["object"] => match prop.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("map of string to {}", type_of(v)),
            _ => "object".to_owned(),
        },
        ["integer"] => "integer".to_owned(),
        ["number"] => "number".to_owned(),
        ["boolean"] => "bool".to_owned(),
        ["string"] => "string".to_owned(),
        other => other.join(" or "),
    }
}

/// Names of the definitions a schema refers to, in the order they appear.
fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                out.push(r.rsplit('/').next().unwrap_or(r).to_owned());
            }
            for (k, child) in o {
                if k != "$defs" {
                    collect_refs(child, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_section() {
        let text = markdown();
        for name in
            ["Bootstrap", "Listener", "Route", "Cluster", "Policy", "RetryPolicy", "LbPolicy", "Telemetry", "Duration"]
        {
            assert!(text.contains(&format!("### {name}\n")), "no section for {name}");
        }
        assert!(text.contains("| `lb` | [LbPolicy](#lbpolicy) | `peak_ewma` |"), "{text}");
        assert!(text.contains("| `address` | string | required |"));
    }

    /// A field or value without a `///` doc comment would be a blank cell in the reference.
    #[test]
    fn every_field_is_described() {
        let text = markdown();
        let blank: Vec<&str> = text.lines().filter(|l| l.starts_with("| `") && l.ends_with("|  |")).collect();
        assert!(blank.is_empty(), "fields without a doc comment in trellis-api's resources: {blank:#?}");
    }
}
