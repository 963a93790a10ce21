//! Outside programs the tests drive (python packages, `websocat`, `chromium`): whether they
//! are installed, and running one under a time bound with a JSON answer.
//!
//! A missing tool skips the test on a developer machine (printing why); where the test's
//! `TRELLIS_REQUIRE_…` variable is set (.ci/run sets them and installs the tools), it fails.

use super::*;

/// Whether `python3 -c "import MODULE"` works. Where `require_env` is set (CI) a missing
/// module fails the test; elsewhere the caller skips, and this prints why.
pub fn python_module_available(test: &str, module: &str, require_env: &str) -> bool {
    let ok = runs("python3", &["-c", &format!("import {module}")]);
    if !ok {
        assert!(
            std::env::var_os(require_env).is_none(),
            "{test}: python3 with {module} is required here (pip install -r .ci/requirements.txt)"
        );
        eprintln!("SKIPPED {test}: python3 with {module} not found (pip install -r .ci/requirements.txt)");
    }
    ok
}

/// Whether `program --version` runs. Where `require_env` is set (CI) a missing program fails
/// the test (`install` says how to get it); elsewhere the caller skips, and this prints why.
pub fn program_available(test: &str, program: &str, require_env: &str, install: &str) -> bool {
    let ok = runs(program, &["--version"]);
    if !ok {
        assert!(std::env::var_os(require_env).is_none(), "{require_env} is set but {program} is missing ({install})");
        eprintln!("SKIPPED {test}: {program} not found ({install})");
    }
    ok
}

/// Whether `program ARGS…` runs and exits 0 (output discarded).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `program ARGS…` under `timeout --kill-after=2 LIMIT` (so a hung tool cannot hold a
/// test's runtime, whatever the test's own time limit), with `input` on its stdin; returns
/// its output. Blocking: call it from `spawn_blocking`.
pub fn run_bounded(limit_secs: u64, program: &str, args: &[String], input: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["--kill-after=2", &limit_secs.to_string(), program])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs `python3 SCRIPT ARGS…` (`script` under `tests/`) with `run_bounded` and parses the
/// JSON it prints; panics with its stdout and stderr when there is none.
pub async fn python_json(script: &str, args: &[&str], input: Option<String>, limit_secs: u64) -> serde_json::Value {
    let mut argv = vec![test_script(script)];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = run_bounded(limit_secs, "python3", &argv, input.as_deref().map(str::as_bytes));
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap_or_else(|e| {
            panic!("{script} answered no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        })
    })
    .await
    .unwrap()
}

/// A script under `tests/` (`tests/ws_peer.py`, …) by its full path.
pub fn test_script(name: &str) -> String {
    format!("{}/../tests/{name}", env!("CARGO_MANIFEST_DIR"))
}
