//! The mesh page, `/ui` (DESIGN §14): plain HTML, one script and one stylesheet, compiled
//! into the binary. The files hold no data and are served without the token; the script
//! asks for the token (or takes it from the URL fragment, `/ui#token=…`, which never leaves
//! the browser), keeps it in `sessionStorage`, and reads `GET /v1/mesh` with it as the
//! bearer token, every 2 seconds. It fetches nothing else, from nowhere else (its
//! Content-Security-Policy says so too).

use axum::response::{IntoResponse, Response};
use http::header;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("ui.js");
const STYLE: &str = include_str!("ui.css");

/// Only this origin, only these files, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's static files (served without the token).
pub fn is_static(path: &str) -> bool {
    matches!(path, "/ui" | "/ui/ui.js" | "/ui/ui.css")
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`.
pub async fn page() -> Response {
    file("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/ui.js`.
pub async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/ui.css`.
pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
