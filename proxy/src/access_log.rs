//! The JSON access log (DESIGN §7): one line per HTTP request, written when its response has
//! ended (so the duration and byte count are final), and one per L4 connection when it
//! closes, to stdout or to a file. Workers append encoded lines to a shared buffer; one
//! writer thread takes the buffer every [`FLUSH_EVERY`] (sooner once it holds
//! [`FLUSH_AT`]) and writes it, so requests never wait for a disk nor wake a thread each.
//! When the buffer is full (the disk cannot keep up), lines are dropped and counted in
//! `trellis_access_log_dropped_total` rather than blocking.

use crate::telemetry;
use http::{HeaderValue, Method, Request, Version};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The writer's longest wait between writes.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer early.
const FLUSH_AT: usize = 256 * 1024;
/// Buffered bytes beyond which lines are dropped.
const BUFFER_MAX: usize = 16 << 20;

/// Lines waiting for the writer.
#[derive(Debug, Default)]
struct Buffer {
    buf: Mutex<Vec<u8>>,
    big: Condvar,
    /// The writer holds a batch it has not finished writing.
    writing: std::sync::atomic::AtomicBool,
}

/// Every log opened in this process, by path.
fn registry() -> &'static Mutex<HashMap<String, Arc<AccessLog>>> {
    static OPEN: OnceLock<Mutex<HashMap<String, Arc<AccessLog>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Writes out what every log holds, waiting up to `limit`: called once the proxy has
/// drained, so the last requests' lines are not lost with the process.
pub fn flush_all(limit: Duration) {
    let logs: Vec<Arc<AccessLog>> = registry().lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    let deadline = Instant::now() + limit;
    for log in logs {
        let b = &log.pending;
        while Instant::now() < deadline {
            let empty = b.buf.lock().map(|v| v.is_empty()).unwrap_or(true);
            if empty && !b.writing.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            b.big.notify_one();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Where lines go.
#[derive(Debug)]
pub struct AccessLog {
    pending: Arc<Buffer>,
}

impl AccessLog {
    /// The log for `path` (`stdout` or a file, appended to and created if missing). One
    /// writer per path for the life of the process, shared by every config that names it, so
    /// reloads neither reopen the file nor interleave two writers.
    pub fn open(path: &str) -> std::io::Result<Arc<AccessLog>> {
        let mut open = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = open.get(path) {
            return Ok(log.clone());
        }
        let out = if path == "stdout" { Sink::Stdout } else { Sink::File(LogFile::open(path)?) };
        let pending = Arc::new(Buffer::default());
        let shared = pending.clone();
        std::thread::Builder::new().name("trellis-access-log".into()).spawn(move || write_lines(&shared, out))?;
        let log = Arc::new(AccessLog { pending });
        open.insert(path.to_owned(), log.clone());
        Ok(log)
    }

    /// Queues one finished request.
    pub fn write(&self, entry: &Entry) {
        self.queue(&entry.line());
    }

    /// Queues one closed L4 connection.
    pub fn write_l4(&self, e: &L4Entry) {
        self.queue(&L4Line {
            time: rfc3339(e.at),
            listener: &e.listener,
            protocol: "TCP",
            duration_ms: e.started.elapsed().as_secs_f64() * 1000.0,
            bytes_received: e.bytes_received,
            bytes_sent: e.bytes_sent,
            peer: e.peer,
            peer_id: e.peer_id.as_deref(),
            cluster: &e.cluster,
            upstream: e.upstream,
            error: e.error.as_deref(),
        });
    }

    fn queue(&self, line: &impl Serialize) {
        let mut buf = self.pending.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() >= BUFFER_MAX {
            drop(buf);
            metrics::counter!(telemetry::ACCESS_LOG_DROPPED_TOTAL).increment(1);
            return;
        }
        let before = buf.len();
        // Encoded straight into the shared buffer: no per-line allocation.
        if let Err(e) = serde_json::to_writer(&mut *buf, line) {
            buf.truncate(before);
            drop(buf);
            tracing::warn!(error = %e, "cannot encode an access log line");
            return;
        }
        buf.push(b'\n');
        if before < FLUSH_AT && buf.len() >= FLUSH_AT {
            self.pending.big.notify_one();
        }
    }
}

/// Where the writer thread writes.
enum Sink {
    Stdout,
    File(LogFile),
}

/// A log file that follows its path: when the file is moved away or deleted (logrotate's
/// default), the next write after at most [`REOPEN_CHECK`] goes to a new file at the path.
struct LogFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    checked: Instant,
}

/// How often the writer checks that its file is still the one at the path.
const REOPEN_CHECK: Duration = Duration::from_secs(1);

impl LogFile {
    fn open(path: &str) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogFile { path: path.into(), file, checked: Instant::now() })
    }

    /// Reopens the path if it no longer names the open file.
    fn follow(&mut self) {
        if self.checked.elapsed() < REOPEN_CHECK {
            return;
        }
        self.checked = Instant::now();
        use std::os::unix::fs::MetadataExt;
        let same = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.ino() == open.ino() && at_path.dev() == open.dev(),
            _ => false,
        };
        if !same {
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => self.file = f,
                Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the access log"),
            }
        }
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or when woken by a big buffer) takes what is
/// buffered and writes it. Runs for the life of the process.
fn write_lines(pending: &Buffer, mut sink: Sink) {
    let mut batch = Vec::with_capacity(FLUSH_AT);
    loop {
        {
            let buf = pending.buf.lock().unwrap_or_else(|p| p.into_inner());
            // Woken early by a big buffer or by `flush_all`.
            let (mut buf, _) = pending.big.wait_timeout(buf, FLUSH_EVERY).unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *buf, &mut batch);
            pending.writing.store(!batch.is_empty(), std::sync::atomic::Ordering::Release);
        }
        if let Sink::File(f) = &mut sink {
            f.follow();
        }
        if batch.is_empty() {
            continue;
        }
        let written = match &mut sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&batch),
            Sink::File(f) => f.file.write_all(&batch),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the access log");
        }
        batch.clear();
        pending.writing.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// What is known about one request, filled in as it goes through the proxy.
