//! Request path normalization (RFC 3986 §6.2.2): percent-encoded unreserved characters are
//! decoded (so `%2e` is a dot) and dot segments removed, before routing and authorization.

use http::Uri;
use http::uri::PathAndQuery;

/// The normalized URI, or `None` when the path is already normal (the common case, found
/// with one scan and no allocation).
pub fn normalize(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    if !needs_work(path) {
        return None;
    }
    let decoded = decode_unreserved(path);
    let clean = remove_dot_segments(&decoded);
    let pq = match uri.query() {
        Some(q) => format!("{clean}?{q}"),
        None => clean,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

fn needs_work(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b'%' => true,
        b'.' => i > 0 && b[i - 1] == b'/',
        _ => false,
    })
}

/// Decodes `%XX` only where XX is an unreserved character (ALPHA / DIGIT / - . _ ~).
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(c as char);
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        let uri: Uri = p.parse().unwrap();
        normalize(&uri).map_or_else(|| uri.to_string(), |u| u.to_string())
    }

    #[test]
    fn dot_segments_and_encoded_dots() {
        assert_eq!(n("/api/x"), "/api/x");
        assert_eq!(n("/api/../admin"), "/admin");
        assert_eq!(n("/api/./../admin?q=1"), "/admin?q=1");
        assert_eq!(n("/api/%2e%2e/admin"), "/admin");
        assert_eq!(n("/api/%2E%2E/admin"), "/admin");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/.hidden"), "/a/.hidden");
        assert_eq!(n("/a%2Fb"), "/a%2Fb");
        assert_eq!(n("/%7Euser"), "/~user");
        assert_eq!(n("/a%"), "/a%");
    }
}
