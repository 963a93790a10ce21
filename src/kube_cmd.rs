//! `trellis inject`, `trellis injector`, `trellis install` and the `--sidecar` flags of
//! `trellis proxy`: argument parsing only; the work is in `trellis-kube`.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use trellis_kube::sidecar::{Sidecar, env};
use trellis_kube::{SYSTEM_NAMESPACE, Settings};

/// What an injection puts in a pod, shared by `inject` and `injector`.
#[derive(Debug, Args)]
pub struct InjectionArgs {
    /// The mesh's CA certificate (PEM), put in every injected pod as its trust bundle.
    #[arg(long, value_name = "FILE")]
    pub trust_bundle: PathBuf,
    /// Image of the proxy and of trellis-init (default: this version's release image).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[arg(long, value_name = "POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Host name of the control plane's Service.
    #[arg(long, value_name = "HOST", default_value = "trellis-control-plane.trellis-system.svc")]
    pub control_plane: String,
}

impl InjectionArgs {
    fn settings(&self) -> Result<Settings> {
        let bundle = std::fs::read_to_string(&self.trust_bundle)
            .with_context(|| format!("--trust-bundle {}", self.trust_bundle.display()))?;
        let mut s = Settings::new(bundle, SYSTEM_NAMESPACE);
        if let Some(image) = &self.image {
            s.image.clone_from(image);
        }
        s.image_pull_policy.clone_from(&self.image_pull_policy);
        s.control_plane.clone_from(&self.control_plane);
        Ok(s)
    }
}

/// `trellis inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Multi-document YAML (or JSON) with Pods, Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs, CronJobs; `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

/// Exit code 2: the input is not usable (bad YAML, a template that cannot take the proxy).
pub struct BadInput(pub String);

/// Prints the injected file on stdout, what was done on stderr.
pub fn inject(args: InjectArgs) -> Result<Result<(), BadInput>> {
    let settings = args.injection.settings()?;
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("{}", args.file.display()))?
    };
    let injected = match trellis_kube::inject::inject_file(&text, &settings) {
        Ok(i) => i,
        Err(e) => return Ok(Err(BadInput(format!("{}: {e}", args.file.display())))),
    };
    print!("{}", injected.yaml);
    for report in &injected.reports {
        match &report.outcome {
            trellis_kube::pod::Outcome::Injected { warnings } => {
                eprintln!("{} injected", report.workload);
                for w in warnings {
                    eprintln!("  warning: {w}");
                }
            }
            trellis_kube::pod::Outcome::Skipped(why) => eprintln!("{} skipped: {why}", report.workload),
        }
    }
    Ok(Ok(()))
}

/// `trellis injector`.
#[derive(Debug, Args)]
pub struct InjectorArgs {
    /// Serving certificate (PEM, leaf then chain) the API server verifies against the
    /// webhook's caBundle; re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:8444")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

pub fn injector(args: InjectorArgs) -> Result<()> {
    let opts = trellis_kube::webhook::Options {
        addr: args.addr,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        settings: args.injection.settings()?,
        trust_bundle: args.injection.trust_bundle,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("trellis-injector")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let signal = crate::cp_cmd::shutdown_signal()?;
        let bound = trellis_kube::webhook::bind(opts).await?;
        tracing::info!(addr = %bound.local_addr()?, "injector listening (POST /inject)");
        bound.serve(signal).await;
        Ok(())
    })
}

/// `trellis install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Namespace of the control plane and injector (never injected).
    #[arg(long, value_name = "NS", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Image of the control plane, the injector and the injected proxies.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[arg(long, value_name = "POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Also print the mesh CA (DIR/ca.pem, DIR/ca.key) as a Secret, a serving certificate
    /// for the webhook issued from it, and the webhook's caBundle.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Also print the REST API's bearer token (read from FILE) as a Secret.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

