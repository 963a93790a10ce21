//! `trellis ctl …`: drives a control plane over its REST API — apply manifests, get,
//! delete, list proxies. The client and manifest parsing are in `trellis-control-plane`;
//! this module parses arguments and prints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use trellis_control_plane::client::{Client, resource_path};
use trellis_control_plane::{Kind, Resource, manifest};

/// Drive a control plane.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control plane REST API.
    #[arg(long, global = true, env = "TRELLIS_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// File holding the bearer token to send (when the control plane runs with --token-file).
    #[arg(long, global = true, env = "TRELLIS_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// For an https:// server (a control plane with --api-tls): its CA certificate
    /// (DIR/ca/ca.pem); the server must present the control plane's SPIFFE ID under it.
    #[arg(long, global = true, env = "TRELLIS_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// `trellis ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCmd {
    /// Create or update every resource in a multi-document YAML file (each document one
    /// resource with `kind: Cluster|Route|Listener|Policy|Telemetry`); prints KIND/NAME
    /// created|configured|unchanged.
    Apply {
        /// The manifest; `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Print one resource, or every resource of a kind.
    Get {
        /// clusters, routes, listeners, policies or telemetry (singular works too).
        kind: Kind,
        /// Print only this one.
        name: Option<String>,
        /// yaml (with `kind:`, ready for `apply`) or json.
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Delete a resource nothing references.
    Delete {
        /// clusters, routes, listeners, policies or telemetry (singular works too).
        kind: Kind,
        name: String,
    },
    /// List connected and recently disconnected proxies with their config versions.
    Proxies {
        /// table or json.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ProxiesOutput,
    },
}

/// Output format of `get`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

/// Output format of `proxies`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProxiesOutput {
    Table,
    Json,
}

/// Runs one `trellis ctl` command; an error answer from the server is an error here.
pub fn run(args: CtlArgs) -> Result<()> {
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let client = match &args.ca_file {
        Some(ca) => Client::with_ca(&args.server, token, ca)?,
        None => Client::new(&args.server, token)?,
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.cmd {
            CtlCmd::Apply { file } => apply(&client, &file).await,
            CtlCmd::Get { kind, name, output } => get(&client, kind, name.as_deref(), output).await,
            CtlCmd::Delete { kind, name } => {
                client.delete(kind, &name).await.with_context(|| format!("{}/{name}", kind.singular()))?;
                println!("{}/{name} deleted", kind.singular());
                Ok(())
            }
            CtlCmd::Proxies { output } => proxies(&client, output).await,
        }
    })
}

async fn apply(client: &Client, file: &Path) -> Result<()> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let mut docs = manifest::parse(&text).with_context(|| file.display().to_string())?;
    if docs.is_empty() {
        bail!("{}: no resources", file.display());
    }
    // What is referenced first: policies and clusters, then routes, then listeners.
    docs.sort_by_key(|d| d.resource.kind());
    for doc in docs {
        let (kind, name) = (doc.resource.kind(), doc.resource.name().to_string());
        let what = format!("{}/{name}", kind.singular());
        let wanted = doc.resource.to_value();
        let current = client.get(kind, &name).await.with_context(|| what.clone())?;
        let state = if current.as_ref() == Some(&wanted) {
            "unchanged"
        } else if client.put(kind, &name, &wanted).await.with_context(|| format!("{what} (document {})", doc.index))? {
            "created"
        } else {
            "configured"
        };
        println!("{what} {state}");
    }
    Ok(())
}

async fn get(client: &Client, kind: Kind, name: Option<&str>, output: Output) -> Result<()> {
    let values = match name {
        Some(name) => {
            vec![
                client
                    .get_json(&resource_path(kind, name))
                    .await
                    .with_context(|| format!("{}/{name}", kind.singular()))?,
            ]
        }
        None => client.list(kind).await.with_context(|| kind.plural().to_string())?,
    };
    if values.is_empty() && matches!(output, Output::Yaml) {
        eprintln!("no {}", kind.plural());
        return Ok(());
    }
    match output {
        Output::Json => {
            let value =
                if name.is_some() { values.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(values) };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Yaml => {
            let resources = values
                .iter()
                .map(|v| Resource::from_value(kind, v))
                .collect::<Result<Vec<_>, _>>()
                .context("the server sent a resource this trellis cannot read")?;
            print!("{}", manifest::to_yaml(&resources).map_err(anyhow::Error::msg)?);
        }
    }
    Ok(())
}

async fn proxies(client: &Client, output: ProxiesOutput) -> Result<()> {
    let proxies = client.proxies().await?;
    if let ProxiesOutput::Json = output {
        println!("{}", serde_json::to_string_pretty(&proxies)?);
        return Ok(());
    }
    let text = |p: &Value, key: &str| match p.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => {
            if *b {
                "yes".into()
            } else {
                "no".into()
            }
        }
        _ => "-".into(),
    };
    let rows: Vec<[String; 7]> = proxies
        .iter()
        .map(|p| {
            let nack = p
                .get("last_nack")
                .filter(|n| !n.is_null())
                .map_or_else(|| "-".to_string(), |n| format!("v{} {}", text(n, "version"), text(n, "error")));
            [
                text(p, "id"),
                text(p, "service"),
                text(p, "zone"),
                text(p, "connected"),
                text(p, "sent_version"),
                text(p, "acked_version"),
                nack,
            ]
        })
        .collect();
    let header = ["ID", "SERVICE", "ZONE", "CONNECTED", "SENT", "ACKED", "LAST NACK"].map(String::from);
    let widths: Vec<usize> =
        (0..6).map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            match widths.get(i) {
                Some(w) => line.push_str(&format!("{cell:<w$}  ")),
                None => line.push_str(cell),
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(())
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token.to_string())
}
