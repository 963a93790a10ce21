//! Headless Chromium (Debian's `chromium`) for the tests of the control plane's mesh page.

use super::*;

/// Debian's `chromium`, or `None` (with a message) when it is absent and
/// `TRELLIS_REQUIRE_CHROMIUM` is not set (.ci/run sets it and installs chromium).
pub fn chromium(test: &str) -> Option<&'static str> {
    let install = "Debian package `chromium`: apt-get install --no-install-recommends chromium";
    program_available(test, "chromium", "TRELLIS_REQUIRE_CHROMIUM", install).then_some("chromium")
}

/// Headless Chromium on `url` with a new profile and no background networking, letting the
/// page's scripts run for `budget` of virtual time; `extra` is e.g. `--dump-dom` or
/// `--screenshot=PATH`. Returns stdout (the DOM with `--dump-dom`).
pub fn headless_chromium(chromium: &str, url: &str, budget: Duration, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
