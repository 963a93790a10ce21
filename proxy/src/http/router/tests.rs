use super::*;

struct R(&'static str, Matcher);
impl Routable for R {
    fn matcher(&self) -> &Matcher {
        &self.1
    }
}

fn route(name: &'static str, yaml: &str) -> Arc<R> {
    let m: api::RouteMatch = trellis_api::parse::parse(yaml).expect("match parses");
    Arc::new(R(name, Matcher::new(&m).expect("compiles")))
}

fn pick(routes: &[Arc<R>], method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<&'static str> {
    let mut map = HeaderMap::new();
    map.insert(http::header::HOST, HeaderValue::try_from(format!("{host}:8080")).unwrap());
    for (k, v) in headers {
        map.append(HeaderName::try_from(*k).unwrap(), HeaderValue::try_from(*v).unwrap());
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri = http::Uri::try_from(path).unwrap();
    let view = RequestView::new(&method, &uri, &map);
    select(routes, &view).map(|r| r.0)
}

#[test]
fn routing_matrix() {
    let routes = vec![
        route("canary", "{ host: api.example.com, path_prefix: /v1, headers: { x-canary: '1' } }"),
        route("exact", "{ host: api.example.com, path: /health }"),
        route("wild", "{ host: '*.example.com', path_prefix: /v1 }"),
        route("posts", "{ path_prefix: /submit, methods: [POST, PUT] }"),
        route("any", "{}"),
    ];
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "api.example.com", "/v1/x", &[("x-canary", "1")], "canary"),
        ("GET", "API.Example.COM", "/v1/x", &[("x-canary", "1")], "canary"),
        ("GET", "api.example.com", "/v1/x", &[("x-canary", "2")], "wild"),
        ("GET", "api.example.com", "/v1/x", &[], "wild"),
        ("GET", "api.example.com", "/health", &[], "exact"),
        ("GET", "api.example.com", "/health/x", &[], "any"),
        ("GET", "a.b.example.com", "/v1", &[], "wild"),
        ("GET", "example.com", "/v1", &[], "any"),
        ("GET", "other.org", "/v1", &[], "any"),
        ("POST", "x", "/submit/1", &[], "posts"),
        ("put", "x", "/submit", &[], "any"),
        ("GET", "x", "/submit", &[], "any"),
    ];
    for (method, host, path, headers, want) in cases {
        assert_eq!(pick(&routes, method, host, path, headers), Some(*want), "{method} {host}{path} {headers:?}");
    }
}

#[test]
fn no_match_is_none() {
    let routes = vec![route("only", "{ path: /only }")];
    assert_eq!(pick(&routes, "GET", "h", "/other", &[]), None);
}

#[test]
fn host_comes_from_authority_or_host_header() {
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, HeaderValue::from_static("Svc.local:8080"));
    assert_eq!(request_host(&"/p".parse().unwrap(), &h), "Svc.local");
    assert_eq!(request_host(&"http://a.b:1/p".parse().unwrap(), &h), "a.b");
    h.insert(http::header::HOST, HeaderValue::from_static("[::1]:80"));
    assert_eq!(request_host(&"/p".parse().unwrap(), &h), "[::1]");
}
