//! Keeping traffic healthy when upstreams are slow, failing or overloaded: circuit-breaker
//! thresholds (`breaker`), passive ejection of failing endpoints (`outlier`), active health
//! checks (`health`), retries with a budget (`retry`), local rate limits (`rate_limit`) and
//! fault injection (`fault`). Each is a small state machine the request path consults; the
//! orchestration (which try goes where, hedging) is in `http::attempts`.

pub mod breaker;
pub mod fault;
pub mod health;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
