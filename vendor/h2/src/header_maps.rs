//! Trellis patch: where the maps of received header blocks come from, and where the maps
//! of sent ones go once encoded. By default each received block gets a new map and each
//! sent one is dropped; an application that keeps a stock of emptied maps hands them in
//! here and gets them back, saving two allocations and two frees per header block.

use http::HeaderMap;
use std::fmt;

/// A source of empty header maps and a sink for maps the encoder has emptied.
#[derive(Clone, Copy)]
pub struct HeaderMaps {
    take: fn(usize) -> HeaderMap,
    give: fn(HeaderMap),
}

impl HeaderMaps {
    /// `take(n)` returns an empty map with room for about `n` fields (a map that is not
    /// empty is cleared before use); `give` receives each map whose fields have been sent.
    pub fn new(take: fn(usize) -> HeaderMap, give: fn(HeaderMap)) -> Self {
        HeaderMaps { take, give }
    }

    pub(crate) fn take(&self, fields: usize) -> HeaderMap {
        let mut map = (self.take)(fields);
        if !map.is_empty() {
            map.clear();
        }
        map
    }

    pub(crate) fn give(&self, map: HeaderMap) {
        (self.give)(map)
    }
}

impl Default for HeaderMaps {
    fn default() -> Self {
        HeaderMaps {
            take: HeaderMap::with_capacity,
            give: drop,
        }
    }
}

impl fmt::Debug for HeaderMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderMaps").finish_non_exhaustive()
    }
}
