//! Authorization of inbound requests by the peer's SPIFFE ID, path and method, and on MCP
//! routes by JSON-RPC method and tool (DESIGN §13). A pure function over (policy, peer,
//! method, path, MCP call); the caller turns a denial into a 403 (HTTP), a JSON-RPC error
//! (MCP) or a closed connection (TCP), and an audit line.

use http::Method;
use trellis_api as api;

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    default_allow: bool,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<Pattern>,
    paths: Vec<Pattern>,
    methods: Vec<Method>,
    /// Rules with MCP conditions match only MCP traffic.
    mcp: Option<McpRule>,
}

#[derive(Debug)]
struct McpRule {
    methods: Vec<Pattern>,
    tools: Vec<Pattern>,
}

/// What policy sees of a request's MCP side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mcp<'a> {
    /// Not MCP (or not read yet): rules with `mcp` conditions do not match.
    None,
    /// An MCP route's request that calls nothing (the GET stream, the DELETE of a
    /// session, a client's response to a server's request): rules with `mcp` conditions
    /// match on their other conditions.
    Session,
    /// A JSON-RPC request or notification, with the tool a `tools/call` names.
    Call { method: &'a str, tool: Option<&'a str> },
}
/// Exact, or a prefix (written with a trailing `*`).
#[derive(Debug)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub(crate) fn new(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(p) => Self::Prefix(p.to_owned()),
            None => Self::Exact(s.to_owned()),
        }
    }
    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => s == e,
            Self::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by rule n.
    Rule(usize),
    AllowByDefault,
    DenyByDefault,
    /// Mesh listener without a policy.
    NoPolicy,
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Self::Rule(_) | Self::AllowByDefault)
    }
}

impl Policy {
    pub fn new(p: &api::Policy) -> Self {
        Self {
            name: p.name.clone(),
            default_allow: p.default == api::PolicyDefault::Allow,
            rules: p
                .rules
                .iter()
                .map(|r| Rule {
                    from: r.from.iter().map(|s| Pattern::new(s)).collect(),
                    // `/api/*` allows /api/… (and /api itself).
                    paths: r
                        .paths
                        .iter()
                        .map(|s| match s.strip_suffix("/*") {
                            Some(p) => Pattern::Prefix(format!("{p}/")),
                            None => Pattern::new(s),
                        })
                        .chain(
                            r.paths.iter().filter_map(|s| s.strip_suffix("/*").map(|p| Pattern::Exact(p.to_owned()))),
                        )
                        .collect(),
                    methods: r
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                        .collect(),
                    mcp: r.mcp.as_ref().map(|m| McpRule {
                        methods: m.methods.iter().map(|s| Pattern::new(s)).collect(),
                        tools: m.tools.iter().map(|s| Pattern::new(s)).collect(),
                    }),
                })
                .collect(),
        }
    }

    /// Decides for a peer (None: no verified identity) and, for HTTP, a method and path.
    /// At L4 (`method`/`path` None) only rules without path or method conditions apply.
    pub fn check(&self, peer: Option<&str>, method: Option<&Method>, path: Option<&str>) -> Decision {
        self.check_mcp(peer, method, path, Mcp::None)
    }

    /// [`Policy::check`] for a request of an MCP route.
    pub fn check_mcp(&self, peer: Option<&str>, method: Option<&Method>, path: Option<&str>, mcp: Mcp<'_>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            let from_ok = r.from.is_empty() || peer.is_some_and(|p| r.from.iter().any(|f| f.matches(p)));
            let path_ok = r.paths.is_empty() || path.is_some_and(|p| r.paths.iter().any(|f| f.matches(p)));
            let method_ok = r.methods.is_empty() || method.is_some_and(|m| r.methods.contains(m));
            let mcp_ok = match (&r.mcp, mcp) {
                (None, _) => true,
                (Some(_), Mcp::None) => false,
                (Some(_), Mcp::Session) => true,
                (Some(m), Mcp::Call { method, tool }) => {
                    (m.methods.is_empty() || m.methods.iter().any(|p| p.matches(method)))
                        && (m.tools.is_empty()
                            || method != "tools/call"
                            || tool.is_some_and(|t| m.tools.iter().any(|p| p.matches(t))))
                }
            };
            if from_ok && path_ok && method_ok && mcp_ok {
                return Decision::Rule(i);
            }
        }
        if self.default_allow { Decision::AllowByDefault } else { Decision::DenyByDefault }
    }
}

impl Policy {
    /// Whether some rule has MCP conditions (a request no other rule allows may then be
    /// allowed once its MCP body is read).
    pub fn has_mcp_rules(&self) -> bool {
        self.rules.iter().any(|r| r.mcp.is_some())
    }
}

