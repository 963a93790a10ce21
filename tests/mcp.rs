//! MCP-aware traffic (DESIGN §13) through the real `trellis` binary: a real MCP client
//! session (official Python SDK) to a real MCP server behind a mesh listener whose policy
//! names tools; malformed MCP input refused before the upstream; the agent-chain hop guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::config::{
    self, Bootstrap, Cluster, ClusterProtocol, LbPolicy, Listener, McpRoute, Policy, PolicyDefault, PolicyMcp,
    PolicyRule, RateLimit, RetryPolicy, Route, RouteMatch, Yaml,
};
use trellis_testkit::*;

use http::Request;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const AGENT: &str = "spiffe://trellis.local/ns/agents/sa/planner";

/// One proxy in both roles: plaintext `out_*` listeners (the agent's sidecar side) send
/// over mesh mTLS, with the proxy's identity AGENT, to `in_*` mesh listeners (the tool
/// server's side) whose policy lets AGENT call only `search` and `add`; `in_*` routes are
/// `mcp: {}` to an SSE-answering and a JSON-answering MCP server.
fn mesh_config(pki: &Pki, outs: [SocketAddr; 2], ins: [SocketAddr; 2], apps: [SocketAddr; 2], log: &str) -> String {
    let (cert, key) = pki.issue("agent", AGENT, &[]);
    let mut b = Bootstrap {
        drain_timeout: Some(config::ms(1000)),
        access_log: Some(config::AccessLog { path: log.into() }),
        identity: Some(config::identity(&cert, &key, &pki.bundle())),
        ..config::bootstrap()
    };
    for (i, kind) in ["sse", "json"].iter().enumerate() {
        let (to, mcp, mesh, app) =
            (format!("to_{kind}"), format!("mcp_{kind}"), format!("mesh_{kind}"), format!("app_{kind}"));
        b.listeners.push(config::listener(&format!("out_{kind}"), outs[i], &[&to]));
        b.listeners.push(Listener {
            tls: Some(config::mesh_tls()),
            policy: Some("tools".into()),
            ..config::listener(&format!("in_{kind}"), ins[i], &[&mcp])
        });
        b.routes.push(any_path(&to, &mesh));
        b.routes.push(Route { mcp: Some(Box::default()), ..any_path(&mcp, &app) });
        let mut to_mesh = config::cluster(&mesh, ClusterProtocol::Http2, &[ins[i]]);
        to_mesh.tls = Some(config::mesh_cluster_tls(AGENT));
        b.clusters.push(to_mesh);
        b.clusters.push(config::cluster(&app, ClusterProtocol::Http1, &[apps[i]]));
    }
    b.policies.push(tools_policy("tools", &[AGENT], &["search", "add"]));
    b.yaml()
}

/// A route of every request (no `match`) to `cluster`.
fn any_path(name: &str, cluster: &str) -> Route {
    Route { matches: RouteMatch::default(), ..config::route(name, "/", cluster) }
}

/// A policy letting `from` (anyone, when empty) call only `tools`.
fn tools_policy(name: &str, from: &[&str], tools: &[&str]) -> Policy {
    let mcp = PolicyMcp { tools: tools.iter().map(|t| t.to_string()).collect(), ..Default::default() };
    let rule = PolicyRule { from: from.iter().map(|f| f.to_string()).collect(), mcp: Some(mcp), ..Default::default() };
    Policy { name: name.into(), default: PolicyDefault::Deny, rules: vec![rule] }
}

