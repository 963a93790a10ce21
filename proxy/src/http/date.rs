//! The `date` response header both in-task servers add (HTTP/1.1 and HTTP/2, as hyper
//! did), formatted at most once a second per thread.

use http::HeaderValue;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((u64::MAX, None)) };
}

/// Calls `f` with the current `date` value (IMF-fixdate).
pub fn with<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != secs || value.is_none() {
            *at = secs;
            // An IMF-fixdate is plain ASCII, always a valid header value.
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok();
        }
        match value {
            Some(v) => f(v),
            None => f(&HeaderValue::from_static("")),
        }
    })
}

/// The current `date` value; a clone of the cached one (no formatting, no copy).
pub fn value() -> HeaderValue {
    with(HeaderValue::clone)
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_imf_fixdate() {
        let v = super::value();
        let s = v.to_str().unwrap_or_default();
        assert!(s.ends_with(" GMT") && s.len() == 29, "{s}");
    }
}
