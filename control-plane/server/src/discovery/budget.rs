//! Bounds the bytes of responses in flight across every stream. A change that sends many
//! proxies a large set at once — a new 10,000-endpoint cluster to 1,000 proxies is 800 MB of
//! protobuf — then goes out in waves instead of being held in memory all at once (as
//! message copies, then encoded buffers). A response holds its share from before it is
//! made until the proxy answers it (by then it was received whole), or [`HOLD_AT_MOST`],
//! so a proxy that never answers cannot starve the others.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

/// The longest a response keeps its share without an answer.
const HOLD_AT_MOST: Duration = Duration::from_secs(5);
/// Shares are counted in KiB.
const UNIT: usize = 1024;

/// The budget. One per discovery server.
pub struct Budget {
    sem: Arc<Semaphore>,
    units: u32,
}

/// A response's share of the budget; given back when dropped (or after [`HOLD_AT_MOST`]).
pub struct Held {
    _release: oneshot::Sender<()>,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX).clamp(1, Semaphore::MAX_PERMITS as u32);
        Budget { sem: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// Waits until a response of `bytes` fits (one larger than the whole budget waits for
    /// all of it).
    pub async fn take(&self, bytes: usize) -> Held {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.units);
        let (release, released) = oneshot::channel::<()>();
        // The semaphore is never closed, so acquiring only fails if it were; then there is
        // nothing to bound and the response goes at once.
        if let Ok(permit) = self.sem.clone().acquire_many_owned(units).await {
            tokio::spawn(async move {
                // Ends when the Held is dropped (the sender goes) or the time is up.
                let _ = tokio::time::timeout(HOLD_AT_MOST, released).await;
                drop(permit);
            });
        }
        Held { _release: release }
    }

    /// KiB free now (for tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.sem.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shares_come_back_when_answered_or_after_the_longest_hold() {
        let settle = || tokio::time::sleep(Duration::from_millis(1));
        let budget = Budget::new(10 * UNIT);
        let a = budget.take(4 * UNIT).await;
        assert_eq!(budget.free(), 6);
        drop(a);
        settle().await;
        assert_eq!(budget.free(), 10, "given back when answered");

        // Larger than the whole budget: takes all of it, and the next waits until the
        // longest hold is over (nobody answered).
        let big = budget.take(100 * UNIT).await;
        let t = tokio::time::Instant::now();
        let small = budget.take(1).await;
        assert!(t.elapsed() >= HOLD_AT_MOST, "{:?}", t.elapsed());
        drop((big, small));
        settle().await;
        assert_eq!(budget.free(), 10);
    }
}