pub fn install(args: InstallArgs) -> Result<()> {
    let mut install = trellis_kube::install::Install::new(args.namespace);
    if let Some(image) = args.image {
        install.image = image;
    }
    install.image_pull_policy = args.image_pull_policy;
    if args.ca_dir.is_some() || args.admin_token_file.is_some() {
        let mut secrets = trellis_kube::install::Secrets::default();
        if let Some(dir) = &args.ca_dir {
            let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("--ca-dir: {}", p.display()));
            secrets.ca = Some((read(trellis_certs::Ca::cert_path(dir))?, read(trellis_certs::Ca::key_path(dir))?));
        }
        if let Some(file) = &args.admin_token_file {
            let token =
                std::fs::read_to_string(file).with_context(|| format!("--admin-token-file {}", file.display()))?;
            secrets.admin_token = Some(token.trim().to_owned());
        }
        install.secrets = Some(secrets);
    }
    print!("{}", install.to_yaml()?);
    Ok(())
}

/// `trellis proxy --sidecar`: the bootstrap comes from the pod (env vars the injection sets).
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// Write the bootstrap for this pod to --config, then run from it (an injected pod's
    /// proxy). The pod's facts come from these flags or their env vars.
    #[arg(long)]
    pub sidecar: bool,
    #[arg(long, env = env::POD_NAME, value_name = "NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = env::POD_NAMESPACE, value_name = "NS")]
    pub pod_namespace: Option<String>,
    #[arg(long, env = env::POD_SERVICE_ACCOUNT, value_name = "SA")]
    pub pod_service_account: Option<String>,
    #[arg(long, env = env::POD_IP, value_name = "IP")]
    pub pod_ip: Option<IpAddr>,
    /// The control plane's REST API (certificates), https://HOST:PORT.
    #[arg(long, env = env::CONTROL_PLANE_API, value_name = "URL")]
    pub control_plane_api: Option<String>,
    /// The control plane's discovery server, https://HOST:PORT.
    #[arg(long, env = env::CONTROL_PLANE_DISCOVERY, value_name = "URL")]
    pub control_plane_discovery: Option<String>,
    /// `mesh` (mTLS only) or `permissive` (plaintext accepted too) on the inbound listener.
    #[arg(long, env = env::INBOUND_TLS, default_value = "mesh", value_parser = ["mesh", "permissive"])]
    pub inbound_tls: String,
    /// Directory holding the projected service-account token (`token`) and `ca.pem`.
    #[arg(long, env = env::CREDENTIALS_DIR, default_value = trellis_kube::pod::CREDENTIALS_DIR, value_name = "DIR")]
    pub credentials_dir: PathBuf,
}

impl SidecarArgs {
    /// Writes the bootstrap to `config` when `--sidecar` is given.
    pub fn write_bootstrap(self, config: &std::path::Path) -> Result<()> {
        if !self.sidecar {
            return Ok(());
        }
        let need = |v: Option<String>, flag: &str, var: &str| {
            v.filter(|s| !s.is_empty()).with_context(|| format!("--sidecar needs --{flag} (or {var})"))
        };
        let sidecar = Sidecar {
            pod_name: need(self.pod_name, "pod-name", env::POD_NAME)?,
            namespace: need(self.pod_namespace, "pod-namespace", env::POD_NAMESPACE)?,
            service_account: need(self.pod_service_account, "pod-service-account", env::POD_SERVICE_ACCOUNT)?,
            pod_ip: self.pod_ip,
            control_plane_api: need(self.control_plane_api, "control-plane-api", env::CONTROL_PLANE_API)?,
            control_plane_discovery: need(
                self.control_plane_discovery,
                "control-plane-discovery",
                env::CONTROL_PLANE_DISCOVERY,
            )?,
            permissive: self.inbound_tls == "permissive",
            credentials_dir: self.credentials_dir,
        };
        sidecar.write_bootstrap(config)?;
        Ok(())
    }
}
