//! A bounded per-thread stock of reusable values (emptied header maps, I/O buffers): what a
//! worker thread gives back it takes again without going to the allocator. A worker is
//! one thread, so no lock; at thread exit the stock is gone and values are simply dropped.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread-local stock, declared with `thread_local!` by its owner.
pub type Stock<T> = LocalKey<RefCell<Vec<T>>>;

/// Takes a value from `stock`, if it holds one.
#[inline]
pub fn take<T: 'static>(stock: &'static Stock<T>) -> Option<T> {
    stock.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Keeps `item` in `stock` unless it already holds `max` values (then `item` is dropped).
#[inline]
pub fn keep<T: 'static>(stock: &'static Stock<T>, item: T, max: usize) {
    let _ = stock.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < max {
            s.push(item);
        }
    });
}
