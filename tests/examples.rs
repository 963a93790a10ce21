//! The configs in examples/ stay valid: every proxy bootstrap passes the real binary's
//! `trellis validate`, and every `ctl` manifest (documents with `kind:`) is accepted by a
//! real control plane through `trellis ctl apply`, in the order its directory's run.sh
//! applies them. A failure names the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::*;

use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every `*.yaml` under `dir`, sorted, at any depth.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A `ctl` manifest: some document has a top-level `kind:` (a bootstrap never does).
fn is_manifest(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("kind:"))
}

/// Runs `trellis ARGS` to completion: (exit code, stdout + stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = trellis_command().args(args).envs(env.iter().copied()).output().expect("run trellis");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn every_example_bootstrap_passes_trellis_validate() {
    let files: Vec<PathBuf> = yaml_files(&examples_dir())
        .into_iter()
        .filter(|f| !is_manifest(&std::fs::read_to_string(f).unwrap()))
        .collect();
    // basic, mcp (3), mesh (2), sidecar-pair (2): a walk that finds none checks nothing.
    assert!(files.len() >= 8, "too few bootstraps found: {files:?}");
    let mut failed = Vec::new();
    for f in &files {
        let (code, out) = run(&["validate", "--config", f.to_str().unwrap()], &[]);
        if code != Some(0) {
            failed.push(format!("{}: exit {code:?}: {out}", f.display()));
        }
    }
    assert!(failed.is_empty(), "invalid example configs:\n{}", failed.join("\n"));
}

