//! Prometheus metrics: counters and histograms kept per shard in plain `Cell`s (nothing
//! shared between shards, no atomics on the data path), gathered at scrape time by asking
//! every shard for a [`Snapshot`] over the mesh, and rendered in Prometheus's text format
//! with a `shard` label by [`render`]. The HTTP side (`/metrics`, `/health`) is
//! `crate::metrics_http`, above the shards; this module imports nothing of them.
//!
//! What this module must never do: block or slow a request (recording is an index and an
//! add on the shard's own cells), or hold a shard's state across a scrape (a snapshot is a
//! copy, made on its shard).
//!
//! ```
//! use shardlog::metrics::{render, ShardMetrics};
//! use std::time::Duration;
//!
//! let metrics = ShardMetrics::default();
//! metrics.request(0, Duration::from_millis(3)); // a Produce
//! let text = render(&[metrics.snapshot(0)]);
//! assert!(text.contains("shardlog_requests_total{shard=\"0\",api=\"Produce\"} 1"));
//! assert!(text.contains("shardlog_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"0.005\"} 1"));
//! ```

use std::cell::{Cell, RefCell};
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;

use glommio::sync::Semaphore;
use kafka_protocol::messages::ApiKey;

/// API keys counted (Kafka's keys are below this); larger keys are counted as "other".
const API_KEYS: usize = 80;
/// Upper bounds of the latency histogram buckets, seconds (+Inf is implied).
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram: counts per bucket (cumulative only when rendered), sum and count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS_S.len()],
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|le| seconds <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

/// One shard's figures. Only its shard touches it.
pub struct ShardMetrics {
    /// Requests handled, by API key.
    requests: RefCell<[u64; API_KEYS]>,
    /// Handling time of each request, by API key (allocated at first use of a key).
    latency: RefCell<Vec<Option<Box<Histogram>>>>,
    /// Requests that closed their connection instead of being answered (undecodable).
    pub requests_refused: Cell<u64>,
    /// Connections open on this shard, and accepted since start.
    pub connections_open: Cell<u64>,
    pub connections_total: Cell<u64>,
    /// Connections closed at accept because of `max_connections_per_shard`.
    pub connections_refused: Cell<u64>,
    /// The shard's budget of request bytes and its size (read at scrape time only).
    budget: RefCell<Option<(Rc<Semaphore>, u64)>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: RefCell::new([0; API_KEYS]),
            latency: RefCell::new(vec![None; API_KEYS]),
            requests_refused: Cell::new(0),
            connections_open: Cell::new(0),
            connections_total: Cell::new(0),
            connections_refused: Cell::new(0),
            budget: RefCell::new(None),
        }
    }
}

/// A copy of one shard's figures, sent to the scraping shard.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shard: usize,
    /// (API key, requests, latency histogram).
    pub requests: Vec<(i16, u64, Histogram)>,
    pub requests_refused: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub buffered_bytes: u64,
    pub buffered_bytes_limit: u64,
    /// (topic, partition, log start offset, log end offset) of the partitions it owns.
    pub partitions: Vec<(String, i32, i64, i64)>,
    /// Partitions this node leads with followers: (topic, partition, high watermark, ISR
    /// size, replicas).
    pub led: Vec<(String, i32, i64, usize, usize)>,
}

impl ShardMetrics {
    /// Counts one handled request of `api_key` that took `elapsed`.
    pub fn request(&self, api_key: i16, elapsed: Duration) {
        let i = usize::try_from(api_key)
            .unwrap_or(API_KEYS - 1)
            .min(API_KEYS - 1);
        self.requests.borrow_mut()[i] += 1;
        self.latency.borrow_mut()[i]
            .get_or_insert_with(Box::default)
            .observe(elapsed.as_secs_f64());
    }

    /// Reports `budget` (of `limit` bytes) as the shard's buffered request bytes.
    pub fn watch_budget(&self, budget: Rc<Semaphore>, limit: u64) {
        *self.budget.borrow_mut() = Some((budget, limit));
    }

    /// A copy of the counters (partitions are added by the shard, which owns the logs).
    pub fn snapshot(&self, shard: usize) -> Snapshot {
        let requests = self.requests.borrow();
        let latency = self.latency.borrow();
        let (buffered_bytes, buffered_bytes_limit) = match &*self.budget.borrow() {
            Some((budget, limit)) => (limit.saturating_sub(budget.available()), *limit),
            None => (0, 0),
        };
        Snapshot {
            shard,
            requests: (0..API_KEYS)
                .filter(|i| requests[*i] > 0)
                .map(|i| {
                    let histogram = latency[i].as_deref().cloned().unwrap_or_default();
                    (i as i16, requests[i], histogram)
                })
                .collect(),
            requests_refused: self.requests_refused.get(),
            connections_open: self.connections_open.get(),
            connections_total: self.connections_total.get(),
            connections_refused: self.connections_refused.get(),
            buffered_bytes,
            buffered_bytes_limit,
            partitions: Vec::new(),
            led: Vec::new(),
        }
    }
}

fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(api) => format!("{api:?}"),
        Err(()) => format!("key{key}"),
    }
}

