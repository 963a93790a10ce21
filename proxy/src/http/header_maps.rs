//! A per-thread stock of emptied header maps. Each head the in-task HTTP/1.1 codecs parse
//! or h2 decodes needs a `HeaderMap` (two allocations: its index table and its entries), and
//! the map of a forwarded request or response is done with as soon as its head has been
//! written or encoded. Handing those maps back saves four allocations and frees per
//! proxied request. A worker is one thread, so the stock takes no lock; a map taken on one
//! thread and given back on another simply joins that thread's stock.

use crate::http::recycle;
use http::HeaderMap;
use std::cell::RefCell;

/// Maps kept per thread: about one request and one response per connection in flight on a
/// busy worker; more are freed.
const STOCK: usize = 64;
/// Every map holds at least this many fields, so request and response maps are
/// interchangeable (a request's map also takes the forwarding headers).
const MIN_CAPACITY: usize = 12;
/// Maps grown past this are freed rather than kept (one odd request must not pin memory).
const MAX_KEPT: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields.
pub fn take(fields: usize) -> HeaderMap {
    let spare = recycle::take(&SPARE);
    match spare {
        Some(map) if map.capacity() >= fields => map,
        _ => HeaderMap::with_capacity(fields.max(MIN_CAPACITY)),
    }
}

/// The stock as the vendored h2 takes it: received header blocks are decoded into maps
/// from it, and sent ones' maps, emptied by the HPACK encoder, come back to it.
pub fn for_h2() -> h2::HeaderMaps {
    h2::HeaderMaps::new(take, give)
}

/// Gives back a map that is no longer needed.
pub fn give(mut map: HeaderMap) {
    if map.capacity() < MIN_CAPACITY || map.capacity() > MAX_KEPT {
        return;
    }
    // A map h2's encoder drained is empty already.
    if !map.is_empty() {
        map.clear();
    }
    recycle::keep(&SPARE, map, STOCK);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn maps_come_back_empty_and_sized() {
        let mut m = take(3);
        assert!(m.capacity() >= MIN_CAPACITY);
        m.insert("x-a", "1".parse().unwrap());
        give(m);
        let again = take(5);
        assert!(again.is_empty());
        assert!(again.capacity() >= 5);
        // A request for more room than any kept map gets a new one.
        let big = take(200);
        assert!(big.capacity() >= 200);
        give(big);
        assert!(take(1).capacity() <= MAX_KEPT);
    }
}
