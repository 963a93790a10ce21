//! Shared helpers for the Trellis benchmark binaries (`trellis-origin`, `trellis-load`).
//!
//! Kept deliberately small: duration parsing for command-line flags, and raising the
//! open-file limit so that tens of thousands of sockets can be held open.

use std::time::Duration;

use anyhow::{Context, bail};

/// Parses a human duration: `8s`, `500ms`, `2m`, `1.5s`, `250us`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().with_context(|| format!("invalid duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("invalid duration unit {other:?} in {s:?} (use us, ms, s, m or h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("invalid duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit
/// (`None` = unlimited). Failures are reported, not fatal: the caller still runs with
/// whatever limit it has.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if current.current == current.maximum {
        return current.current;
    }
    let wanted = Rlimit { current: current.maximum, maximum: current.maximum };
    match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => current.maximum,
        Err(e) => {
            eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
            current.current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() -> anyhow::Result<()> {
        assert_eq!(parse_duration("8s")?, Duration::from_secs(8));
        assert_eq!(parse_duration("8")?, Duration::from_secs(8));
        assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s")?, Duration::from_millis(1500));
        assert_eq!(parse_duration("2m")?, Duration::from_secs(120));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        Ok(())
    }
}
