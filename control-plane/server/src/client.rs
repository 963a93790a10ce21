//! A small REST client for the control plane (hyper 1): what `trellis ctl` and the tests
//! speak. Plain HTTP, or HTTPS to a control plane started with `--api-tls`, verified by its
//! SPIFFE ID against the CA certificate given. Non-2xx answers become [`ClientError::Api`]
//! carrying the server's `error` and `field`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::stored::Kind;

/// Longest wait for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not `http://HOST:PORT`.
    #[error("bad server address \"{server}\": {reason}")]
    BadServer { server: String, reason: String },
    /// No answer (connection refused, reset, timeout).
    #[error("{server}: {reason}")]
    Transport { server: String, reason: String },
    /// The server answered with an error status.
    #[error("{message} ({status})")]
    Api { status: StatusCode, message: String, field: Option<String> },
    /// The answer is not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

/// One raw answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(format!("body is not JSON: {e}")))
    }

    /// The version in `ETag: "<version>"`, if any.
    pub fn etag(&self) -> Option<u64> {
        let tag = self.headers.get(header::ETAG)?.to_str().ok()?;
        tag.trim_matches('"').parse().ok()
    }

    /// `Ok(self)` for 2xx, else the server's error.
    pub fn ok(self) -> Result<Answer, ClientError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let body = serde_json::from_slice::<Value>(&self.body).ok();
        let text = |key: &str| body.as_ref().and_then(|b| b.get(key)).and_then(Value::as_str).map(str::to_string);
        let message = text("error").unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string());
        Err(ClientError::Api { status: self.status, message, field: text("field") })
    }
}

/// A client of one control plane.
#[derive(Clone)]
pub struct Client {
    server: String,
    base: Uri,
    token: Option<String>,
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Plain(Box<HyperClient<HttpConnector, Full<Bytes>>>),
    /// A connection per request: `trellis ctl` sends a handful.
    Tls(tokio_rustls::TlsConnector),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `server` (`http://HOST:PORT`), sending `token` as a bearer token.
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        Self::build(server, token, None)
    }

    /// A client of `server`, `https://HOST:PORT` (a control plane with `--api-tls`) verified
    /// against `ca_file` (its `DIR/ca/ca.pem`) by the control plane's SPIFFE ID.
    pub fn with_ca(server: &str, token: Option<String>, ca_file: &Path) -> Result<Client, ClientError> {
        Self::build(server, token, Some(ca_file))
    }

    fn build(server: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::BadServer { server: server.to_string(), reason: reason.to_string() };
        let base: Uri = server.trim_end_matches('/').parse().map_err(|_| bad("not a URL"))?;
        if base.authority().is_none() {
            return Err(bad("no host"));
        }
        let transport = match (base.scheme_str(), ca_file) {
            (Some("http"), None) => Transport::Plain(Box::new(HyperClient::builder(TokioExecutor::new()).build_http())),
            (Some("http"), Some(_)) => {
                return Err(bad("a CA file is for https:// (a control plane with --api-tls)"));
            }
            (Some("https"), None) => {
                return Err(bad("https:// needs the control plane's CA certificate (--ca-file DIR/ca/ca.pem)"));
            }
            (Some("https"), Some(ca)) => Transport::Tls(tls_connector(ca).map_err(|reason| bad(&reason))?),
            _ => return Err(bad("use http://HOST:PORT or https://HOST:PORT")),
        };
        Ok(Client { server: server.to_string(), base, token, transport })
    }

    /// Sends one request and returns whatever came back (no status check).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let authority = self.base.authority().map_or("", |a| a.as_str());
        let uri = format!("http://{authority}{path}");
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadServer { server: self.server.clone(), reason: e.to_string() })?;
        let transport = |reason: String| ClientError::Transport { server: self.server.clone(), reason };
        let exchange = async {
            let resp = match &self.transport {
                Transport::Plain(http) => http.request(req).await.map_err(|e| transport(error_chain(&e)))?,
                Transport::Tls(tls) => {
                    // A bare connection sends the URI as given: the path, and the host apart.
                    let (mut parts, body) = req.into_parts();
                    parts.uri = path.parse().map_err(|e: http::uri::InvalidUri| transport(e.to_string()))?;
                    parts.headers.insert(
                        header::HOST,
                        http::HeaderValue::from_str(authority).map_err(|e| transport(e.to_string()))?,
                    );
                    let req = Request::from_parts(parts, body);
                    let io = connect_tls(tls, authority).await.map_err(|e| transport(error_chain(&e)))?;
                    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                        .await
                        .map_err(|e| transport(error_chain(&e)))?;
                    tokio::spawn(conn);
                    send.send_request(req).await.map_err(|e| transport(error_chain(&e)))?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| transport(e.to_string()))?.to_bytes();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| transport("timed out".into()))?
    }

    /// `GET path`, 2xx required, JSON body.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None, &[]).await?.ok()?.json()
    }

    /// One resource as stored, or `None` when absent.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<Value>, ClientError> {
        let answer = self.send(Method::GET, &resource_path(kind, name), None, &[]).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer.ok()?.json().map(Some)
    }

    /// Every resource of `kind`.
    pub async fn list(&self, kind: Kind) -> Result<Vec<Value>, ClientError> {
        let list = self.get_json(&format!("/v1/{}", kind.plural())).await?;
        match list.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(ClientError::Decode("a list without `items`".into())),
        }
    }

    /// Creates or replaces a resource; `true` when it was created.
    pub async fn put(&self, kind: Kind, name: &str, resource: &Value) -> Result<bool, ClientError> {
        let body = serde_json::to_vec(resource).map_err(|e| ClientError::Decode(e.to_string()))?;
        let answer = self.send(Method::PUT, &resource_path(kind, name), Some(body), &[]).await?.ok()?;
        Ok(answer.status == StatusCode::CREATED)
    }

    /// Deletes a resource.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &resource_path(kind, name), None, &[]).await?.ok().map(drop)
    }

    /// `GET /v1/proxies`: the `proxies` array.
    pub async fn proxies(&self) -> Result<Vec<Value>, ClientError> {
        match self.get_json("/v1/proxies").await?.get("proxies") {
            Some(Value::Array(p)) => Ok(p.clone()),
            _ => Err(ClientError::Decode("no `proxies` array".into())),
        }
    }
}

