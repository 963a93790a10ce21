//! `trellis proxy-init`: arguments and output only; the rules are trellis-proxy-init's.

use clap::{Args, ValueEnum};
use std::process::ExitCode;
use trellis_proxy_init::flags::{self, Cidr, PortRange};
use trellis_proxy_init::{Action, Backend, Options};

#[derive(Args)]
pub struct ProxyInitArgs {
    /// Port of the proxy's inbound listener: TCP arriving at the pod is redirected there.
    #[arg(long, default_value_t = trellis_proxy_init::DEFAULT_INBOUND_PORT, value_parser = flags::port, value_name = "PORT")]
    inbound_port: u16,
    /// Port of the proxy's outbound listener (on 127.0.0.1): TCP the pod opens is redirected there.
    #[arg(long, default_value_t = trellis_proxy_init::DEFAULT_OUTBOUND_PORT, value_parser = flags::port, value_name = "PORT")]
    outbound_port: u16,
    /// UID the proxy runs as; its own connections are never redirected.
    #[arg(long, default_value_t = trellis_proxy_init::DEFAULT_PROXY_UID, value_name = "UID")]
    proxy_uid: u32,
    /// Inbound ports that reach the app directly (ports and ranges: 22,8000-8100).
    #[arg(long, value_parser = ports, value_name = "P,…")]
    skip_inbound_ports: Option<Ports>,
    /// Outbound ports reached directly, not through the proxy.
    #[arg(long, value_parser = ports, value_name = "P,…")]
    skip_outbound_ports: Option<Ports>,
    /// Destination networks reached directly, not through the proxy (CIDRs: 10.96.0.0/12).
    #[arg(long, value_parser = cidrs, value_name = "CIDR,…")]
    skip_subnets: Option<Cidrs>,
    /// Also install the rules for IPv6 (ip6tables).
    #[arg(long)]
    ipv6: bool,
    /// Which iptables backend to drive; `auto` takes the one that already holds rules
    /// in this namespace, nft when neither does.
    #[arg(long, value_enum, default_value = "auto")]
    iptables_mode: Mode,
    /// Print the rules and change nothing.
    #[arg(long)]
    simulate: bool,
    /// Remove the rules (and their chains) instead of installing them.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone)]
struct Ports(Vec<PortRange>);

#[derive(Clone)]
struct Cidrs(Vec<Cidr>);

fn ports(s: &str) -> Result<Ports, String> {
    flags::ports(s).map(Ports)
}

fn cidrs(s: &str) -> Result<Cidrs, String> {
    flags::cidrs(s).map(Cidrs)
}

pub fn run(args: ProxyInitArgs) -> ExitCode {
    let opts = Options {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        proxy_uid: args.proxy_uid,
        skip_inbound_ports: args.skip_inbound_ports.map(|p| p.0).unwrap_or_default(),
        skip_outbound_ports: args.skip_outbound_ports.map(|p| p.0).unwrap_or_default(),
        skip_subnets: args.skip_subnets.map(|c| c.0).unwrap_or_default(),
        ipv6: args.ipv6,
        backend: match args.iptables_mode {
            Mode::Auto => Backend::Auto,
            Mode::Nft => Backend::Nft,
            Mode::Legacy => Backend::Legacy,
        },
    };
    let action = if args.cleanup { Action::Cleanup } else { Action::Install };
    let result = if args.simulate {
        trellis_proxy_init::simulate(&opts, action)
    } else {
        trellis_proxy_init::apply(&opts, action)
    };
    let applied = match result {
        Ok(a) => a,
        Err(e) => {
            eprintln!("trellis proxy-init: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    for a in applied {
        if args.simulate {
            println!(
                "# {} rules for the nat table ({}-restore --noflush); nothing was changed",
                a.family.label(),
                a.tools
            );
            print!("{}", a.script.as_deref().unwrap_or("# nothing to remove\n"));
            continue;
        }
        let what = match (action, &a.script) {
            (Action::Install, _) => format!(
                "rules installed (inbound -> {}, outbound -> {}, proxy UID {})",
                opts.inbound_port, opts.outbound_port, opts.proxy_uid
            ),
            (Action::Cleanup, Some(_)) => "rules removed".to_owned(),
            (Action::Cleanup, None) => "no rules to remove".to_owned(),
        };
        eprintln!("trellis proxy-init: {}: {what} ({})", a.family.label(), a.tools);
        for line in a.now {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
