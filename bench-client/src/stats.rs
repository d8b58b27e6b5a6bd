//! Latency histograms and throughput figures: per-second progress, the final table, JSON.
//!
//! Latencies are microseconds in an hdrhistogram with 3 significant digits, 1 µs to 60 s.

use hdrhistogram::Histogram;

use crate::verify::Faults;
use crate::worker::Recovery;

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// Records `count` samples of `ns` nanoseconds, clamped into the histogram's range.
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64, count: u64) {
    let us = (ns / 1000).clamp(1, 60_000_000);
    let _ = h.record_n(us, count);
}

/// What one worker reports every second.
pub struct Snapshot {
    #[allow(dead_code)] // kept for debugging per-worker imbalance
    pub worker: usize,
    pub produced: u64,
    pub produced_bytes: u64,
    pub consumed: u64,
    pub consumed_bytes: u64,
    pub produce_latency: Histogram<u64>,
    pub consume_latency: Histogram<u64>,
}

/// Percentiles reported for a latency histogram.
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

/// Formats microseconds for people.
pub fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// Formats a rate for people: 4.01M.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// The outcome of one side (produce or consume) of a run.
#[derive(Clone)]
pub struct SideResult {
    pub name: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    /// What the latency measures, for the table.
    pub latency_meaning: &'static str,
}

impl SideResult {
    pub fn messages_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }
    pub fn bytes_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The outcome of a run.
pub struct RunResult {
    pub mode: String,
    pub sides: Vec<SideResult>,
    pub faults: Faults,
    /// Every message checked that could be (consumed, or acks when producing only).
    pub verified: bool,
    /// Messages consumed and checked (0 when producing only).
    pub checked: u64,
    /// CPU seconds this process used (user + system) over the whole run, warm-up included,
    /// and the messages it handled in that time: whether the bench could be the bottleneck.
    pub bench_cpu_s: f64,
    pub handled: u64,
    /// Retries, reconnects and the longest stall of following leaders.
    pub recovery: Recovery,
    /// Messages read twice or late because their batch was resent (not faults).
    pub resend_duplicates: u64,
}

impl RunResult {
    /// The side whose figures headline the run: consume for e2e latency, else the only one.
    pub fn headline(&self) -> Option<&SideResult> {
        if self.mode == "e2e" {
            self.sides.iter().find(|s| s.name == "consume")
        } else {
            self.sides.first()
        }
    }

    /// Prints the final table.
    pub fn print_table(&self) {
        println!();
        println!(
            "{:<8} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  latency",
            "side",
            "messages",
            "msg/s",
            "MB/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "seconds"
        );
        for s in &self.sides {
            let p: Vec<String> = PERCENTILES
                .iter()
                .map(|(_, q)| fmt_us(s.latency.value_at_percentile(*q)))
                .collect();
            println!(
                "{:<8} {:>12} {:>10} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2}  {}",
                s.name,
                s.messages,
                fmt_rate(s.messages_per_s()),
                s.bytes_per_s() / 1e6,
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                s.seconds,
                s.latency_meaning
            );
        }
        if self.handled > 0 {
            println!(
                "bench cpu: {:.2} s for {} messages ({:.0} ns per message)",
                self.bench_cpu_s,
                self.handled,
                self.bench_cpu_s * 1e9 / self.handled as f64
            );
        }
        let r = &self.recovery;
        println!(
            "leaders: {} retries ({} batches resent, {} fetch retries), {} reconnects, {} metadata refreshes; longest stall {} (partition {}); {} duplicates from resends",
            r.retries(),
            r.resent_batches,
            r.fetch_retries,
            r.reconnects,
            r.metadata_refreshes,
            fmt_us(r.stall_ns_max / 1000),
            r.stall_partition,
            self.resend_duplicates
        );
        println!(
            "verification: {} ({} messages checked; {})",
            if self.verified { "PASSED" } else { "FAILED" },
            self.checked,
            self.faults
        );
    }

    /// The run as one JSON object.
    pub fn to_json(&self) -> String {
        let side_json = |s: &SideResult| {
            let pct: Vec<String> = PERCENTILES
                .iter()
                .map(|(n, q)| format!("\"{n}\":{}", s.latency.value_at_percentile(*q)))
                .collect();
            format!(
                "{{\"messages\":{},\"messages_per_s\":{:.1},\"bytes_per_s\":{:.1},\"seconds\":{:.3},\"latency_us\":{{{}}},\"latency_meaning\":\"{}\"}}",
                s.messages,
                s.messages_per_s(),
                s.bytes_per_s(),
                s.seconds,
                pct.join(","),
                s.latency_meaning
            )
        };
        let head = self
            .headline()
            .map(side_json)
            .unwrap_or_else(|| "{}".into());
        // Headline fields at top level, each side in full below.
        let head = head.trim_start_matches('{').trim_end_matches('}');
        let sides: Vec<String> = self
            .sides
            .iter()
            .map(|s| format!("\"{}\":{}", s.name, side_json(s)))
            .collect();
        let f = &self.faults;
        let r = &self.recovery;
        let recovery = format!(
            "\"retries\":{},\"recovery\":{{\"resent_batches\":{},\"fetch_retries\":{},\"reconnects\":{},\"metadata_refreshes\":{},\"stall_ms_max\":{:.3},\"stall_partition\":{},\"resend_duplicates\":{}}}",
            r.retries(),
            r.resent_batches,
            r.fetch_retries,
            r.reconnects,
            r.metadata_refreshes,
            r.stall_ns_max as f64 / 1e6,
            r.stall_partition,
            self.resend_duplicates
        );
        format!(
            "{{\"mode\":\"{}\",{head},\"errors\":{},\"faults\":{{\"lost\":{},\"duplicated\":{},\"reordered\":{},\"corrupted\":{},\"offset_errors\":{},\"request_errors\":{}}},\"verified\":{},\"checked\":{},\"bench_cpu_s\":{:.3},\"handled\":{},{recovery},{}}}",
            self.mode,
            f.total(),
            f.lost,
            f.duplicated,
            f.reordered,
            f.corrupted,
            f.offset_errors,
            f.request_errors,
            self.verified,
            self.checked,
            self.bench_cpu_s,
            self.handled,
            sides.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_promised_fields() {
        let mut h = new_histogram();
        record_ns(&mut h, 1_500_000, 10);
        let r = RunResult {
            mode: "produce".into(),
            sides: vec![SideResult {
                name: "produce",
                messages: 10,
                bytes: 1000,
                seconds: 2.0,
                latency: h,
                latency_meaning: "ack",
            }],
            faults: Faults::default(),
            verified: true,
            checked: 0,
            bench_cpu_s: 0.5,
            handled: 10,
            recovery: Recovery::default(),
            resend_duplicates: 0,
        };
        let j = r.to_json();
        for key in [
            "\"messages\":10",
            "\"messages_per_s\":5.0",
            "\"bytes_per_s\":500.0",
            "\"latency_us\":{\"p50\":1500",
            "\"errors\":0",
            "\"verified\":true",
            "\"p99.99\"",
            "\"retries\":0",
            "\"stall_ms_max\":",
        ] {
            assert!(j.contains(key), "{key} missing in {j}");
        }
    }

    #[test]
    fn samples_below_one_microsecond_still_count() {
        let mut h = new_histogram();
        record_ns(&mut h, 10, 3);
        assert_eq!(h.len(), 3);
    }
}
