//! `trellis demo` end to end: the real binary brings up a control plane, two sidecars with
//! mTLS and two agent services, drives traffic through them, shows an MCP session and one
//! request's trace, and stops everything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::trellis_command;

#[test]
fn demo_runs_a_mesh_with_traffic_and_no_errors() {
    let out = trellis_command().args(["demo", "--seconds", "6", "--users", "2"]).output().expect("run trellis demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    let total = stdout.lines().find(|l| l.starts_with("total:")).unwrap_or_else(|| panic!("no total line: {stdout}"));
    let ok: u64 = total.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap();
    assert!(ok > 10, "too few plans went through: {total}");
    assert!(total.contains(" 0 errors"), "errors in the demo: {total}\n{stderr}");
    assert!(stdout.contains("trellis ctl --server"), "the guide names ctl commands: {stdout}");
    // The MCP session through the sidecars: the allowed tool answers, the denied one gets
    // the policy's JSON-RPC error, and tools/list shows only the allowed tool.
    let line = |start: &str| stdout.lines().find(|l| l.trim_start().starts_with(start)).unwrap_or_default();
    assert!(line("tools/list").contains("[\"search_docs\"]"), "{stdout}");
    assert!(line("tools/call search_docs").contains("200  allowed: \"3 documents match"), "{stdout}");
    assert!(line("tools/call delete_repo").contains("403  denied: JSON-RPC -32001"), "{stdout}");
    // One traced request: tracing set by the control plane's Telemetry resource, spans from
    // both sidecars in one tree (the planner's server span, its try, the tools sidecar's
    // server span under the try).
    assert!(!stdout.contains("tracing:"), "the demo's trace failed: {stdout}\n{stderr}");
    assert!(!line("server span  GET planner 200").is_empty(), "{stdout}");
    assert!(!line("client span  GET planner 200").is_empty(), "{stdout}");
    assert!(!line("server span  GET tools 200").is_empty(), "{stdout}");
    let indent = |start: &str| {
        stdout.lines().find(|l| l.trim_start().starts_with(start)).map(|l| l.len() - l.trim_start().len())
    };
    assert!(
        indent("server span  GET tools") > indent("client span  GET planner"),
        "the tools sidecar's span hangs under the planner's try: {stdout}"
    );
}
