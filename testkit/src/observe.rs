//! What a running proxy shows: Prometheus `/metrics` samples (read once or waited for), its
//! memory, its access log.

use super::*;

/// The value of the first Prometheus sample named `name` whose labels include every pair of
/// `labels` (exposition text format, as served by admin `/metrics`).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.trim().rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have = prometheus_labels(rest);
        if labels.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v)) {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// `a="x",b="y"` → pairs (handles `\"`, `\\` and `\n` escapes).
pub fn prometheus_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        v.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => v.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_owned(), v));
        rest = &after[end..];
    }
    out
}

/// What serves a `/metrics` page: a proxy, or one in a pod's namespace.
pub trait Scrape {
    /// The `/metrics` text (a blocking call).
    fn scrape(&self) -> String;
}

impl Scrape for Proxy {
    fn scrape(&self) -> String {
        self.metrics()
    }
}

/// Polls `/metrics` until the sample `name{labels}` satisfies `ok`, up to `limit`; returns the
/// last value seen (`None`: never present).
pub async fn wait_metric(
    proxy: &impl Scrape,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    limit: Duration,
) -> Option<f64> {
    wait_sample(|| proxy.scrape(), name, labels, ok, limit).await
}

/// Like [`wait_metric`], reading the exposition text with `metrics` (a blocking call).
pub async fn wait_sample(
    metrics: impl Fn() -> String,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    limit: Duration,
) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let v = metric_value(&blocking(&metrics), name, labels);
        if v.is_some_and(&ok) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// An access log's lines as JSON, once at least `n` are there (lines are written off the
/// request path, so they may lag the response a little); panics after 5 s.
pub async fn access_log_lines(log: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let got: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} lines in {}:\n{}", log.display(), std::fs::read_to_string(log).unwrap_or_default());
}