/// TLS that accepts only the control plane's SPIFFE ID under the CA in `ca_file`.
fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = trellis_certs::verify::load_roots(ca_file).map_err(|e| e.to_string())?;
    let expected = crate::server_tls::CONTROL_PLANE_ID.to_owned();
    let mut config = trellis_certs::verify::client_builder(roots, expected, provider, rustls::DEFAULT_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect_tls(
    tls: &tokio_rustls::TlsConnector,
    authority: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = trellis_certs::verify::sni_name(authority)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    tls.connect(name, tcp).await
}

/// `/v1/{kind}/{name}` with the name percent-encoded.
pub fn resource_path(kind: Kind, name: &str) -> String {
    let mut path = format!("/v1/{}/", kind.plural());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// An error with its causes ("connection refused" is usually a source, not the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(resource_path(Kind::Cluster, "web-1.v2"), "/v1/clusters/web-1.v2");
        assert_eq!(resource_path(Kind::Route, "a/b?c"), "/v1/routes/a%2Fb%3Fc");
    }

    #[test]
    fn https_needs_the_ca_and_http_takes_none() {
        assert!(Client::new("http://127.0.0.1:7070", None).is_ok());
        assert!(Client::new("https://cp:7070", None).unwrap_err().to_string().contains("--ca-file"));
        assert!(Client::new("127.0.0.1:7070", None).is_err());
        let ca = Path::new("/nonexistent/ca.pem");
        assert!(Client::with_ca("http://127.0.0.1:7070", None, ca).unwrap_err().to_string().contains("https://"));
        assert!(Client::with_ca("https://cp:7070", None, ca).unwrap_err().to_string().contains("ca.pem"));
    }
}