/// The decision for a listener: its policy, or deny when a mesh listener has none.
pub fn decide(
    policy: Option<&Policy>,
    mesh: bool,
    peer: Option<&str>,
    method: Option<&Method>,
    path: Option<&str>,
) -> Decision {
    match policy {
        Some(p) => p.check(peer, method, path),
        None if mesh => Decision::NoPolicy,
        None => Decision::AllowByDefault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        Policy::new(&trellis_api::parse::parse(yaml).unwrap())
    }

    #[test]
    fn rules_by_identity_path_and_method() {
        let p = policy(
            r#"{ name: p, rules: [
                { from: ["spiffe://td/ns/default/sa/frontend", "spiffe://td/ns/agents/*"], paths: ["/api/*"], methods: [GET, POST] },
                { from: ["spiffe://td/ns/ops/sa/admin"] } ] }"#,
        );
        let get = Method::GET;
        let del = Method::DELETE;
        let fe = Some("spiffe://td/ns/default/sa/frontend");
        assert_eq!(p.check(fe, Some(&get), Some("/api/x")), Decision::Rule(0));
        assert_eq!(p.check(fe, Some(&get), Some("/api")), Decision::Rule(0));
        assert_eq!(p.check(fe, Some(&get), Some("/apix")), Decision::DenyByDefault);
        assert_eq!(p.check(fe, Some(&del), Some("/api/x")), Decision::DenyByDefault);
        assert_eq!(p.check(Some("spiffe://td/ns/agents/sa/bot"), Some(&get), Some("/api/1")), Decision::Rule(0));
        assert_eq!(p.check(Some("spiffe://td/ns/other/sa/x"), Some(&get), Some("/api/1")), Decision::DenyByDefault);
        assert_eq!(p.check(Some("spiffe://td/ns/ops/sa/admin"), Some(&del), Some("/any")), Decision::Rule(1));
        assert_eq!(p.check(None, Some(&get), Some("/api/x")), Decision::DenyByDefault);
        // L4: only the rule without path/method conditions can apply.
        assert_eq!(p.check(fe, None, None), Decision::DenyByDefault);
        assert_eq!(p.check(Some("spiffe://td/ns/ops/sa/admin"), None, None), Decision::Rule(1));
    }

    #[test]
    fn mcp_rules_by_method_and_tool() {
        let p = policy(
            r#"{ name: p, rules: [
                { from: ["spiffe://td/ns/agents/*"], mcp: { tools: ["search", "read_*"] } },
                { from: ["spiffe://td/ns/ops/sa/admin"], mcp: { methods: ["tools/list", "initialize"] } } ] }"#,
        );
        assert!(p.has_mcp_rules());
        let post = Method::POST;
        let agent = Some("spiffe://td/ns/agents/sa/bot");
        let admin = Some("spiffe://td/ns/ops/sa/admin");
        let call = |tool| Mcp::Call { method: "tools/call", tool: Some(tool) };
        let check = |peer, mcp| p.check_mcp(peer, Some(&post), Some("/mcp"), mcp);
        // Not MCP: MCP rules do not match.
        assert_eq!(check(agent, Mcp::None), Decision::DenyByDefault);
        assert_eq!(check(agent, Mcp::Session), Decision::Rule(0));
        assert_eq!(check(agent, call("search")), Decision::Rule(0));
        assert_eq!(check(agent, call("read_file")), Decision::Rule(0));
        assert_eq!(check(agent, call("delete")), Decision::DenyByDefault);
        assert_eq!(check(agent, Mcp::Call { method: "tools/call", tool: None }), Decision::DenyByDefault);
        // `tools` restricts tools/call only.
        assert_eq!(check(agent, Mcp::Call { method: "tools/list", tool: None }), Decision::Rule(0));
        assert_eq!(check(admin, Mcp::Call { method: "tools/list", tool: None }), Decision::Rule(1));
        assert_eq!(check(admin, call("search")), Decision::DenyByDefault);
        assert_eq!(check(None, call("search")), Decision::DenyByDefault);
        assert!(!policy("{ name: p, rules: [{ from: [\"spiffe://a/b\"] }] }").has_mcp_rules());
    }

    #[test]
    fn defaults() {
        assert!(policy("{ name: p, default: allow }").check(None, None, None).allowed());
        assert!(!policy("{ name: p }").check(None, None, None).allowed());
        assert_eq!(decide(None, true, Some("spiffe://a/b"), None, None), Decision::NoPolicy);
        assert!(decide(None, false, None, None, None).allowed());
    }
}
