//! `tools/list` answers cut down to the tools the caller may call (DESIGN §13): a JSON
//! body, or the JSON-RPC messages in the `data:` lines of a `text/event-stream` body.

use serde_json::Value;

/// Drops from every JSON-RPC result's `tools` the ones `keep` refuses; None when `body`
/// holds nothing to filter (then it goes out as it came).
pub fn json(body: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    if !filter_value(&mut v, keep) {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

/// The same for an event stream: events whose data is a JSON-RPC result with `tools` are
/// rewritten (one `data:` line), the others are kept; lines end in LF afterwards.
pub fn sse(body: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut event: Vec<&str> = Vec::new();
    let mut flush = |event: &mut Vec<&str>, out: &mut String| {
        let data: Vec<&str> =
            event.iter().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
        let rewritten = (!data.is_empty())
            .then(|| serde_json::from_str::<Value>(&data.join("\n")).ok())
            .flatten()
            .and_then(|mut v| filter_value(&mut v, keep).then_some(v));
        match rewritten {
            Some(v) => {
                changed = true;
                for l in event.iter().filter(|l| !l.starts_with("data:")) {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str("data: ");
                out.push_str(&v.to_string());
                out.push('\n');
            }
            None => {
                for l in event.iter() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out.push('\n');
        event.clear();
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if !event.is_empty() {
                flush(&mut event, &mut out);
            }
        } else {
            event.push(line);
        }
    }
    if !event.is_empty() {
        flush(&mut event, &mut out);
    }
    changed.then(|| out.into_bytes())
}

/// Filters `result.tools` of one message or of each message of a batch; whether any was
/// found.
fn filter_value(v: &mut Value, keep: &dyn Fn(&str) -> bool) -> bool {
    match v {
        // Every message is filtered (no short circuit).
        Value::Array(all) => all.iter_mut().map(|m| filter_value(m, keep)).filter(|found| *found).count() > 0,
        Value::Object(m) => match m.get_mut("result").and_then(|r| r.get_mut("tools")) {
            Some(Value::Array(tools)) => {
                tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(keep));
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(name: &str) -> bool {
        name.starts_with("ok")
    }

    fn names(v: &Value) -> Vec<&str> {
        v["result"]["tools"].as_array().map_or(vec![], |t| t.iter().filter_map(|t| t["name"].as_str()).collect())
    }

    #[test]
    fn json_results_keep_allowed_tools() {
        let body =
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok1"},{"name":"secret"},{"name":"ok2"},{"x":1}]}}"#;
        let out = json(body, &keep).unwrap_or_default();
        let v: Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(names(&v), ["ok1", "ok2"]);
        assert_eq!(json(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, &keep), None);
        assert_eq!(json(b"not json", &keep), None);
    }

    #[test]
    fn sse_events_are_rewritten() {
        let body = "event: message\r\nid: 5\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"result\":{\"tools\":[{\"name\":\"secret\"},{\"name\":\"ok\"}]}}\r\n\r\n: comment\n\n";
        let out = String::from_utf8(sse(body.as_bytes(), &keep).unwrap_or_default()).unwrap_or_default();
        assert!(out.starts_with("event: message\nid: 5\ndata: {"), "{out}");
        assert!(out.contains(": comment\n\n"), "{out}");
        let data = out.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
        assert_eq!(names(&serde_json::from_str(data).unwrap_or_default()), ["ok"]);
        assert_eq!(sse(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n", &keep), None);
    }
}
