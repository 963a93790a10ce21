//! `trellis certs …`: make a root CA, issue workload certificates, inspect PEM files.
//!
//! All the work is in `trellis-certs`; this module only parses arguments and prints.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use clap::Subcommand;
use trellis_certs::{Ca, SpiffeId};

/// CA and workload certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a root CA (ECDSA P-256): DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        /// Directory for ca.pem and ca.key; created (mode 0700) if missing.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing CA; certificates it issued stop being trusted.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate: PREFIX.pem (leaf then CA) and PREFIX.key (mode 0600).
    Issue {
        /// Directory holding the CA (ca.pem, ca.key) made by `trellis certs init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// SPIFFE ID to put in the URI SAN, e.g. spiffe://trellis.local/ns/default/sa/checkout.
        #[arg(long, value_name = "SPIFFE_ID")]
        id: SpiffeId,
        /// Output path prefix: writes PREFIX.pem and PREFIX.key.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Validity from now, e.g. 90s, 30m, 24h, 7d (starts a minute in the past; capped at
        /// the CA's expiry).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Extra DNS name or IP address SAN (repeatable), e.g. --dns checkout.default.svc.
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
    },
    /// Show the certificates in a PEM file: subject, SPIFFE ID, SANs, issuer, validity,
    /// SHA-256 fingerprint.
    Inspect {
        /// PEM file holding one or more certificates (e.g. PREFIX.pem or ca.pem).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs one `trellis certs` command, printing what it wrote or read.
pub fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init { dir, force } => {
            let ca = Ca::init(&dir, force)?;
            println!("created root CA \"{}\"", ca.common_name());
            println!("  certificate: {}", Ca::cert_path(&dir).display());
            println!("  private key: {} (mode 0600)", Ca::key_path(&dir).display());
        }
        CertsCmd::Issue { dir, id, out, ttl, dns } => {
            let ca = Ca::load(&dir)?;
            let issued = ca.issue(&id, ttl, &dns)?;
            let files = issued.write(&out)?;
            let expires = issued
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            println!("issued {id} (expires {})", trellis_certs::format_unix_time(expires));
            println!("  certificate: {} (leaf + CA chain)", files.cert.display());
            println!("  private key: {} (mode 0600)", files.key.display());
        }
        CertsCmd::Inspect { file } => {
            let certs = trellis_certs::inspect_file(&file)?;
            let many = certs.len() > 1;
            for (i, info) in certs.iter().enumerate() {
                if many {
                    if i > 0 {
                        println!();
                    }
                    let role = match i {
                        0 => "leaf",
                        _ if info.is_ca => "CA",
                        _ => "intermediate",
                    };
                    println!("# certificate {} of {} ({role})", i + 1, certs.len());
                }
                println!("{info}");
            }
        }
    }
    Ok(())
}

/// A `--ttl` value: a duration that is more than zero.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("ttl must be more than zero".into());
    }
    Ok(d)
}

/// Parses `250ms`, `2s`, `1m`, `24h`, `7d`, or a sum written without spaces like `1h30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (use e.g. 90s, 30m, 24h, 7d)".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let (unit, tail) = rest.split_at(unit_len);
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "" => {
                return Err(format!("invalid duration {text:?}: missing unit (ms, s, m, h or d)"));
            }
            other => {
                return Err(format!("invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"));
            }
        };
        total =
            part.and_then(|p| total.checked_add(p)).ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "h", "10", "10x", "1.5h", "-1s", "1 h", "99999999999999999999d"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad:?}: {err}");
        }
        assert!(parse_ttl("0s").is_err());
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CertsCmd,
    }

    fn parse(args: &[&str]) -> Result<CertsCmd, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("certs").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        match parse(&[
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://trellis.local/ns/default/sa/a",
            "--out",
            "x/a",
            "--dns",
            "a.svc",
            "--dns",
            "127.0.0.1",
        ]) {
            Ok(CertsCmd::Issue { ttl, dns, id, .. }) => {
                assert_eq!(ttl, Duration::from_secs(86_400));
                assert_eq!(dns, ["a.svc", "127.0.0.1"]);
                assert_eq!(id.service_account(), Some("a"));
            }
            other => panic!("{other:?}"),
        }
        let err = parse(&["issue", "--dir", "ca", "--id", "x", "--out", "o"]).expect_err("bad id");
        assert!(err.to_string().contains("must start with spiffe://"), "{err}");
        assert!(parse(&["issue", "--dir", "ca", "--id", "spiffe://t/a", "--out", "o", "--ttl", "0s"]).is_err());
        assert!(matches!(parse(&["init", "--dir", "d", "--force"]), Ok(CertsCmd::Init { force: true, .. })));
    }

    #[test]
    fn init_issue_inspect_end_to_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let out = dir.path().join("svc/checkout");
        run(CertsCmd::Init { dir: ca_dir.clone(), force: false }).expect("init");
        let again = run(CertsCmd::Init { dir: ca_dir.clone(), force: false }).expect_err("refuses");
        assert!(format!("{again:#}").contains("already exists"), "{again:#}");
        run(CertsCmd::Issue {
            dir: ca_dir.clone(),
            id: "spiffe://trellis.local/ns/default/sa/checkout".parse().expect("id"),
            out: out.clone(),
            ttl: Duration::from_secs(3600),
            dns: vec![],
        })
        .expect("issue");
        run(CertsCmd::Inspect { file: dir.path().join("svc/checkout.pem") }).expect("inspect");
        let missing = run(CertsCmd::Issue {
            dir: dir.path().join("nope"),
            id: "spiffe://td/a".parse().expect("id"),
            out,
            ttl: Duration::from_secs(60),
            dns: vec![],
        })
        .expect_err("no CA");
        assert!(format!("{missing:#}").contains("trellis certs init"), "{missing:#}");
    }
}
