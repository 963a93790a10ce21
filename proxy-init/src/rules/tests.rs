#![allow(clippy::unwrap_used)]
use super::*;
use crate::flags;

fn opts() -> Options {
    Options {
        skip_inbound_ports: flags::ports("22,8000-8100").unwrap(),
        skip_outbound_ports: flags::ports("5432").unwrap(),
        skip_subnets: flags::cidrs("10.96.0.0/12,fd00::/8").unwrap(),
        ipv6: true,
        ..Options::default()
    }
}

/// What `iptables-save -t nat` prints after `script` is applied to an empty table (the
/// chains we declare and the rules we add, in the order iptables-save lists them).
fn saved_after(script: &str) -> String {
    let mut chains = Vec::new();
    let mut rules: Vec<&str> = Vec::new();
    for l in script.lines() {
        if let Some(c) = l.strip_prefix(':') {
            chains.push(format!(":{c}"));
        } else if l.starts_with("-A ") {
            rules.push(l);
        }
    }
    rules.sort_by_key(|l| if l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT") { 0 } else { 1 });
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{}\n{}\nCOMMIT\n",
        chains.join("\n"),
        rules.join("\n")
    )
}

#[test]
fn install_redirects_with_the_exceptions() {
    let v4 = install(&opts(), Family::V4, "");
    let expect = [
        "*nat",
        ":TRELLIS_INBOUND - [0:0]",
        ":TRELLIS_OUTPUT - [0:0]",
        "-A TRELLIS_INBOUND -p tcp -m multiport --dports 22,8000:8100 -m comment --comment \"trellis: skip inbound ports\" -j RETURN",
        "-A TRELLIS_INBOUND -p tcp -m comment --comment \"trellis: to the inbound proxy\" -j REDIRECT --to-ports 4143",
        "-A TRELLIS_OUTPUT -m owner --uid-owner 2102 -m comment --comment \"trellis: the proxy user\" -j RETURN",
        "-A TRELLIS_OUTPUT -o lo -m comment --comment \"trellis: loopback\" -j RETURN",
        "-A TRELLIS_OUTPUT -p tcp -m multiport --dports 5432 -m comment --comment \"trellis: skip outbound ports\" -j RETURN",
        "-A TRELLIS_OUTPUT -d 10.96.0.0/12 -m comment --comment \"trellis: skip subnets\" -j RETURN",
        "-A TRELLIS_OUTPUT -p tcp -m comment --comment \"trellis: to the outbound proxy\" -j REDIRECT --to-ports 4140",
        "-A PREROUTING -p tcp -m comment --comment \"trellis: inbound\" -j TRELLIS_INBOUND",
        "-A OUTPUT -p tcp -m comment --comment \"trellis: outbound\" -j TRELLIS_OUTPUT",
        "COMMIT",
    ];
    assert_eq!(v4.lines().collect::<Vec<_>>(), expect);
    // The IPv6 rules skip only the IPv6 subnet.
    let v6 = install(&opts(), Family::V6, "");
    assert!(v6.contains("-d fd00::/8 ") && !v6.contains("10.96.0.0"), "{v6}");
}

#[test]
fn a_second_run_adds_no_jump_and_removes_duplicates() {
    let first = install(&opts(), Family::V4, "");
    let again = install(&opts(), Family::V4, &saved_after(&first));
    // The chains are declared (which empties them) and refilled; the jumps stay as they are.
    assert!(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT"), "{again}");
    assert_eq!(again.lines().filter(|l| l.starts_with("-A TRELLIS_")).count(), 7);
    // A duplicate jump (left by something else) is removed, one is kept.
    let doubled = saved_after(&first).replace(
        "-A OUTPUT -p tcp",
        "-A OUTPUT -p tcp -m comment --comment \"trellis: outbound\" -j TRELLIS_OUTPUT\n-A OUTPUT -p tcp",
    );
    let fixed = install(&opts(), Family::V4, &doubled);
    assert_eq!(
        fixed.lines().filter(|l| l.starts_with("-D ")).collect::<Vec<_>>(),
        ["-D OUTPUT -p tcp -m comment --comment \"trellis: outbound\" -j TRELLIS_OUTPUT"]
    );
}

#[test]
fn cleanup_removes_only_ours() {
    let installed = saved_after(&install(&opts(), Family::V4, ""));
    let other = installed.replace("COMMIT", "-A OUTPUT -d 192.0.2.1/32 -j DROP\nCOMMIT");
    let script = cleanup(&other).unwrap();
    assert_eq!(
        script.lines().collect::<Vec<_>>(),
        [
            "*nat",
            "-D PREROUTING -p tcp -m comment --comment \"trellis: inbound\" -j TRELLIS_INBOUND",
            "-D OUTPUT -p tcp -m comment --comment \"trellis: outbound\" -j TRELLIS_OUTPUT",
            "-F TRELLIS_INBOUND",
            "-X TRELLIS_INBOUND",
            "-F TRELLIS_OUTPUT",
            "-X TRELLIS_OUTPUT",
            "COMMIT",
        ]
    );
    assert_eq!(cleanup(&saved_after("*nat\nCOMMIT\n")), None, "nothing to remove");
    assert_eq!(ours(&installed).len(), 11);
}

#[test]
fn long_port_lists_are_split_for_multiport() {
    let many: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let o = Options { skip_inbound_ports: flags::ports(&many.join(",")).unwrap(), ..Options::default() };
    let script = install(&o, Family::V4, "");
    let groups: Vec<&str> = script.lines().filter(|l| l.contains("skip inbound ports")).collect();
    assert_eq!(groups.len(), 2, "{script}");
    assert!(groups[0].contains("--dports 1000,1001,") && groups[1].contains("--dports 1015,"), "{script}");
}
