//! The demo's MCP side (DESIGN §13): a small MCP tool server (JSON-RPC 2.0 over Streamable
//! HTTP, answered as JSON) behind the tools sidecar, whose policy lets the planner call
//! `search_docs` but not `delete_repo`; and an MCP session the demo runs through the
//! planner's sidecar at start, printing each step.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;

type Body = BoxBody<Bytes, Infallible>;

/// The tool the planner may call, and the one its policy denies.
pub const ALLOWED_TOOL: &str = "search_docs";
pub const DENIED_TOOL: &str = "delete_repo";

const SESSION: &str = "demo-session-1";

fn json_response(status: StatusCode, body: &Value, session: bool) -> Response<Body> {
    let mut b = Response::builder().status(status).header("content-type", "application/json");
    if session {
        b = b.header("mcp-session-id", SESSION);
    }
    b.body(Full::new(Bytes::from(body.to_string())).boxed()).unwrap_or_default()
}

/// The MCP tool server: `initialize`, `tools/list`, `tools/call` of its two tools; a
/// notification gets 202, anything else a JSON-RPC error.
pub async fn server(req: Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::POST {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({}), false);
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return json_response(StatusCode::BAD_REQUEST, &json!({}), false);
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        let e = json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32700, "message": "parse error" } });
        return json_response(StatusCode::BAD_REQUEST, &e, false);
    };
    let id = msg.get("id").cloned();
    let method = msg.get("method").and_then(Value::as_str).unwrap_or_default();
    let Some(id) = id else { return json_response(StatusCode::ACCEPTED, &json!({}), false) };
    let result = match method {
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "demo-tools", "version": "1.0.0" },
        }),
        "tools/list" => json!({ "tools": [
            { "name": ALLOWED_TOOL, "description": "Search the docs", "inputSchema": { "type": "object" } },
            { "name": DENIED_TOOL, "description": "Delete the repository", "inputSchema": { "type": "object" } },
        ] }),
        "tools/call" => {
            let tool = msg.pointer("/params/name").and_then(Value::as_str).unwrap_or_default();
            let query = msg.pointer("/params/arguments/query").and_then(Value::as_str).unwrap_or("mesh");
            let text = match tool {
                ALLOWED_TOOL => format!("3 documents match \"{query}\""),
                DENIED_TOOL => "repository deleted".to_owned(),
                _ => {
                    let e =
                        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": "unknown tool" } });
                    return json_response(StatusCode::OK, &e, true);
                }
            };
            json!({ "content": [{ "type": "text", "text": text }], "isError": false })
        }
        _ => {
            let e = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "method not found" } });
            return json_response(StatusCode::OK, &e, true);
        }
    };
    json_response(StatusCode::OK, &json!({ "jsonrpc": "2.0", "id": id, "result": result }), true)
}

/// One MCP exchange through the planner's sidecar: the HTTP status and the JSON-RPC answer.
async fn post(sidecar: SocketAddr, session: Option<&str>, body: Value) -> Result<(u16, Value), String> {
    let stream = tokio::net::TcpStream::connect(sidecar).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = Request::post("/mcp")
        .header("host", "tools")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Runs an MCP session through `sidecar` and prints each step: initialize, tools/list
/// (filtered by the tools sidecar's policy), the allowed call and the denied one.
pub async fn session(sidecar: SocketAddr) -> Result<(), String> {
    println!("MCP: the planner's agent calls tools on the tools MCP server, through both sidecars (policy per tool):");
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "demo-agent", "version": "1" } } });
    // The planner's sidecar may not know the tools endpoint for a moment yet.
    let mut tries = 0;
    let (status, answer) = loop {
        let (status, answer) = post(sidecar, None, init.clone()).await?;
        tries += 1;
        if status < 500 || tries >= 20 {
            break (status, answer);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let server = answer.pointer("/result/serverInfo/name").and_then(Value::as_str).unwrap_or("?");
    println!("  initialize               {status}  server {server}");
    if status != 200 {
        return Err(format!("initialize: {status} {answer}"));
    }
    let s = Some(SESSION);
    post(sidecar, s, json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
    let (status, answer) = post(sidecar, s, json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" })).await?;
    let tools: Vec<&str> = answer
        .pointer("/result/tools")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    println!(
        "  tools/list               {status}  {tools:?} (the server has {ALLOWED_TOOL} and {DENIED_TOOL}: filtered)"
    );
    for (id, tool) in [(3, ALLOWED_TOOL), (4, DENIED_TOOL)] {
        let call = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": { "query": "mesh" } } });
        let (status, answer) = post(sidecar, s, call).await?;
        let outcome = match (answer.pointer("/result/content/0/text"), answer.get("error")) {
            (Some(text), _) => format!("allowed: {text}"),
            (None, Some(e)) => format!("denied: JSON-RPC {} {}", e["code"], e["message"].as_str().unwrap_or_default()),
            _ => format!("unexpected answer {answer}"),
        };
        println!("  tools/call {tool:<13} {status}  {outcome}");
    }
    println!();
    Ok(())
}