#[derive(Debug)]
pub struct Entry {
    at: SystemTime,
    started: Instant,
    listener: Arc<str>,
    method: Method,
    path: String,
    authority: Option<String>,
    version: Version,
    peer: IpAddr,
    peer_id: Option<Arc<str>>,
    pub request_id: Option<HeaderValue>,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    /// The `x-trellis-error` of a response the proxy made, or why a body stopped early.
    pub error: Option<String>,
    pub attempts: Option<u32>,
    /// Response body bytes sent downstream.
    pub bytes: u64,
    /// An MCP route's request: its (first) JSON-RPC message.
    pub mcp: Option<Box<McpFields>>,
}

/// The access-log fields of an MCP request (DESIGN §13).
#[derive(Debug, Default)]
pub struct McpFields {
    pub method: Option<Box<str>>,
    pub tool: Option<Box<str>>,
    /// The JSON-RPC `id`, written as it came (`7`, `"abc"`).
    pub id: Option<serde_json::Value>,
}

impl Entry {
    /// Starts an entry for `req`, arriving on `listener` from `peer`.
    pub fn new<B>(req: &Request<B>, listener: &Arc<str>, peer: IpAddr, peer_id: Option<&Arc<str>>) -> Box<Entry> {
        Box::new(Entry {
            at: SystemTime::now(),
            started: Instant::now(),
            listener: listener.clone(),
            method: req.method().clone(),
            path: req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
            authority: Some(crate::http::router::request_host(req.uri(), req.headers()).to_owned())
                .filter(|h| !h.is_empty()),
            version: req.version(),
            peer,
            peer_id: peer_id.cloned(),
            request_id: req.headers().get(&crate::http::headers::X_REQUEST_ID).cloned(),
            route: None,
            cluster: None,
            upstream: None,
            status: 0,
            error: None,
            attempts: None,
            bytes: 0,
            mcp: None,
        })
    }

    fn line(&self) -> Line<'_> {
        Line {
            time: rfc3339(self.at),
            listener: &self.listener,
            method: self.method.as_str(),
            path: &self.path,
            authority: self.authority.as_deref(),
            protocol: match self.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: self.status,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: self.bytes,
            peer: self.peer,
            peer_id: self.peer_id.as_deref(),
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            route: self.route.as_deref(),
            cluster: self.cluster.as_deref(),
            upstream: self.upstream,
            attempts: self.attempts,
            error: self.error.as_deref(),
            mcp_method: self.mcp.as_ref().and_then(|m| m.method.as_deref()),
            mcp_tool: self.mcp.as_ref().and_then(|m| m.tool.as_deref()),
            jsonrpc_id: self.mcp.as_ref().and_then(|m| m.id.as_ref()),
        }
    }
}

/// One line's JSON.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    listener: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<&'a str>,
    protocol: &'static str,
    status: u16,
    duration_ms: f64,
    bytes_sent: u64,
    peer: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_tool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jsonrpc_id: Option<&'a serde_json::Value>,
}

/// One L4 (`protocol: tcp`) connection, logged when it closes.
#[derive(Debug)]
pub struct L4Entry {
    at: SystemTime,
    started: Instant,
    listener: Arc<str>,
    peer: IpAddr,
    peer_id: Option<Arc<str>>,
    cluster: Arc<str>,
    pub upstream: Option<SocketAddr>,
    /// Bytes from the client to the upstream, and back.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Why the connection could not be forwarded, or how it broke.
    pub error: Option<String>,
}

impl L4Entry {
    pub fn new(listener: &Arc<str>, peer: IpAddr, peer_id: Option<&Arc<str>>, cluster: &Arc<str>) -> L4Entry {
        L4Entry {
            at: SystemTime::now(),
            started: Instant::now(),
            listener: listener.clone(),
            peer,
            peer_id: peer_id.cloned(),
            cluster: cluster.clone(),
            upstream: None,
            bytes_received: 0,
            bytes_sent: 0,
            error: None,
        }
    }
}

/// One L4 line's JSON.
#[derive(Serialize)]
struct L4Line<'a> {
    time: String,
    listener: &'a str,
    protocol: &'static str,
    duration_ms: f64,
    bytes_received: u64,
    bytes_sent: u64,
    peer: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<&'a str>,
    cluster: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// An entry waiting for its response body to end, and the log it goes to.
#[derive(Debug)]
pub struct Pending {
    pub entry: Box<Entry>,
    pub log: Arc<AccessLog>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.log.write(&self.entry);
    }
}