/// Escapes a label value (topic names allow only [a-zA-Z0-9._-], but be safe).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends one metric family: HELP, TYPE, then each sample line.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Every shard's figures in Prometheus's text exposition format (version 0.0.4).
pub fn render(snapshots: &[Snapshot]) -> String {
    let mut out = String::new();
    let per_shard = |f: &dyn Fn(&Snapshot) -> u64| -> Vec<(String, String)> {
        snapshots
            .iter()
            .map(|s| (format!("shard=\"{}\"", s.shard), f(s).to_string()))
            .collect()
    };
    let mut requests = Vec::new();
    let (mut buckets, mut sums, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for s in snapshots {
        for (key, n, h) in &s.requests {
            let labels = format!("shard=\"{}\",api=\"{}\"", s.shard, api_name(*key));
            requests.push((labels.clone(), n.to_string()));
            let mut cumulative = 0;
            for (le, count) in LATENCY_BUCKETS_S.iter().zip(h.buckets) {
                cumulative += count;
                buckets.push((format!("{labels},le=\"{le}\""), cumulative.to_string()));
            }
            buckets.push((format!("{labels},le=\"+Inf\""), h.count.to_string()));
            sums.push((labels.clone(), h.sum_s.to_string()));
            counts.push((labels, h.count.to_string()));
        }
    }
    family(
        &mut out,
        "shardlog_requests_total",
        "counter",
        "Kafka requests handled, by API.",
        &requests,
    );
    let _ = writeln!(out, "# HELP shardlog_request_duration_seconds Time from a request's decoding to its response, by API.");
    let _ = writeln!(out, "# TYPE shardlog_request_duration_seconds histogram");
    for (name, samples) in [("_bucket", &buckets), ("_sum", &sums), ("_count", &counts)] {
        for (labels, value) in samples {
            let _ = writeln!(
                out,
                "shardlog_request_duration_seconds{name}{{{labels}}} {value}"
            );
        }
    }
    family(
        &mut out,
        "shardlog_requests_refused_total",
        "counter",
        "Requests that could not be decoded and closed their connection.",
        &per_shard(&|s| s.requests_refused),
    );
    family(
        &mut out,
        "shardlog_connections",
        "gauge",
        "Client connections open.",
        &per_shard(&|s| s.connections_open),
    );
    family(
        &mut out,
        "shardlog_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &per_shard(&|s| s.connections_total),
    );
    family(
        &mut out,
        "shardlog_connections_refused_total",
        "counter",
        "Connections closed at accept: max_connections_per_shard reached.",
        &per_shard(&|s| s.connections_refused),
    );
    family(
        &mut out,
        "shardlog_buffered_request_bytes",
        "gauge",
        "Request bytes held (read, not yet answered); reads stop at the limit.",
        &per_shard(&|s| s.buffered_bytes),
    );
    family(
        &mut out,
        "shardlog_buffered_request_bytes_limit",
        "gauge",
        "max_buffered_bytes_per_shard.",
        &per_shard(&|s| s.buffered_bytes_limit),
    );
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for s in snapshots {
        for (topic, p, start, end) in &s.partitions {
            let labels = format!(
                "shard=\"{}\",topic=\"{}\",partition=\"{p}\"",
                s.shard,
                label(topic)
            );
            starts.push((labels.clone(), start.to_string()));
            ends.push((labels, end.to_string()));
        }
    }
    family(
        &mut out,
        "shardlog_partition_log_start_offset",
        "gauge",
        "First offset a partition holds (its owner shard's view).",
        &starts,
    );
    family(
        &mut out,
        "shardlog_partition_log_end_offset",
        "gauge",
        "Offset of a partition's next record.",
        &ends,
    );
    let mut marks = Vec::new();
    let mut isr_sizes = Vec::new();
    let mut under = Vec::new();
    for s in snapshots {
        let mut short = 0u64;
        for (topic, p, hw, isr, replicas) in &s.led {
            let labels = format!(
                "shard=\"{}\",topic=\"{}\",partition=\"{p}\"",
                s.shard,
                label(topic)
            );
            marks.push((labels.clone(), hw.to_string()));
            isr_sizes.push((labels, isr.to_string()));
            short += u64::from(isr < replicas);
        }
        under.push((format!("shard=\"{}\"", s.shard), short.to_string()));
    }
    family(
        &mut out,
        "shardlog_partition_high_watermark",
        "gauge",
        "High watermark of a partition this broker leads with followers: what consumers see.",
        &marks,
    );
    family(
        &mut out,
        "shardlog_partition_isr_size",
        "gauge",
        "In-sync replicas of a partition this broker leads with followers.",
        &isr_sizes,
    );
    family(
        &mut out,
        "shardlog_under_replicated_partitions",
        "gauge",
        "Partitions this broker leads whose ISR is smaller than their replica set.",
        &under,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_render_cumulatively_and_inf_counts_everything() {
        let m = ShardMetrics::default();
        m.request(1, Duration::from_micros(50)); // Fetch
        m.request(1, Duration::from_millis(30));
        m.request(1, Duration::from_secs(10)); // past every bound
        let text = render(&[m.snapshot(2)]);
        let bucket = |le: &str| {
            format!(
                "shardlog_request_duration_seconds_bucket{{shard=\"2\",api=\"Fetch\",le=\"{le}\"}}"
            )
        };
        assert!(
            text.contains(&format!("{} 1\n", bucket("0.0001"))),
            "{text}"
        );
        assert!(text.contains(&format!("{} 2\n", bucket("0.05"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", bucket("5"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", bucket("+Inf"))), "{text}");
        assert!(
            text.contains("shardlog_request_duration_seconds_count{shard=\"2\",api=\"Fetch\"} 3")
        );
    }
}
