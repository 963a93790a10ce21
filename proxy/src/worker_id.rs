//! Worker identity. Each worker thread runs its own current-thread runtime; per-worker
//! state (HTTP/1.1 idle pools) is indexed by the id stored here, so the hot path needs no
//! cross-thread hand-off.

use std::cell::Cell;

thread_local! {
    static WORKER_ID: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `id` (0-based).
pub fn set_current(id: usize) {
    WORKER_ID.with(|w| w.set(id));
}

/// The current thread's worker id (0 on non-worker threads).
pub fn current() -> usize {
    WORKER_ID.with(Cell::get)
}
