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
