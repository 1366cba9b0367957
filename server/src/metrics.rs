//! Counters, gauges and histograms for `GET /metrics`, in Prometheus' text
//! exposition format. The engine thread writes them; handlers read them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// A histogram with fixed upper bounds (cumulative buckets, as Prometheus
/// wants them).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>, // per-bucket counts (+Inf last), sum, count
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, inner: Mutex::new((vec![0; bounds.len() + 1], 0.0, 0)) }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        let mut g = self.inner.lock();
        g.0[i] += 1;
        g.1 += v;
        g.2 += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let g = self.inner.lock();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += g.0[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += g.0[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}\n{name}_sum {}\n{name}_count {}", g.1, g.2);
    }
}

const LATENCY: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0];
const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];

pub struct Metrics {
    /// The engine thread panicked: nothing is served any more.
    pub engine_dead: std::sync::atomic::AtomicBool,
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_used: AtomicUsize,
    pub kv_total: AtomicUsize,
    pub kv_cached: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub gen_tokens: AtomicU64,
    pub requests_done: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub preempted: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub prefix_tokens: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub steps: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            engine_dead: std::sync::atomic::AtomicBool::new(false),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            kv_used: AtomicUsize::new(0),
            kv_total: AtomicUsize::new(0),
            kv_cached: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            gen_tokens: AtomicU64::new(0),
            requests_done: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            preempted: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            prefix_tokens: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY),
            itl: Histogram::new(LATENCY),
            e2e: Histogram::new(LATENCY),
            steps: Histogram::new(ROWS),
        }
    }
}

impl Metrics {
    /// The Prometheus text of every metric (names start with `rocmforge_`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP rocmforge_{name} {help}\n# TYPE rocmforge_{name} {kind}\nrocmforge_{name} {v}");
        };
        let l = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge("requests_running", "Sequences generating or prefilling now.", "gauge", l(&self.running));
        gauge("requests_waiting", "Sequences waiting to run (queued or preempted).", "gauge", l(&self.waiting));
        gauge("kv_blocks_used", "KV cache blocks held by sequences.", "gauge", l(&self.kv_used));
        gauge("kv_blocks_total", "KV cache blocks in the pool.", "gauge", l(&self.kv_total));
        gauge("kv_blocks_cached", "Free KV blocks the prefix cache still keeps.", "gauge", l(&self.kv_cached));
        gauge("prompt_tokens_total", "Prompt tokens of requests sent to the engine.", "counter", c(&self.prompt_tokens));
        gauge("generation_tokens_total", "Tokens generated.", "counter", c(&self.gen_tokens));
        gauge("requests_success_total", "Requests completed.", "counter", c(&self.requests_done));
        gauge("requests_cancelled_total", "Requests whose client went away before the end.", "counter", c(&self.cancelled));
        gauge("requests_failed_total", "Requests that failed in the engine.", "counter", c(&self.failed));
        gauge("requests_rejected_total", "Requests refused because the queue was full.", "counter", c(&self.rejected));
        gauge("preemptions_total", "Sequences preempted when the KV pool ran dry (recomputed later).", "counter", c(&self.preempted));
        gauge("prefix_cache_hits_total", "Requests whose prompt started with cached KV blocks.", "counter", c(&self.prefix_hits));
        gauge("prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.", "counter", c(&self.prefix_tokens));
        self.ttft.write(&mut s, "rocmforge_time_to_first_token_seconds", "Time from arrival to the first generated token.");
        self.itl.write(&mut s, "rocmforge_inter_token_latency_seconds", "Time between consecutive tokens of a choice.");
        self.e2e.write(&mut s, "rocmforge_e2e_request_latency_seconds", "Time from arrival to the last token.");
        self.steps.write(&mut s, "rocmforge_tokens_per_step", "Tokens (rows) per engine step.");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_count 4\n") && s.contains("x_sum 12.7"), "{s}");
    }
}
