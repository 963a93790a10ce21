//! The rules themselves, as `iptables-restore --noflush` input for the `nat` table: a pure
//! function of the options and of what `iptables-save -t nat` shows now, so it is tested
//! without a kernel.
//!
//! Two chains of our own hold every rule; declaring a chain in restore input empties it,
//! so running again replaces their contents instead of adding to them. The built-in chains
//! get one jump each, added only when missing (and duplicates left by anything else are
//! removed), so a second run leaves one set of rules.

use crate::flags::{Cidr, PortRange};
use crate::{Family, Options};
use std::fmt::Write;

/// Inbound chain, jumped to from PREROUTING.
pub const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";
/// Outbound chain, jumped to from OUTPUT.
pub const OUTPUT_CHAIN: &str = "TRELLIS_OUTPUT";

/// iptables' `multiport` takes at most 15 ports per rule (a range counts as two).
const MULTIPORT_LIMIT: usize = 15;

/// The jumps from the built-in chains (chain, target, match), as `iptables-save` prints them.
const JUMPS: [(&str, &str, &str); 2] = [
    ("PREROUTING", INBOUND_CHAIN, "-p tcp -m comment --comment \"trellis: inbound\""),
    ("OUTPUT", OUTPUT_CHAIN, "-p tcp -m comment --comment \"trellis: outbound\""),
];

/// Restore input that installs (or replaces) the rules for `family`, given the table as it
/// is now (`existing`: `iptables-save -t nat` output; empty when unknown).
pub fn install(opts: &Options, family: Family, existing: &str) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{OUTPUT_CHAIN} - [0:0]");

    for group in multiport_groups(&opts.skip_inbound_ports) {
        let _ = writeln!(
            out,
            "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {group} -m comment --comment \"trellis: skip inbound ports\" -j RETURN"
        );
    }
    let _ = writeln!(
        out,
        "-A {INBOUND_CHAIN} -p tcp -m comment --comment \"trellis: to the inbound proxy\" -j REDIRECT --to-ports {}",
        opts.inbound_port
    );

    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -m comment --comment \"trellis: the proxy user\" -j RETURN",
        opts.proxy_uid
    );
    let _ = writeln!(out, "-A {OUTPUT_CHAIN} -o lo -m comment --comment \"trellis: loopback\" -j RETURN");
    for group in multiport_groups(&opts.skip_outbound_ports) {
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -p tcp -m multiport --dports {group} -m comment --comment \"trellis: skip outbound ports\" -j RETURN"
        );
    }
    for net in subnets(&opts.skip_subnets, family) {
        let _ = writeln!(out, "-A {OUTPUT_CHAIN} -d {net} -m comment --comment \"trellis: skip subnets\" -j RETURN");
    }
    let _ = writeln!(
        out,
        "-A {OUTPUT_CHAIN} -p tcp -m comment --comment \"trellis: to the outbound proxy\" -j REDIRECT --to-ports {}",
        opts.outbound_port
    );

    for (chain, target, spec) in JUMPS {
        let present = jump_lines(existing, chain, target);
        match present.split_first() {
            // Keep the first jump, remove any duplicate.
            Some((_, extra)) => {
                for line in extra {
                    let _ = writeln!(out, "-D {line}");
                }
            }
            None => {
                let _ = writeln!(out, "-A {chain} {spec} -j {target}");
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Restore input that removes every jump to our chains and the chains themselves, or
/// `None` when there is nothing to remove.
pub fn cleanup(existing: &str) -> Option<String> {
    let mut out = String::from("*nat\n");
    let mut any = false;
    for (chain, target, _) in JUMPS {
        for line in jump_lines(existing, chain, target) {
            let _ = writeln!(out, "-D {line}");
            any = true;
        }
    }
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        if has_chain(existing, chain) {
            let _ = writeln!(out, "-F {chain}\n-X {chain}");
            any = true;
        }
    }
    out.push_str("COMMIT\n");
    any.then_some(out)
}

/// The `iptables-save` lines of `chain` that jump to `target`, without their `-A `.
fn jump_lines<'a>(existing: &'a str, chain: &str, target: &str) -> Vec<&'a str> {
    existing
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("-A "))
        .filter(|l| l.split(' ').next() == Some(chain) && l.split(' ').collect::<Vec<_>>().ends_with(&["-j", target]))
        .collect()
}

/// Whether `iptables-save` output declares `chain`.
pub fn has_chain(existing: &str, chain: &str) -> bool {
    existing.lines().any(|l| l.strip_prefix(':').and_then(|r| r.split(' ').next()) == Some(chain))
}

/// Our rules in `iptables-save` output (chain declarations, their rules, the jumps).
pub fn ours(existing: &str) -> Vec<&str> {
    existing
        .lines()
        .filter(|l| {
            let l = l.trim_end();
            (l.starts_with(':') || l.starts_with("-A ")) && (l.contains(INBOUND_CHAIN) || l.contains(OUTPUT_CHAIN))
        })
        .collect()
}

/// Port lists cut into `multiport` rules of at most 15 ports each.
fn multiport_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    for p in ports {
        let weight = if p.first == p.last { 1 } else { 2 };
        match groups.last_mut() {
            Some((w, items)) if *w + weight <= MULTIPORT_LIMIT => {
                *w += weight;
                items.push(p.to_string());
            }
            _ => groups.push((weight, vec![p.to_string()])),
        }
    }
    groups.into_iter().map(|(_, items)| items.join(",")).collect()
}

fn subnets(all: &[Cidr], family: Family) -> impl Iterator<Item = &Cidr> {
    all.iter().filter(move |c| c.is_ipv6() == (family == Family::V6))
}

#[cfg(test)]
mod tests;