/// Listener `in` on `listen` with the one route `route` and the one cluster `cluster`.
fn one_route(listen: SocketAddr, route: Route, cluster: Cluster) -> Bootstrap {
    config::serving(listen, vec![route], vec![cluster])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_sees_only_the_tools_its_identity_may_call() {
    if !mcp_sdk_available("an_mcp_session_sees_only_the_tools_its_identity_may_call") {
        return;
    }
    let (sse, json_app) = tokio::join!(McpServer::start(false), McpServer::start(true));
    let pki = Pki::new();
    let log = pki.path("access.log");
    let outs = [listen_addr(), listen_addr()];
    let ins = [listen_addr(), listen_addr()];
    let proxy = Proxy::start(&mesh_config(&pki, outs, ins, [sse.addr, json_app.addr], log.to_str().unwrap()));

    for (out, kind) in outs.iter().zip(["sse", "json"]) {
        let got = mcp_session(&format!("http://{out}/mcp"), &["search", "add", "delete_everything"]).await;
        assert_eq!(got["server"], "trellis-test-tools", "{kind}: {got}");
        // tools/list is filtered to what AGENT may call.
        assert_eq!(got["tools"], json!(["add", "search"]), "{kind}: {got}");
        assert_eq!(got["calls"]["search"]["ok"], true, "{kind}: {got}");
        assert_eq!(got["calls"]["search"]["text"], "results for mesh", "{kind}: {got}");
        assert_eq!(got["calls"]["add"]["text"], "5", "{kind}: {got}");
        // The denied call is a JSON-RPC error the client shows, made by the proxy.
        let denied = &got["calls"]["delete_everything"];
        assert_eq!(denied["code"], -32001, "{kind}: {got}");
        let message = denied["message"].as_str().unwrap_or_default();
        assert!(message.contains("policy \"tools\"") && message.contains(AGENT), "{kind}: {message}");
    }

    let metrics = blocking(|| proxy.metrics());
    for kind in ["sse", "json"] {
        let route = format!("mcp_{kind}");
        let denied =
            [("route", route.as_str()), ("method", "tools/call"), ("tool", "delete_everything"), ("outcome", "denied")];
        assert_eq!(metric_value(&metrics, "trellis_mcp_requests_total", &denied), Some(1.0), "{metrics}");
        let allowed = [("route", route.as_str()), ("method", "tools/call"), ("tool", "search"), ("outcome", "allowed")];
        assert_eq!(metric_value(&metrics, "trellis_mcp_requests_total", &allowed), Some(1.0), "{metrics}");
    }
    assert!(metrics.contains("trellis_mcp_request_duration_seconds"), "{metrics}");
    assert!(plain_logs(&proxy).contains("mcp call denied"), "no audit line: {}", proxy.logs());
    // The access log names the method, tool and JSON-RPC id.
    let lines = access_log_lines(&log, 1).await;
    let denied = lines
        .iter()
        .find(|l| l["mcp_tool"] == "delete_everything" && l["listener"] == "in_sse")
        .unwrap_or_else(|| panic!("no access-log line for the denied call: {lines:?}"));
    assert_eq!((denied["status"].as_u64(), denied["mcp_method"].as_str()), (Some(403), Some("tools/call")), "{denied}");
    assert!(denied["jsonrpc_id"].is_u64(), "{denied}");
}

/// A plaintext listener whose route is `mcp: {}` (batches of at most 8) to `origin`, with
/// a policy that lets anyone call only `search`.
fn plain_config(listen: SocketAddr, origin: SocketAddr) -> Bootstrap {
    let mcp = McpRoute { max_batch: Some(8), ..Default::default() };
    let mut b = one_route(
        listen,
        Route { mcp: Some(Box::new(mcp)), ..any_path("mcp", "app") },
        config::cluster("app", ClusterProtocol::Http1, &[origin]),
    );
    b.listeners[0].policy = Some("p".into());
    b.policies.push(tools_policy("p", &[], &["search"]));
    b
}

fn post(body: impl Into<bytes::Bytes>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post("/mcp").header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(body.into())).unwrap()
}