#[test]
fn a_broken_example_is_refused_by_name() {
    // The check above is only worth something if validate refuses a broken copy.
    let text = std::fs::read_to_string(examples_dir().join("mcp/tools.yaml")).unwrap();
    assert!(text.contains("policy: tools-authz"), "the example changed: update this test");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("tools.yaml");
    std::fs::write(&broken, text.replace("policy: tools-authz", "policy: no-such-policy")).unwrap();
    let (code, out) = run(&["validate", "--config", broken.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no-such-policy"), "{out}");
}

/// The manifests of `dir`, in the order its run.sh applies them (`ctl apply -f NAME`),
/// then any run.sh does not name.
fn manifests_in_apply_order(dir: &Path) -> Vec<PathBuf> {
    let mut manifests: Vec<PathBuf> = yaml_files(dir)
        .into_iter()
        .filter(|f| f.parent() == Some(dir) && is_manifest(&std::fs::read_to_string(f).unwrap()))
        .collect();
    let script = std::fs::read_to_string(dir.join("run.sh")).unwrap_or_default();
    let mut ordered = Vec::new();
    for line in script.lines() {
        let Some(rest) = line.split("ctl apply -f ").nth(1) else { continue };
        let name = rest.split_whitespace().next().unwrap_or_default().trim_matches('"');
        let path = dir.join(name);
        assert!(path.exists(), "{}/run.sh applies {name}, which does not exist", dir.display());
        if let Some(i) = manifests.iter().position(|m| *m == path) {
            ordered.push(manifests.remove(i));
        }
    }
    ordered.extend(manifests);
    ordered
}

#[test]
fn every_example_manifest_is_accepted_by_a_control_plane() {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(examples_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let mut applied = 0;
    for dir in dirs {
        let manifests = manifests_in_apply_order(&dir);
        if manifests.is_empty() {
            continue;
        }
        // A fresh control plane per example: each example's manifests stand on their own.
        let (cp, _data) = ControlPlane::fresh();
        let server = cp.api_url();
        for m in manifests {
            let (code, out) = run(&["ctl", "apply", "-f", m.to_str().unwrap()], &[("TRELLIS_SERVER", &server)]);
            assert_eq!(code, Some(0), "{}: trellis ctl apply refused it:\n{out}", m.display());
            assert!(out.contains("created") || out.contains("configured"), "{}: {out}", m.display());
            applied += 1;
        }
    }
    assert!(applied >= 2, "no manifests found under examples/");
}

#[test]
fn every_file_a_run_script_names_exists() {
    // `--config NAME` and `-f NAME` in each run.sh point at files of its directory (or of
    // the repository, for a script that runs from there).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in std::fs::read_dir(examples_dir()).unwrap().map(|e| e.unwrap().path()) {
        let Ok(script) = std::fs::read_to_string(dir.join("run.sh")) else { continue };
        for word in script.split_whitespace().collect::<Vec<_>>().windows(2) {
            if (word[0] == "--config" || word[0] == "-f") && word[1].ends_with(".yaml") {
                let name = word[1].trim_matches('"');
                let found = dir.join(name).exists() || root.join(name).exists();
                assert!(found, "{}/run.sh names {name}, which does not exist", dir.display());
            }
        }
    }
}

/// examples/mcp as its run.sh starts it (the same `trellis certs` commands, the same three
/// configs), on free ports: two agents behind their own sidecars reach one MCP tool server
/// behind its sidecar, each gets what its identity's rule allows, and the planner reaches
/// the tool server through the researcher agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_example_gives_each_agent_its_own_tools() {
    if !mcp_sdk_available("the_mcp_example_gives_each_agent_its_own_tools") {
        return;
    }
    let example = examples_dir().join("mcp");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let (code, out) = run(&["certs", "init", "--dir", pki_s], &[]);
    assert_eq!(code, Some(0), "certs init: {out}");
    for sa in ["planner", "researcher", "tools"] {
        let (id, to) = (format!("spiffe://trellis.local/ns/agents/sa/{sa}"), format!("{pki_s}/{sa}"));
        let (code, out) = run(&["certs", "issue", "--dir", pki_s, "--id", &id, "--out", &to], &[]);
        assert_eq!(code, Some(0), "certs issue {sa}: {out}");
    }
    let (planner, researcher, tools) = (listen_addr(), listen_addr(), listen_addr());
    let (to_researcher, researcher_in) = (listen_addr(), listen_addr());
    // The tool server, and the researcher agent: an MCP server whose `research` tool calls
    // the tool server's `search` through the researcher's sidecar.
    let upstream = format!("http://{researcher}/mcp");
    let agent_args = ["--upstream", upstream.as_str()];
    let (app, agent) = tokio::join!(McpServer::start(false), McpServer::start_with(&agent_args));
    let moved = [
        ("127.0.0.1:4140", planner),
        ("127.0.0.1:4141", researcher),
        ("127.0.0.1:4142", to_researcher),
        ("127.0.0.1:4143", tools),
        ("127.0.0.1:4144", researcher_in),
        ("127.0.0.1:8000", app.addr),
        ("127.0.0.1:8001", agent.addr),
    ];
    let config = |name: &str| {
        let mut yaml = std::fs::read_to_string(example.join(name)).unwrap();
        for (from, to) in &moved {
            yaml = yaml.replace(from, &to.to_string());
        }
        for admin in ["127.0.0.1:9901", "127.0.0.1:9902", "127.0.0.1:9903"] {
            yaml = yaml.replace(admin, "\"{admin}\"");
        }
        let yaml = yaml.replace("pki/", &format!("{pki_s}/"));
        // Every address left is one of the test's: the example's own would collide.
        let ours: Vec<String> = moved.iter().map(|(_, a)| a.to_string()).collect();
        for (at, _) in yaml.match_indices("127.0.0.1:") {
            let port: String = yaml[at + 10..].chars().take_while(char::is_ascii_digit).collect();
            let addr = format!("127.0.0.1:{port}");
            assert!(ours.contains(&addr), "{name}: {addr} left unmoved");
        }
        yaml
    };
    let _tools = Proxy::start(&config("tools.yaml"));
    let _planner = Proxy::start(&config("planner.yaml"));
    let _researcher = Proxy::start(&config("researcher.yaml"));

    let (planner_url, researcher_url) = (format!("http://{planner}/mcp"), format!("http://{researcher}/mcp"));
    let (p, r) = tokio::join!(
        mcp_session(&planner_url, &["search", "add", "countdown", "prompt:summarize"]),
        mcp_session(&researcher_url, &["search", "countdown", "add", "prompt:summarize"]),
    );
    // The planner: search and add; countdown is not its tool; prompts are not restricted.
    assert_eq!(p["tools"], serde_json::json!(["add", "search"]), "planner: {p}");
    assert_eq!(p["calls"]["search"]["text"], "results for mesh", "planner: {p}");
    assert_eq!(p["calls"]["add"]["text"], "5", "planner: {p}");
    assert_eq!(p["calls"]["countdown"]["code"], -32001, "planner: {p}");
    assert_eq!(p["calls"]["prompt:summarize"]["ok"], true, "planner: {p}");
    // The researcher: search and countdown (its progress streams through both sidecars);
    // add is the planner's, and its rule allows no prompts.
    assert_eq!(r["tools"], serde_json::json!(["countdown", "search"]), "researcher: {r}");
    assert_eq!(r["calls"]["search"]["text"], "results for mesh", "researcher: {r}");
    assert_eq!(r["calls"]["countdown"]["text"], "counted 4", "researcher: {r}");
    assert_eq!(r["calls"]["countdown"]["progress"].as_array().map(Vec::len), Some(4), "researcher: {r}");
    assert_eq!(r["calls"]["add"]["code"], -32001, "researcher: {r}");
    let message = r["calls"]["add"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("spiffe://trellis.local/ns/agents/sa/researcher"), "{message}");
    assert_eq!(r["calls"]["prompt:summarize"]["code"], -32001, "researcher: {r}");

    // The chain: the planner calls the researcher agent's `research`, which calls the tool
    // server's `search` as the researcher. x-trellis-hops reached the agent as 2 (the
    // planner's sidecar, then the researcher's). The researcher's sidecar lets the planner
    // call `research` only.
    let chain = mcp_session(&format!("http://{to_researcher}/mcp"), &["research", "search"]).await;
    assert_eq!(chain["tools"], serde_json::json!(["research"]), "chain: {chain}");
    assert_eq!(chain["calls"]["research"]["text"], "researched at hop 2: results for mesh", "chain: {chain}");
    assert_eq!(chain["calls"]["search"]["code"], -32001, "chain: {chain}");
}
