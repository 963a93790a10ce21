//! The control plane's own metrics (DESIGN §14), served at REST `/metrics` in the Prometheus
//! text format. Each control plane has its own recorder (not the process-wide one), so
//! several in one process (tests, the demo) keep apart, and handles are registered once.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const CONNECTED_PROXIES: &str = "trellis_cp_connected_proxies";
pub const PUSHES_TOTAL: &str = "trellis_cp_pushes_total";
pub const PUSH_BYTES_TOTAL: &str = "trellis_cp_push_bytes_total";
pub const ACKS_TOTAL: &str = "trellis_cp_acks_total";
pub const NACKS_TOTAL: &str = "trellis_cp_nacks_total";
pub const PUSH_DURATION: &str = "trellis_cp_push_duration_seconds";
pub const STORE_WRITE_DURATION: &str = "trellis_cp_store_write_duration_seconds";
pub const STORE_WRITE_ERRORS_TOTAL: &str = "trellis_cp_store_write_errors_total";
pub const CONFIG_REVISION: &str = "trellis_cp_config_revision";

/// Every metric name above (dashboards and tests check their queries against it).
pub const ALL: &[&str] = &[
    CONNECTED_PROXIES,
    PUSHES_TOTAL,
    PUSH_BYTES_TOTAL,
    ACKS_TOTAL,
    NACKS_TOTAL,
    PUSH_DURATION,
    STORE_WRITE_DURATION,
    STORE_WRITE_ERRORS_TOTAL,
    CONFIG_REVISION,
];

/// Push → ACK and store-write buckets, in seconds (100 µs … 10 s).
const BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A store write, for the `op` label.
#[derive(Clone, Copy, Debug)]
pub enum StoreOp {
    Put,
    Delete,
}

/// The handles the control plane records into, and the handle that renders them.
pub struct Metrics {
    handle: PrometheusHandle,
    pub connected: Gauge,
    pub pushes: Counter,
    pub push_bytes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    /// From sending a response to its ACK or NACK.
    pub push_duration: Histogram,
    pub revision: Gauge,
    put: (Histogram, Counter),
    delete: (Histogram, Counter),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let r = Registrar(&recorder);
        let metrics = Metrics {
            handle: recorder.handle(),
            connected: r.gauge(CONNECTED_PROXIES, "Proxies with an open discovery stream to this replica"),
            pushes: r.counter(PUSHES_TOTAL, "Discovery responses sent to proxies"),
            push_bytes: r.counter(PUSH_BYTES_TOTAL, "Bytes of discovery responses sent (protobuf-encoded)"),
            acks: r.counter(ACKS_TOTAL, "Discovery responses proxies applied (ACK)"),
            nacks: r
                .counter(NACKS_TOTAL, "Discovery responses proxies refused (NACK); they keep their previous config"),
            push_duration: r.histogram(
                PUSH_DURATION,
                &[],
                "Time from sending a discovery response to the proxy's ACK or NACK",
            ),
            revision: r.gauge(CONFIG_REVISION, "Revision of the store this replica serves"),
            put: r.store_op("put"),
            delete: r.store_op("delete"),
        };
        recorder.describe_histogram(
            KeyName::from_const_str(STORE_WRITE_DURATION),
            Some(Unit::Seconds),
            SharedString::const_str("Time a durable store write took, by op (put, delete)"),
        );
        recorder.describe_counter(
            KeyName::from_const_str(STORE_WRITE_ERRORS_TOTAL),
            None,
            SharedString::const_str("Store writes that failed (not precondition failures), by op"),
        );
        metrics
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Records a store write that took `took`; `failed` when the store could not write.
    pub fn store_write(&self, op: StoreOp, took: Duration, failed: bool) {
        let (h, errors) = match op {
            StoreOp::Put => &self.put,
            StoreOp::Delete => &self.delete,
        };
        h.record(took.as_secs_f64());
        if failed {
            errors.increment(1);
        }
    }
}

/// Registers and describes metrics on one (non-global) recorder.
struct Registrar<'a>(&'a PrometheusRecorder);

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Registrar<'_> {
    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.0.describe_counter(KeyName::from_const_str(name), None, SharedString::const_str(help));
        self.0.register_counter(&Key::from_static_name(name), &META)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.0.describe_gauge(KeyName::from_const_str(name), None, SharedString::const_str(help));
        self.0.register_gauge(&Key::from_static_name(name), &META)
    }

    fn histogram(&self, name: &'static str, labels: &'static [metrics::Label], help: &'static str) -> Histogram {
        self.0.describe_histogram(KeyName::from_const_str(name), Some(Unit::Seconds), SharedString::const_str(help));
        self.0.register_histogram(&Key::from_static_parts(name, labels), &META)
    }

    fn store_op(&self, op: &'static str) -> (Histogram, Counter) {
        let labels = vec![metrics::Label::from_static_parts("op", op)];
        let h = self.0.register_histogram(&Key::from_parts(STORE_WRITE_DURATION, labels.clone()), &META);
        let c = self.0.register_counter(&Key::from_parts(STORE_WRITE_ERRORS_TOTAL, labels), &META);
        (h, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_help_and_type() {
        let m = Metrics::new();
        m.pushes.increment(1);
        m.push_duration.record(0.002);
        m.store_write(StoreOp::Put, Duration::from_millis(3), false);
        m.store_write(StoreOp::Delete, Duration::from_millis(1), true);
        let text = m.render();
        for name in [CONNECTED_PROXIES, PUSHES_TOTAL, ACKS_TOTAL, NACKS_TOTAL, PUSH_DURATION, STORE_WRITE_DURATION] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} lacks help:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} lacks type:\n{text}");
        }
        assert!(text.contains("trellis_cp_push_duration_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("trellis_cp_store_write_errors_total{op=\"delete\"} 1"), "{text}");
    }
}
