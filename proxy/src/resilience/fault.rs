//! Fault injection per route (for chaos tests): delay and/or abort a share of requests.

use std::time::Duration;
use trellis_api::Fault;

fn hit(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

/// The delay to inject into this request, if any.
pub fn delay(f: &Fault) -> Option<Duration> {
    f.delay.as_ref().filter(|d| hit(d.percent)).map(|d| d.duration.get())
}

/// The status to abort this request with, if any.
pub fn abort(f: &Fault) -> Option<u16> {
    f.abort.as_ref().filter(|a| hit(a.percent)).map(|a| a.status)
}
