//! Reading MCP requests: JSON-RPC 2.0 messages (one, or a batch) from a request body that
//! has already been bounded, and the `Mcp-Method`/`Mcp-Name` headers that must agree with
//! it (DESIGN §13). Only what routing and policy need is kept: method, name, id.

use base64::Engine;
use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Longest method, tool/prompt name or resource URI taken; longer is an invalid request.
pub const MAX_NAME_BYTES: usize = 4096;

/// One JSON-RPC message as policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Absent for a response (the client answering a server's request).
    pub method: Option<Box<str>>,
    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/*).
    pub name: Option<Box<str>>,
    /// Absent for a notification; may be `null`.
    pub id: Option<Value>,
}

impl Call {
    /// A `tools/call`'s tool.
    pub fn tool(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call")).then_some(self.name.as_deref()).flatten()
    }
}

/// A request body's messages.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub calls: Vec<Call>,
    /// Sent as a JSON array.
    pub batch: bool,
}

impl Parsed {
    /// The one message of a body that is not a batch.
    pub fn single(&self) -> Option<&Call> {
        if self.batch { None } else { self.calls.first() }
    }
}

/// Why a body is not an MCP request; each is a JSON-RPC error (DESIGN §13).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// Not JSON at all (-32700).
    #[error("parse error: {0}")]
    Json(String),
    /// JSON, but not a JSON-RPC 2.0 message or batch (-32600).
    #[error("invalid request: {0}")]
    Request(String),
    /// A batch of more than `max_batch` messages (-32600).
    #[error("invalid request: a batch of more than {0} messages")]
    Batch(usize),
    /// `Mcp-Method`/`Mcp-Name` say something else than the body (-32600).
    #[error("invalid request: {0}")]
    Header(String),
}

impl Invalid {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Json(_) => -32700,
            _ => -32600,
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
}

/// `id: null` is an id (Some(Null)); a missing one is not.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A batch, refused as soon as it holds more than `max` messages (its elements are not
/// all read first).
struct Capped(usize);

impl<'de> DeserializeSeed<'de> for Capped {
    type Value = Vec<Wire<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Capped {
    type Value = Vec<Wire<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC batch")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut all = Vec::new();
        while let Some(w) = seq.next_element::<Wire<'de>>()? {
            if all.len() == self.0 {
                return Err(serde::de::Error::custom(BATCH_TOO_LARGE));
            }
            all.push(w);
        }
        Ok(all)
    }
}

const BATCH_TOO_LARGE: &str = "batch too large";

/// Reads the messages of `body`; a batch may hold at most `max_batch`.
pub fn parse(body: &[u8], max_batch: usize) -> Result<Parsed, Invalid> {
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let classify = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data if e.to_string().starts_with(BATCH_TOO_LARGE) => Invalid::Batch(max_batch),
        serde_json::error::Category::Data => Invalid::Request(e.to_string()),
        _ => Invalid::Json(e.to_string()),
    };
    let wires = if batch {
        let mut de = serde_json::Deserializer::from_slice(body);
        let all = Capped(max_batch).deserialize(&mut de).map_err(classify)?;
        de.end().map_err(classify)?;
        if all.is_empty() {
            return Err(Invalid::Request("an empty batch".into()));
        }
        all
    } else {
        vec![serde_json::from_slice::<Wire<'_>>(body).map_err(classify)?]
    };
    let calls = wires.into_iter().map(call).collect::<Result<_, _>>()?;
    Ok(Parsed { calls, batch })
}

fn call(w: Wire<'_>) -> Result<Call, Invalid> {
    if w.jsonrpc.as_deref() != Some("2.0") {
        return Err(Invalid::Request("\"jsonrpc\" must be \"2.0\"".into()));
    }
    let long = |what: &str, s: &str| {
        (s.len() > MAX_NAME_BYTES).then(|| Invalid::Request(format!("{what} longer than {MAX_NAME_BYTES} bytes")))
    };
    match &w.method {
        Some(m) => {
            if let Some(e) = long("method", m) {
                return Err(e);
            }
        }
        None if w.id.is_some() && (w.result.is_some() || w.error.is_some()) => {}
        None => return Err(Invalid::Request("no \"method\" (nor a response's \"result\" or \"error\")".into())),
    }
    let name = match (w.method.as_deref(), w.params) {
        (Some("tools/call" | "prompts/get"), Some(p)) => p.name,
        (Some(m), Some(p)) if m.starts_with("resources/") => p.uri,
        _ => None,
    };
    if let Some(e) = name.as_deref().and_then(|n| long("params.name", n)) {
        return Err(e);
    }
    if let Some(id) = &w.id
        && !matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
    {
        return Err(Invalid::Request("\"id\" must be a string or a number".into()));
    }
    Ok(Call { method: w.method.map(|m| m.into()), name: name.map(|n| n.into()), id: w.id })
}

/// Header carrying the JSON-RPC method (MCP 2026-07-28).
pub const METHOD_HEADER: &str = "mcp-method";
/// Header carrying `params.name` / `params.uri`, `=?base64?…?=` when not plain ASCII.
pub const NAME_HEADER: &str = "mcp-name";

/// Checks `Mcp-Method` and `Mcp-Name`, when sent, against the body: they describe one
/// message, so a batch may not carry them.
pub fn check_headers(headers: &http::HeaderMap, parsed: &Parsed) -> Result<(), Invalid> {
    let method = headers.get(METHOD_HEADER);
    let name = headers.get(NAME_HEADER);
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    let Some(call) = parsed.single() else {
        return Err(Invalid::Header("Mcp-Method/Mcp-Name on a batch".into()));
    };
    if let Some(m) = method
        && Some(m.as_bytes()) != call.method.as_deref().map(str::as_bytes)
    {
        return Err(Invalid::Header(format!(
            "the Mcp-Method header ({}) differs from the body's method ({})",
            String::from_utf8_lossy(m.as_bytes()).chars().take(64).collect::<String>(),
            call.method.as_deref().unwrap_or("none").chars().take(64).collect::<String>(),
        )));
    }
    if let Some(n) = name
        && decode_name(n.as_bytes()).as_deref() != call.name.as_deref().map(str::as_bytes)
    {
        return Err(Invalid::Header("the Mcp-Name header differs from the body's params.name/uri".into()));
    }
    Ok(())
}

/// An `Mcp-Name` value: verbatim, or the bytes of `=?base64?…?=`.
fn decode_name(v: &[u8]) -> Option<Cow<'_, [u8]>> {
    match v.strip_prefix(b"=?base64?").and_then(|r| r.strip_suffix(b"?=")) {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok().map(Cow::Owned),
        None => Some(Cow::Borrowed(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Call {
        let p = parse(s.as_bytes(), 8).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(!p.batch);
        p.calls.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn methods_names_and_ids() {
        let c =
            one(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":[1,2]}}}"#);
        assert_eq!(
            (c.method.as_deref(), c.tool(), c.id.clone()),
            (Some("tools/call"), Some("search"), Some(Value::from(7)))
        );
        let c = one(r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#);
        assert_eq!((c.name.as_deref(), c.tool()), (Some("file:///x"), None));
        let c = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!((c.method.as_deref(), c.id), (Some("notifications/initialized"), None));
        let c = one(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
        assert_eq!(c.id, Some(Value::Null));
        // Escapes in names are decoded.
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u0062"}}"#).tool(),
            Some("ab")
        );
        // A response to a server's request.
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).method, None);
    }

    #[test]
    fn batches_are_bounded() {
        let b =
            parse(br#" [{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"}]"#, 2)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(b.batch && b.calls.len() == 2 && b.single().is_none());
        let big = format!("[{}]", vec![r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#; 10_000].join(","));
        assert_eq!(parse(big.as_bytes(), 64), Err(Invalid::Batch(64)));
        assert!(matches!(parse(b"[]", 64), Err(Invalid::Request(_))));
    }

    #[test]
    fn bad_input_is_named() {
        for (body, code) in [
            ("not json", -32700),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"", -32700),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} trailing", -32700),
            ("42", -32600),
            ("{\"id\":1,\"method\":\"ping\"}", -32600),
            ("{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", -32600),
            ("{\"jsonrpc\":\"2.0\",\"id\":1}", -32600),
            ("{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}", -32600),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}", -32600),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":3}}", -32600),
        ] {
            assert_eq!(parse(body.as_bytes(), 8).map_err(|e| e.code()).err(), Some(code), "{body}");
        }
        let huge = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}"}}}}"#,
            "a".repeat(1 << 20)
        );
        assert!(matches!(parse(huge.as_bytes(), 8), Err(Invalid::Request(m)) if m.contains("params.name")));
    }

    #[test]
    fn headers_must_match_the_body() {
        let p = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"caf\u00e9"}}"#, 8)
            .unwrap_or_else(|e| panic!("{e}"));
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_str(v).unwrap_or_else(|_| unreachable!()),
                );
            }
            check_headers(&m, &p)
        };
        assert_eq!(h(&[]), Ok(()));
        assert_eq!(h(&[("mcp-method", "tools/call"), ("mcp-name", "=?base64?Y2Fmw6k=?=")]), Ok(()));
        assert!(h(&[("mcp-method", "tools/list")]).is_err());
        assert!(h(&[("mcp-method", "tools/call"), ("mcp-name", "cafe")]).is_err());
        assert!(h(&[("mcp-name", "=?base64?!!?=")]).is_err());
    }
}
