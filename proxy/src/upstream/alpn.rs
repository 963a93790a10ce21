//! What an endpoint's TLS handshake said about its HTTP version (DESIGN §11). A `tls`
//! cluster of `protocol: auto` offers `h2` and `http/1.1` by ALPN on its first connection
//! to an endpoint and remembers the upstream's choice, so later requests go straight to
//! the right pool: multiplexed h2 to an endpoint that chose `h2`, HTTP/1.1 otherwise (a
//! server that chose `http/1.1` or no ALPN at all). A failed handshake forgets it, so an
//! upstream redeployed with another protocol is learned again.

use crate::upstream::Wire;
use std::sync::atomic::{AtomicU8, Ordering};

/// One endpoint's learned version; `Off` for endpoints that do not learn (plaintext,
/// mesh, or a configured `protocol`).
#[derive(Debug)]
pub struct Alpn(AtomicU8);

const OFF: u8 = 0;
const UNKNOWN: u8 = 1;
const HTTP1: u8 = 2;
const HTTP2: u8 = 3;

/// What is known when a request is about to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// The endpoint does not learn: the request's own wire version holds.
    Off,
    /// Not yet (or no longer) known: the next connection offers both.
    Unknown,
    Known(Wire),
}

impl Alpn {
    pub fn new(learns: bool) -> Self {
        Self(AtomicU8::new(if learns { UNKNOWN } else { OFF }))
    }

    /// Whether this endpoint learns its version by ALPN.
    pub fn learns(&self) -> bool {
        self.0.load(Ordering::Relaxed) != OFF
    }

    #[inline]
    pub fn get(&self) -> Learned {
        match self.0.load(Ordering::Relaxed) {
            OFF => Learned::Off,
            HTTP1 => Learned::Known(Wire::Http1),
            HTTP2 => Learned::Known(Wire::Http2),
            _ => Learned::Unknown,
        }
    }

    /// Records the protocol a handshake selected (`None`: the server did no ALPN, which
    /// means HTTP/1.1: h2 over TLS needs ALPN, RFC 9113 §3.2).
    pub fn learn(&self, selected: Option<&[u8]>) -> Wire {
        let wire = if selected == Some(crate::tls::ALPN_H2) { Wire::Http2 } else { Wire::Http1 };
        let v = if wire == Wire::Http2 { HTTP2 } else { HTTP1 };
        let _ = self.0.compare_exchange(UNKNOWN, v, Ordering::Relaxed, Ordering::Relaxed);
        wire
    }

    /// Forgets what was learned (a handshake in the learned protocol failed).
    pub fn forget(&self) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| (v != OFF).then_some(UNKNOWN));
    }

    /// The label for the admin view: `h2`, `http/1.1`, `unknown`, or `None` when off.
    pub fn label(&self) -> Option<&'static str> {
        match self.get() {
            Learned::Off => None,
            Learned::Unknown => Some("unknown"),
            Learned::Known(Wire::Http1) => Some("http/1.1"),
            Learned::Known(Wire::Http2) => Some("h2"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_forgets_and_stays_off() {
        let off = Alpn::new(false);
        assert_eq!(off.get(), Learned::Off);
        off.learn(Some(b"h2"));
        off.forget();
        assert_eq!(off.get(), Learned::Off);

        let a = Alpn::new(true);
        assert_eq!(a.get(), Learned::Unknown);
        assert_eq!(a.learn(Some(b"h2")), Wire::Http2);
        assert_eq!(a.get(), Learned::Known(Wire::Http2));
        a.forget();
        assert_eq!(a.get(), Learned::Unknown);
        assert_eq!(a.learn(None), Wire::Http1);
        assert_eq!(a.get(), Learned::Known(Wire::Http1));
        a.forget();
        assert_eq!(a.learn(Some(b"http/1.1")), Wire::Http1);
    }
}
