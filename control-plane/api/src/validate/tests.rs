use super::*;
use crate::parse_bootstrap;

fn errors(yaml: &str) -> Vec<String> {
    let b = parse_bootstrap(yaml).expect("parses");
    match validate(&b) {
        Ok(()) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const GOOD: &str = r#"
listeners:
  - { name: in, address: "127.0.0.1:4140", routes: [api] }
routes:
  - name: api
    match: { host: "*.example.com", path_prefix: /api, methods: [GET] }
    backends: [{ cluster: a, weight: 9 }, { cluster: b }]
clusters:
  - { name: a, endpoints: [{ address: "127.0.0.1:8081" }] }
  - { name: b, endpoints: [{ address: "localhost:8082" }] }
"#;

#[test]
fn good_config_passes() {
    assert_eq!(errors(GOOD), Vec::<String>::new());
}

#[test]
fn dangling_cluster_is_named() {
    let bad = GOOD.replace("{ cluster: b }", "{ cluster: x }");
    assert_eq!(errors(&bad), vec![r#"routes[api].backends[1].cluster: no cluster named "x""#]);
}

#[test]
fn dangling_route_is_named() {
    let bad = GOOD.replace("routes: [api]", "routes: [api, nope]");
    assert_eq!(errors(&bad), vec![r#"listeners[in].routes[1]: no route named "nope""#]);
}

#[test]
fn duplicate_names_and_addresses() {
    let bad = GOOD.replace(
        "  - { name: in, address: \"127.0.0.1:4140\", routes: [api] }",
        "  - { name: in, address: \"127.0.0.1:4140\", routes: [api] }\n  - { name: in, address: \"127.0.0.1:4140\", routes: [api] }",
    );
    let e = errors(&bad);
    assert!(e.iter().any(|e| e.contains("listeners[in].name")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("is used by another listener")), "{e:?}");
}

#[test]
fn bad_values() {
    let bad = GOOD
        .replace("path_prefix: /api", "path_prefix: api")
        .replace("*.example.com", "a*b")
        .replace("[GET]", "[\"G T\"]")
        .replace("127.0.0.1:8081", "not-an-address");
    let e = errors(&bad);
    for want in [
        "routes[api].match.path_prefix",
        "routes[api].match.host",
        "routes[api].match.methods[0]",
        "clusters[a].endpoints[0].address",
    ] {
        assert!(e.iter().any(|e| e.starts_with(want)), "missing {want} in {e:?}");
    }
}

#[test]
fn tcp_listener_needs_cluster() {
    let bad = GOOD.replace("routes: [api] }", "protocol: tcp }");
    assert_eq!(errors(&bad), vec!["listeners[in].cluster: a tcp listener needs a cluster"]);
}

#[test]
fn endpoint_addresses_are_unique_in_a_cluster_and_hold_no_slash() {
    let bad = GOOD.replace(
        r#"endpoints: [{ address: "127.0.0.1:8081" }]"#,
        r#"endpoints: [{ address: "127.0.0.1:8081" }, { address: "127.0.0.1:8081", weight: 2 }, { address: "a/b:80" }]"#,
    );
    assert_eq!(
        errors(&bad),
        vec![
            r#"clusters[a].endpoints[1].address: "127.0.0.1:8081" is listed twice (give it a weight instead)"#,
            r#"clusters[a].endpoints[2].address: "a/b:80" holds a `/`"#,
        ]
    );
    // The same address in two clusters is fine.
    let ok = GOOD.replace("localhost:8082", "127.0.0.1:8081");
    assert_eq!(errors(&ok), Vec::<String>::new());
}

const IDENTITY: &str = "identity: { cert: c.pem, key: c.key, trust_bundle: ca.pem }\n";

#[test]
fn a_pod_sidecar_config_passes() {
    let yaml = format!(
        r#"{IDENTITY}listeners:
  - {{ name: outbound, address: "127.0.0.1:4140", transparent: true, outbound_policy: registry_only, detect_timeout: 1s, opaque_ports: [25, 5432] }}
  - {{ name: inbound, address: "0.0.0.0:4143", transparent: true, tls: {{ mode: permissive }}, policy: p }}
clusters:
  - {{ name: checkout, endpoints: [{{ address: "10.250.0.2:8080", identity: "spiffe://trellis.local/ns/default/sa/checkout" }}] }}
policies:
  - {{ name: p, default: allow }}
"#
    );
    assert_eq!(errors(&yaml), Vec::<String>::new());
}

#[test]
fn connect_fields_are_checked() {
    let got = errors(
        r#"listeners:
  - { name: ok, address: "127.0.0.1:1", connect: true, connect_ports: [443, 8443] }
  - { name: a, address: "127.0.0.1:2", connect_ports: [443] }
  - { name: b, address: "127.0.0.1:3", connect: true, connect_ports: [] }
  - { name: c, address: "127.0.0.1:4", connect: true, connect_ports: [0] }
  - { name: d, address: "127.0.0.1:5", protocol: tcp, cluster: t, connect: true }
clusters:
  - { name: t, endpoints: [{ address: "127.0.0.1:9" }] }
"#,
    );
    assert_eq!(
        got,
        [
            "listeners[a].connect_ports: applies with connect: true only",
            "listeners[b].connect_ports: must list at least one port",
            "listeners[c].connect_ports: 0 is not a port",
            "listeners[d].connect: applies to HTTP listeners that are not transparent",
        ]
    );
}

#[test]
fn transparent_fields_are_checked() {
    let got = errors(
        r#"listeners:
  - { name: a, address: "127.0.0.1:1", outbound_policy: allow_any, detect_timeout: 1s, opaque_ports: [25] }
  - { name: b, address: "127.0.0.1:2", transparent: true, protocol: tcp, cluster: c }
  - { name: c, address: "127.0.0.1:3", transparent: true, detect_timeout: 0s, opaque_ports: [0] }
  - { name: d, address: "127.0.0.1:4", protocol: tcp, cluster: c, tls: { mode: permissive } }
clusters:
  - { name: c, endpoints: [{ address: "127.0.0.1:9", identity: "not-spiffe" }] }
  - { name: t, tls: { mode: tls, trust_bundle: ca.pem }, endpoints: [{ address: "127.0.0.1:9", identity: "spiffe://td/x" }] }
"#,
    );
    assert_eq!(
        got,
        [
            "listeners[d].tls.mode: mesh and permissive need the bootstrap's identity (cert, key, trust_bundle)",
            "clusters[c].endpoints[0].identity: \"not-spiffe\" is not a SPIFFE ID (spiffe://…)",
            "clusters[t].endpoints[0].identity: a mesh endpoint needs the bootstrap's identity (cert, key, trust_bundle)",
            "listeners[a].detect_timeout: applies to transparent listeners only (transparent: true)",
            "listeners[a].opaque_ports: applies to transparent listeners only (transparent: true)",
            "listeners[a].outbound_policy: applies to transparent outbound listeners only (transparent: true, no tls)",
            "listeners[b].protocol: a transparent listener detects each connection's protocol: use auto (opaque_ports for ports that are not HTTP)",
            "listeners[c].detect_timeout: must be above 0",
            "listeners[c].opaque_ports: 0 is not a port",
            "listeners[d].tls.mode: permissive applies to HTTP listeners (protocol auto or http)",
        ]
    );
    let inbound_policy = format!(
        "{IDENTITY}listeners:\n  - {{ name: i, address: \"0.0.0.0:4143\", transparent: true, tls: {{ mode: mesh }}, outbound_policy: registry_only }}\nclusters:\n  - {{ name: t, tls: {{ mode: tls, trust_bundle: ca.pem }}, endpoints: [{{ address: \"127.0.0.1:9\", identity: \"spiffe://td/x\" }}] }}\n"
    );
    assert_eq!(
        errors(&inbound_policy),
        [
            "clusters[t].endpoints[0].identity: identity makes the endpoint a mesh (mTLS) one; the cluster's tls mode is tls",
            "listeners[i].outbound_policy: applies to transparent outbound listeners only (transparent: true, no tls)",
        ]
    );
}

#[test]
fn http3_needs_terminate_on_an_http_listener() {
    let tls = |extra: &str| {
        GOOD.replace(
            "routes: [api] }",
            &format!("routes: [api], tls: {{ mode: terminate, certificates: [{{ cert: c, key: k }}]{extra} }} }}"),
        )
    };
    assert_eq!(errors(&tls(", http3: true")), Vec::<String>::new());
    assert_eq!(errors(&tls(", http3: true, early_data: true")), Vec::<String>::new());
    assert_eq!(
        errors(&tls(", early_data: true")),
        vec!["listeners[in].tls.early_data: early data (0-RTT) is offered over HTTP/3 only: set http3: true"]
    );
    assert_eq!(errors(&tls(", http3: true, http3_max_connections: 1")), Vec::<String>::new());
    assert_eq!(
        errors(&tls(", http3_max_connections: 100")),
        vec!["listeners[in].tls.http3_max_connections: applies to HTTP/3 only: set http3: true"]
    );
    for bad in [0, 1_000_001] {
        assert_eq!(
            errors(&tls(&format!(", http3: true, http3_max_connections: {bad}"))),
            vec!["listeners[in].tls.http3_max_connections: must be 1–1000000"],
            "{bad}"
        );
    }
    let plain = GOOD.replace("routes: [api] }", "routes: [api], tls: { mode: none, http3: true } }");
    assert_eq!(errors(&plain), vec!["listeners[in].tls.http3: HTTP/3 needs mode terminate"]);
    let tcp = tls(", http3: true").replace("routes: [api], tls", "protocol: tcp, cluster: a, tls");
    assert_eq!(
        errors(&tcp),
        vec!["listeners[in].tls.http3: HTTP/3 needs an HTTP listener (protocol auto or http), not tcp"]
    );
}

#[test]
fn control_plane_addresses_are_one_or_a_list_each_checked() {
    let one = parse_bootstrap("control_plane: { address: \"http://127.0.0.1:7071\" }\n").unwrap();
    assert_eq!(one.control_plane.as_ref().unwrap().address.all(), ["http://127.0.0.1:7071"]);
    let yaml = "control_plane: { address: [\"http://a:7071\", \"b:7071\"] }\n";
    assert_eq!(
        errors(yaml),
        vec![r#"control_plane.address[1]: "b:7071" is not http://HOST:PORT or https://HOST:PORT"#]
    );
    let list = parse_bootstrap("control_plane: { address: [\"http://a:7071\", \"http://b:7071\"] }\n").unwrap();
    assert_eq!(list.control_plane.as_ref().unwrap().address.all().len(), 2);
    // Written back as read.
    let out = serde_json::to_value(&list.control_plane).unwrap();
    assert_eq!(out["address"], serde_json::json!(["http://a:7071", "http://b:7071"]));
    assert_eq!(serde_json::to_value(&one.control_plane).unwrap()["address"], "http://127.0.0.1:7071");
    let err = parse_bootstrap("control_plane: { address: [] }\n").unwrap_err().to_string();
    assert!(err.starts_with("control_plane.address") && err.contains("at least one"), "{err}");
    let err = parse_bootstrap("control_plane: { address: 7 }\n").unwrap_err().to_string();
    assert!(err.starts_with("control_plane.address"), "{err}");
}

#[test]
fn offline_checks_take_host_names_by_form() {
    let b =
        parse_bootstrap("clusters: [{ name: a, endpoints: [{ address: \"no-such-host.invalid:80\" }] }]\n").unwrap();
    assert!(validate_resources(&b).is_err(), "resolved: no such host");
    assert_eq!(validate_resources_offline(&b), Ok(()));
}

#[test]
fn mcp_fields_are_checked_by_name() {
    let good = GOOD.replace("routes: [api] }", "routes: [api], max_hops: 8 }").replace(
        "backends: [{ cluster: a, weight: 9 }, { cluster: b }]",
        "backends: [{ cluster: a, weight: 9 }, { cluster: b }]\n    mcp: { max_body_bytes: 65536, max_batch: 10, idempotent_tools: [search, \"read_*\"], max_sessions: 100, session_idle_timeout: 5m, errors_are_failures: true }",
    ) + "policies:\n  - name: p\n    rules: [{ from: [\"spiffe://td/*\"], mcp: { methods: [tools/call, \"notifications/*\"], tools: [\"search*\"] } }]\n";
    assert_eq!(errors(&good), Vec::<String>::new());
    let bad = good
        .replace("max_hops: 8", "max_hops: 0")
        .replace("max_body_bytes: 65536", "max_body_bytes: 10")
        .replace("max_batch: 10", "max_batch: 0")
        .replace("max_sessions: 100", "max_sessions: 0")
        .replace("session_idle_timeout: 5m", "session_idle_timeout: 0s")
        .replace("\"search*\"", "\"se*rch\"")
        .replace("tools/call,", "\"\",")
        .replace("\"read_*\"", "\"*x\"");
    let no_mcp = GOOD.replace(
        "backends: [{ cluster: a, weight: 9 }, { cluster: b }]",
        "backends: [{ cluster: a, weight: 9 }, { cluster: b }]\n    rate_limit: { requests_per_second: 5, per_mcp_tool: true }",
    );
    assert_eq!(
        errors(&no_mcp),
        ["routes[api].rate_limit.per_mcp_tool: needs the route's mcp (tools are read from MCP bodies)"]
    );
    let e = errors(&bad);
    for want in [
        "listeners[in].max_hops",
        "routes[api].mcp.max_body_bytes",
        "routes[api].mcp.max_batch",
        "policies[p].rules[0].mcp.tools[0]",
        "policies[p].rules[0].mcp.methods[0]",
        "routes[api].mcp.idempotent_tools[1]",
        "routes[api].mcp.max_sessions",
        "routes[api].mcp.session_idle_timeout",
    ] {
        assert!(e.iter().any(|e| e.starts_with(want)), "{want} missing from {e:?}");
    }
    assert_eq!(e.len(), 8, "{e:?}");
}

#[test]
fn tracing_fields_are_checked_and_named() {
    let ok = format!(
        "{GOOD}tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:4318\", protocol: http }}, sample_ratio: 0.01 }}\n"
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
    let b = parse_bootstrap(&ok).expect("parses");
    let t = b.tracing.expect("tracing");
    assert_eq!((t.otlp.protocol, t.sample_ratio), (crate::OtlpProtocol::Http, Some(0.01)));
    let grpc =
        parse_bootstrap(&format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"http://c:4317\" }} }}\n")).expect("parses");
    assert_eq!(grpc.tracing.expect("tracing").otlp.protocol, crate::OtlpProtocol::Grpc, "gRPC is the default");

    let bad =
        format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"collector:4317\" }}, sample_ratio: 1.5, max_queue: 0 }}\n");
    assert_eq!(
        errors(&bad),
        vec![
            r#"tracing.otlp.endpoint: "collector:4317" is not http://HOST:PORT or https://HOST:PORT"#,
            "tracing.sample_ratio: must be between 0.0 and 1.0",
            "tracing.max_queue: must be at least 1",
        ]
    );
    let tls = format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"https://c:4317\", ca_file: /etc/ca.pem }} }}\n");
    assert_eq!(errors(&tls), Vec::<String>::new(), "https:// collectors, with or without ca_file");
    let ca_on_http = format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"http://c:4317\", ca_file: ca.pem }} }}\n");
    assert_eq!(errors(&ca_on_http), vec!["tracing.otlp.ca_file: applies to https:// endpoints only"]);
    let empty_ca = format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"https://c:4317\", ca_file: \"\" }} }}\n");
    assert_eq!(errors(&empty_ca), vec!["tracing.otlp.ca_file: must not be empty"]);
    let path = format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"https://c:4317/v1\" }} }}\n");
    assert_eq!(
        errors(&path),
        vec![r#"tracing.otlp.endpoint: "https://c:4317/v1" is not http://HOST:PORT or https://HOST:PORT"#]
    );
    let typo = format!("{GOOD}tracing: {{ otlp: {{ endpoint: \"http://c:4317\", protocol: udp }} }}\n");
    let err = parse_bootstrap(&typo).expect_err("unknown protocol").to_string();
    assert!(err.contains("tracing.otlp.protocol"), "{err}");
}

fn telemetry(yaml: &str) -> crate::Telemetry {
    crate::parse::parse(yaml).expect("parses")
}

#[test]
fn telemetry_is_checked_with_its_name_in_every_field() {
    let ok = Bootstrap {
        telemetry: vec![
            telemetry("{name: mesh, tracing: {otlp: {endpoint: \"http://c:4317\"}, sample_ratio: 0.1}}"),
            telemetry("{name: web, service: web, tracing: {otlp: {endpoint: \"https://c:4317\", ca_file: ca.pem}}}"),
            telemetry("{name: quiet, service: batch}"),
        ],
        ..Default::default()
    };
    assert_eq!(validate_resources(&ok), Ok(()));

    let bad = Bootstrap {
        telemetry: vec![
            telemetry("{name: a, tracing: {otlp: {endpoint: \"c:4317\"}, sample_ratio: 2}}"),
            telemetry("{name: b}"),
            telemetry("{name: c, service: web}"),
            telemetry("{name: d, service: web, tracing: {otlp: {endpoint: \"http://c:1\", ca_file: x.pem}}}"),
            telemetry("{name: e, service: \" \"}"),
            telemetry("{name: a}"),
        ],
        ..Default::default()
    };
    let errs: Vec<String> = validate_resources(&bad).expect_err("invalid").iter().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        vec![
            r#"telemetry[a].name: "a" is defined twice"#,
            r#"telemetry[a].tracing.otlp.endpoint: "c:4317" is not http://HOST:PORT or https://HOST:PORT"#,
            "telemetry[a].tracing.sample_ratio: must be between 0.0 and 1.0",
            "telemetry[b].service: every proxy (no service) is already selected by telemetry[a]",
            r#"telemetry[d].service: service "web" is already selected by telemetry[c]"#,
            "telemetry[d].tracing.otlp.ca_file: applies to https:// endpoints only",
            "telemetry[e].service: must not be empty (leave it out for every proxy)",
            "telemetry[a].service: every proxy (no service) is already selected by telemetry[b]",
        ]
    );
}

#[test]
fn telemetry_is_not_a_bootstrap_field() {
    let err = parse_bootstrap("telemetry: [{name: a}]\n").expect_err("unknown").to_string();
    assert!(err.contains("unknown field `telemetry`"), "{err}");
}