fn call(id: u32, tool: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": {} } })
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_denied_mcp_never_reaches_the_server() {
    let (origin, seen) = counting_origin(|_, _| empty_tool_result()).await;
    let listen = listen_addr();
    let proxy = Proxy::start(&plain_config(listen, origin.addr).yaml());
    let mut c = Client::h1(listen).await;

    let error = |g: &Got| (g.status.as_u16(), g.json()["error"]["code"].as_i64().unwrap_or(0));
    // Not JSON, JSON that is not JSON-RPC, a batch of 10,000, headers that disagree, a
    // 1 MB tool name.
    assert_eq!(error(&c.fetch(post("{not json", &[])).await), (400, -32700));
    assert_eq!(error(&c.fetch(post(r#"{"hello":"world"}"#, &[])).await), (400, -32600));
    let batch = format!("[{}]", vec![call(1, "search"); 10_000].join(","));
    let got = c.fetch(post(batch, &[])).await;
    assert_eq!(error(&got), (400, -32600));
    assert!(got.text().contains("batch of more than 8"), "{}", got.text());
    let got = c.fetch(post(call(7, "search"), &[("mcp-method", "tools/list")])).await;
    assert_eq!((error(&got), got.json()["id"].clone()), ((400, -32600), json!(7)));
    let got = c.fetch(post(call(8, "search"), &[("mcp-method", "tools/call"), ("mcp-name", "delete")])).await;
    assert_eq!(error(&got), (400, -32600));
    // (1 MB fits in the default 1 MiB body: the name itself is refused.)
    assert_eq!(error(&c.fetch(post(call(9, &"x".repeat(1_000_000)), &[])).await), (400, -32600));
    // Over max_body_bytes (1 MiB): announced, or found while reading a chunked body.
    let (tx, body) = chan_body();
    let req = Request::post("/mcp").header("content-length", "104857600").body(body).unwrap();
    let got = c.fetch(req).await;
    assert_eq!(got.status, 413, "{}", got.text());
    drop(tx);
    let mut c = Client::h1(listen).await;
    let (tx, body) = chan_body();
    let feed = tokio::spawn(async move {
        for _ in 0..40 {
            if tx.send(bytes::Bytes::from(vec![b' '; 64 * 1024])).await.is_err() {
                break;
            }
        }
    });
    let got = c.fetch(Request::post("/mcp").body(body).unwrap()).await;
    assert_eq!(got.status, 413, "{}", got.text());
    feed.abort();

    // Denied by policy: the error carries the request's id; in a batch, one per request.
    let mut c = Client::h1(listen).await;
    let got = c.fetch(post(call(41, "delete"), &[])).await;
    assert_eq!(
        (got.status.as_u16(), got.json()["id"].clone(), got.json()["error"]["code"].clone()),
        (403, json!(41), json!(-32001))
    );
    let got = c.fetch(post(format!("[{},{}]", call(1, "search"), call(2, "delete")), &[])).await;
    assert_eq!(got.status, 403);
    let ids: Vec<Value> = got.json().as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [json!(2)], "{}", got.text());
    assert_eq!(seen.count(), 0, "something reached the server");

    // An allowed call goes through unchanged, with one more hop.
    let got = c.fetch(post(call(5, "search"), &[("mcp-method", "tools/call"), ("mcp-name", "search")])).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(seen.count(), 1);
    let (parts, body, _) = seen.requests.lock().unwrap()[0].clone();
    assert_eq!(body, call(5, "search"));
    assert_eq!(parts.headers["x-trellis-hops"], "1");
    let metrics = blocking(|| proxy.metrics());
    assert!(
        metric_value(&metrics, "trellis_mcp_requests_total", &[("route", "mcp"), ("outcome", "invalid")])
            .unwrap_or(0.0)
            >= 6.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_looping_between_agents_stops_at_max_hops() {
    // The route sends requests back to the listener itself: a loop of agents calling
    // each other, one proxy per hop.
    let listen = listen_addr();
    let mut b = one_route(listen, any_path("loop", "self"), config::cluster("self", ClusterProtocol::Http1, &[listen]));
    b.listeners[0].max_hops = Some(5);
    let yaml = b.yaml();
    let _proxy = Proxy::start(&yaml);
    let mut c = Client::h1(listen).await;
    let got = within(Duration::from_secs(10), c.get("/agent")).await;
    assert_eq!(got.status, 508, "{}", got.text());
    assert_eq!(got.header("x-trellis-error"), Some("loop detected"));
    let mut c = Client::h1(listen).await;
    let req = Request::get("/agent").header("x-trellis-hops", "many").body(full("")).unwrap();
    assert_eq!(c.fetch(req).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tools_named_idempotent_are_retried() {
    // Two endpoints, one always failing with 503; the route retries gateway errors.
    let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    let (good, good_seen) = counting_origin(move |_, _| {
        http::Response::builder().header("content-type", "application/json").body(full(ok)).unwrap()
    })
    .await;
    let (bad, bad_seen) = counting_origin(|_, _| status_response(503)).await;
    let listen = listen_addr();
    let route = Route {
        retry: Some(config::part::<RetryPolicy>(json!({ "attempts": 2, "on": ["gateway_error"] }))),
        mcp: Some(Box::new(McpRoute { idempotent_tools: vec!["search".into()], ..Default::default() })),
        ..any_path("mcp", "tools")
    };
    let mut tools = config::cluster("tools", ClusterProtocol::Http1, &[good.addr, bad.addr]);
    tools.lb = LbPolicy::RoundRobin;
    let yaml = one_route(listen, route, tools).yaml();
    let _proxy = Proxy::start(&yaml);
    let mut c = Client::h1(listen).await;
    for i in 0..6 {
        let got = c.fetch(post(call(i, "search"), &[])).await;
        assert_eq!(got.status, 200, "search {i}: {}", got.text());
    }
    let mut failed = 0;
    for i in 0..6 {
        let got = c.fetch(post(call(i, "add"), &[])).await;
        failed += usize::from(got.status == 503);
    }
    let calls_of = |seen: &Seen, tool: &str| {
        seen.bodies().iter().filter(|b| b.windows(tool.len()).any(|w| w == tool.as_bytes())).count()
    };
    // Every search answered by the good endpoint, some after a failed try.
    assert_eq!(calls_of(&good_seen, "search"), 6);
    assert!(calls_of(&bad_seen, "search") >= 1, "round robin never tried the failing endpoint");
    // Each add sent once: the failures reached the client.
    assert_eq!(calls_of(&good_seen, "\"add\"") + calls_of(&bad_seen, "\"add\""), 6);
    assert_eq!(failed, calls_of(&bad_seen, "\"add\""));
    assert!(failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tool_has_its_own_rate_limit() {
    let (origin, seen) = counting_origin(|_, _| empty_tool_result()).await;
    let listen = listen_addr();
    let route = Route {
        rate_limit: Some(config::part::<RateLimit>(
            json!({ "requests_per_second": 0.1, "burst": 2, "per_mcp_tool": true }),
        )),
        mcp: Some(Box::default()),
        ..any_path("mcp", "tools")
    };
    let yaml = one_route(listen, route, config::cluster("tools", ClusterProtocol::Http1, &[origin.addr])).yaml();
    let _proxy = Proxy::start(&yaml);
    let mut c = Client::h1(listen).await;
    for i in 0..2 {
        assert_eq!(c.fetch(post(call(i, "search"), &[])).await.status, 200);
    }
    let got = c.fetch(post(call(3, "search"), &[])).await;
    assert_eq!(got.status, 429, "{}", got.text());
    assert_eq!((got.json()["id"].clone(), got.json()["error"]["code"].clone()), (json!(3), json!(-32002)));
    assert!(got.header("retry-after").is_some());
    // Another tool, and requests calling none, have buckets of their own.
    assert_eq!(c.fetch(post(call(4, "add"), &[])).await.status, 200);
    let list = json!({ "jsonrpc": "2.0", "id": 5, "method": "tools/list" }).to_string();
    assert_eq!(c.fetch(post(list, &[])).await.status, 200);
    assert_eq!(seen.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_coming_gets_408() {
    let (origin, seen) = counting_origin(|_, _| status_response(200)).await;
    let listen = listen_addr();
    let mut b = plain_config(listen, origin.addr);
    (b.routes[0].mcp, b.routes[0].idle_timeout) = (Some(Box::default()), Some(config::ms(1000)));
    let yaml = b.yaml();
    let _proxy = Proxy::start(&yaml);
    let mut c = Client::h1(listen).await;
    let (tx, body) = chan_body();
    tx.send(bytes::Bytes::from_static(b"{\"jsonrpc\":")).await.unwrap();
    let req = Request::post("/mcp").header("content-length", "100").body(body).unwrap();
    let got = within(Duration::from_secs(10), c.fetch(req)).await;
    assert_eq!(got.status, 408, "{}", got.text());
    assert_eq!(seen.count(), 0);
    drop(tx);
}

/// A plaintext listener with one `mcp: {}` route to a round-robin cluster of `apps`.
fn replicas_config(listen: SocketAddr, apps: &[SocketAddr]) -> Bootstrap {
    let mut tools = config::cluster("tools", ClusterProtocol::Http1, apps);
    tools.lb = LbPolicy::RoundRobin;
    one_route(listen, Route { mcp: Some(Box::default()), ..any_path("mcp", "tools") }, tools)
}

/// [`replicas_config`] whose cluster ejects endpoints as `outlier_detection` (JSON) says.
fn replicas_ejecting(listen: SocketAddr, apps: &[SocketAddr], outlier_detection: Value) -> Bootstrap {
    let mut b = replicas_config(listen, apps);
    b.clusters[0].outlier_detection = Some(config::part(outlier_detection));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_the_replica_that_initialized_it() {
    if !mcp_sdk_available("a_session_stays_on_the_replica_that_initialized_it") {
        return;
    }
    // Three replicas of a stateful server: a session's requests must all reach the one
    // that answered its `initialize` (the others answer 404 to its id).
    let (r1, r2, r3) = tokio::join!(
        McpServer::start_with(&["--replica", "r1"]),
        McpServer::start_with(&["--replica", "r2"]),
        McpServer::start_with(&["--replica", "r3"]),
    );
    let listen = listen_addr();
    let proxy = Proxy::start(&replicas_config(listen, &[r1.addr, r2.addr, r3.addr]).yaml());
    let url = format!("http://{listen}/mcp");
    let mut replicas = std::collections::BTreeSet::new();
    for session in 0..3 {
        let got = mcp_session(&url, &["whoami"; 6]).await;
        let seen = got["texts"]["whoami"].as_array().cloned().unwrap_or_default();
        assert_eq!(seen.len(), 6, "session {session}: {got}");
        assert!(seen.iter().all(|r| r == &seen[0] && r.is_string()), "session {session} moved: {got}");
        replicas.insert(seen[0].as_str().unwrap_or_default().to_owned());
    }
    // Round robin still spreads new sessions.
    assert!(replicas.len() >= 2, "every session on one replica: {replicas:?}");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_replica_is_gone_is_balanced_anew() {
    if !mcp_sdk_available("a_session_whose_replica_is_gone_is_balanced_anew") {
        return;
    }
    let (r1, r2) =
        tokio::join!(McpServer::start_with(&["--replica", "r1"]), McpServer::start_with(&["--replica", "r2"]));
    let listen = listen_addr();
    // Connection failures eject at once; ejection is what marks the replica gone.
    let od = json!({ "consecutive_gateway_errors": 1, "consecutive_5xx": 1, "base_ejection": "60s" });
    let _proxy = Proxy::start(&replicas_ejecting(listen, &[r1.addr, r2.addr], od).yaml());
    let accept = [("accept", "application/json, text/event-stream"), ("mcp-protocol-version", "2025-06-18")];
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } })
    .to_string();
    let mut c = Client::h1(listen).await;
    let got = c.fetch(post(init, &accept)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let id = got.header("mcp-session-id").expect("a session id").to_owned();
    let mut with_id = accept.to_vec();
    with_id.push(("mcp-session-id", &id));
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string();
    assert_eq!(c.fetch(post(note, &with_id)).await.status.as_u16(), 202);
    let who = |id: u32| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } })
            .to_string()
    };
    let got = c.fetch(post(who(2), &with_id)).await;
    let home = if got.text().contains("r1") { "r1" } else { "r2" };
    for i in 3..6 {
        assert!(c.fetch(post(who(i), &with_id)).await.text().contains(home));
    }
    // Its replica goes away: the session's requests go to the other one, which does not
    // know the session and answers 404, on which an MCP client starts a new session.
    drop(if home == "r1" { r1 } else { r2 });
    let mut last = 0;
    for i in 6..9 {
        let mut c = Client::h1(listen).await;
        last = c.fetch(post(who(i), &with_id)).await.status.as_u16();
    }
    assert_eq!(last, 404, "a lost session must answer 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_eject_a_replica_that_always_fails() {
    if !mcp_sdk_available("json_rpc_errors_eject_a_replica_that_always_fails") {
        return;
    }
    // Three stateless replicas answering over SSE with HTTP 200; r3's tools always fail
    // (a tool result with isError: true).
    let (r1, r2, r3) = tokio::join!(
        McpServer::start_with(&["--stateless", "--replica", "r1"]),
        McpServer::start_with(&["--stateless", "--replica", "r2"]),
        McpServer::start_with(&["--stateless", "--replica", "r3", "--broken"]),
    );
    let listen = listen_addr();
    let od = json!({ "consecutive_5xx": 3, "base_ejection": "60s", "max_ejection_percent": 50 });
    let mut b = replicas_ejecting(listen, &[r1.addr, r2.addr, r3.addr], od);
    b.routes[0].mcp = Some(Box::new(McpRoute { errors_are_failures: true, ..Default::default() }));
    let yaml = b.yaml();
    let proxy = Proxy::start(&yaml);
    let headers = [("accept", "application/json, text/event-stream"), ("mcp-protocol-version", "2025-06-18")];
    let who = |id: u32| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } })
            .to_string()
    };
    let mut c = Client::h1(listen).await;
    let mut broken = 0;
    for i in 0..15 {
        let got = c.fetch(post(who(i), &headers)).await;
        assert_eq!(got.status, 200, "{}", got.text());
        broken += usize::from(got.text().contains("r3 is broken"));
    }
    assert_eq!(broken, 3, "r3 answered {broken} of 15 before its ejection");
    for i in 15..27 {
        let got = c.fetch(post(who(i), &headers)).await;
        let text = got.text();
        assert!(text.contains("r1") || text.contains("r2"), "{text}");
        assert!(!text.contains("r3"), "the ejected replica still serves: {text}");
    }
    let metrics = blocking(|| proxy.metrics());
    assert_eq!(
        metric_value(&metrics, "trellis_outlier_ejections_total", &[("cluster", "tools")]),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_through_and_slow_and_failing_tools_answer() {
    if !mcp_sdk_available("progress_streams_through_and_slow_and_failing_tools_answer") {
        return;
    }
    let app = McpServer::start(false).await;
    let listen = listen_addr();
    let _proxy = Proxy::start(
        &Bootstrap {
            routes: vec![Route {
                timeout: Some(config::ms(5000)),
                ..replicas_config(listen, &[app.addr]).routes.remove(0)
            }],
            ..replicas_config(listen, &[app.addr])
        }
        .yaml(),
    );
    let got = mcp_session(&format!("http://{listen}/mcp"), &["countdown", "slow", "fail"]).await;
    // Four progress notifications, one every 400 ms, each arriving as it was sent: a
    // buffered stream would deliver them together with the result.
    let countdown = &got["calls"]["countdown"];
    assert_eq!(countdown["text"], "counted 4", "{got}");
    let at: Vec<u64> = countdown["progress"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    assert_eq!(at.len(), 4, "{got}");
    assert!(at[3] - at[0] >= 900, "progress came bunched together: {at:?}");
    assert!(countdown["ms"].as_u64().unwrap() >= at[0] + 1200, "the first progress came with the result: {got}");
    // A slow tool under the route timeout answers; a failing one surfaces its error.
    assert_eq!(got["calls"]["slow"]["text"], "slept 300 ms", "{got}");
    let fail = &got["calls"]["fail"];
    assert_eq!(fail["ok"], false, "{got}");
    assert!(fail["text"].as_str().unwrap_or_default().contains("the fail tool failed"), "{got}");
}

/// A policy letting anyone send only the JSON-RPC `methods` (any tool).
fn methods_policy(name: &str, methods: &[&str]) -> Policy {
    let mcp = PolicyMcp { methods: methods.iter().map(|m| m.to_string()).collect(), ..Default::default() };
    let rule = PolicyRule { mcp: Some(mcp), ..Default::default() };
    Policy { name: name.into(), default: PolicyDefault::Deny, rules: vec![rule] }
}

/// A plaintext listener whose `mcp: {}` route goes to `origin`, under a policy allowing
/// the session's plumbing and tools/list and tools/call, but no prompt.
fn tools_only_config(listen: SocketAddr, origin: SocketAddr) -> Bootstrap {
    let mut b = one_route(
        listen,
        Route { mcp: Some(Box::default()), ..any_path("mcp", "app") },
        config::cluster("app", ClusterProtocol::Http1, &[origin]),
    );
    b.listeners[0].policy = Some("tools-only".into());
    b.policies
        .push(methods_policy("tools-only", &["initialize", "ping", "notifications/*", "tools/list", "tools/call"]));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_by_mcp_method_allows_tools_but_not_prompts() {
    if !mcp_sdk_available("a_rule_by_mcp_method_allows_tools_but_not_prompts") {
        return;
    }
    // The real SDK client against the real server: tools work, the prompt is refused
    // with the JSON-RPC error the client shows.
    let app = McpServer::start(false).await;
    let listen = listen_addr();
    let proxy = Proxy::start(&tools_only_config(listen, app.addr).yaml());
    let got = mcp_session(&format!("http://{listen}/mcp"), &["search", "prompt:summarize", "add"]).await;
    assert_eq!(got["tools"].as_array().map(Vec::len), Some(7), "tools/list is not filtered by methods: {got}");
    assert_eq!(got["calls"]["search"]["text"], "results for mesh", "{got}");
    assert_eq!(got["calls"]["add"]["text"], "5", "{got}");
    let denied = &got["calls"]["prompt:summarize"];
    assert_eq!(denied["code"], -32001, "{got}");
    let message = denied["message"].as_str().unwrap_or_default();
    assert!(message.contains("policy \"tools-only\""), "{message}");
    let metrics = blocking(|| proxy.metrics());
    let prompt = |outcome| [("route", "mcp"), ("method", "prompts/get"), ("outcome", outcome)];
    assert_eq!(metric_value(&metrics, "trellis_mcp_requests_total", &prompt("denied")), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "trellis_mcp_requests_total", &prompt("allowed")), None, "{metrics}");
    drop(proxy);

    // The same policy in front of a counting server: the denied request carries its id
    // back and never reaches the server; in a batch, the error names the denied id only.
    let (origin, seen) = counting_origin(|_, _| empty_tool_result()).await;
    let listen = listen_addr();
    let _proxy = Proxy::start(&tools_only_config(listen, origin.addr).yaml());
    let mut c = Client::h1(listen).await;
    let prompt = |id: u32| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "prompts/get", "params": { "name": "summarize" } }).to_string()
    };
    let got = c.fetch(post(prompt(77), &[])).await;
    assert_eq!(
        (got.status.as_u16(), got.json()["id"].clone(), got.json()["error"]["code"].clone()),
        (403, json!(77), json!(-32001)),
        "{}",
        got.text()
    );
    assert_eq!(got.header("x-trellis-error"), Some("forbidden"));
    let list = json!({ "jsonrpc": "2.0", "id": 78, "method": "tools/list" }).to_string();
    let got = c.fetch(post(format!("[{list},{}]", prompt(79)), &[])).await;
    assert_eq!(got.status, 403, "{}", got.text());
    let ids: Vec<Value> = got.json().as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [json!(79)], "{}", got.text());
    assert_eq!(seen.count(), 0, "a denied prompts/get reached the server");
    assert_eq!(c.fetch(post(list, &[])).await.status, 200);
    assert_eq!(c.fetch(post(call(80, "anything"), &[])).await.status, 200);
    assert_eq!(seen.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_a_per_tool_rate_limit_as_a_json_rpc_error() {
    if !mcp_sdk_available("the_sdk_sees_a_per_tool_rate_limit_as_a_json_rpc_error") {
        return;
    }
    let app = McpServer::start(false).await;
    let listen = listen_addr();
    // 8 calls per tool, refilled at one per 100 s: the 9th search is over the limit
    // however slow the machine. The session's own requests (initialize, the
    // initialized notification, tools/list, its GET stream and DELETE) share another bucket.
    let route = Route {
        rate_limit: Some(config::part::<RateLimit>(
            json!({ "requests_per_second": 0.01, "burst": 8, "per_mcp_tool": true }),
        )),
        mcp: Some(Box::default()),
        ..any_path("mcp", "tools")
    };
    let yaml = one_route(listen, route, config::cluster("tools", ClusterProtocol::Http1, &[app.addr])).yaml();
    let _proxy = Proxy::start(&yaml);
    let mut tools = vec!["search"; 9];
    tools.push("add");
    let got = mcp_session(&format!("http://{listen}/mcp"), &tools).await;
    let results = got["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 10, "{got}");
    for (i, r) in results[..8].iter().enumerate() {
        assert_eq!(r["text"], "results for mesh", "search {i}: {got}");
    }
    // The SDK hands the caller the proxy's JSON-RPC error (not an HTTP failure).
    assert_eq!((results[8]["ok"].clone(), results[8]["code"].clone()), (json!(false), json!(-32002)), "{got}");
    assert!(results[8]["message"].as_str().unwrap_or_default().contains("rate"), "{got}");
    // Another tool has a bucket of its own.
    assert_eq!(results[9]["text"], "5", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_an_idempotent_tool_succeed_across_a_failing_replica() {
    if !mcp_sdk_available("the_sdk_sees_an_idempotent_tool_succeed_across_a_failing_replica") {
        return;
    }
    // Two stateless replicas; r2 answers every tools/call with 503 (after reading it).
    let (r1, r2) = tokio::join!(
        McpServer::start_with(&["--stateless", "--replica", "r1"]),
        McpServer::start_with(&["--stateless", "--replica", "r2", "--fail-calls"]),
    );
    let listen = listen_addr();
    let mut b = replicas_config(listen, &[r1.addr, r2.addr]);
    b.routes[0].retry = Some(config::part::<RetryPolicy>(json!({ "attempts": 2, "on": ["gateway_error"] })));
    b.routes[0].mcp = Some(Box::new(McpRoute { idempotent_tools: vec!["search".into()], ..Default::default() }));
    let proxy = Proxy::start(&b.yaml());
    let mut tools = vec!["search"; 4];
    tools.extend(["add"; 4]);
    let got = mcp_session(&format!("http://{listen}/mcp"), &tools).await;
    let results = got["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 8, "{got}");
    // Round robin sends some searches to r2 first: retried on r1, every one succeeds.
    for (i, r) in results[..4].iter().enumerate() {
        assert_eq!(r["text"], "results for mesh", "search {i}: {got}");
    }
    let metrics = blocking(|| proxy.metrics());
    let retries = metric_value(&metrics, "trellis_upstream_retries_total", &[("cluster", "tools")]).unwrap_or(0.0);
    assert!(retries >= 1.0, "no search was retried: {metrics}");
    // add is not named idempotent: a call r2 got fails (a retry would have reached r1),
    // and the client sees r2's 503 as the SDK reports a failed HTTP answer.
    let failed: Vec<&Value> = results[4..].iter().filter(|r| r["ok"] == false).collect();
    assert!(!failed.is_empty(), "no add failed: retried, or none reached r2: {got}");
    assert!(failed.iter().all(|r| r["code"] == -32603), "{got}");
    assert!(results[4..].iter().all(|r| r["ok"] == false || r["text"] == "5"), "{got}");
}
