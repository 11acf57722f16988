//! Server metrics in the Prometheus text format (`GET /metrics`). Hand-written rather than a
//! metrics crate: a handful of atomics and two histograms is all a single-stream server has.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (seconds) of the step-latency histogram: a decode step of a big MoE on a GPU is
/// milliseconds; on the CPU interpreter, up to seconds.
const STEP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Bucket bounds (seconds) of time to first token, which includes queueing and the prompt step.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Everything `/metrics` reports; shared by the HTTP handlers and the generation worker.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    queue_depth: AtomicU64,
    running: AtomicU64,
    cancelled: AtomicU64,
    /// f64 bits: the decode speed of the latest request that had decode steps.
    tokens_per_second: AtomicU64,
    /// DFlash: verify steps run, and the tokens they committed (accepted drafts plus the bonus).
    verify_steps: AtomicU64,
    verify_committed: AtomicU64,
    step_latency: Histogram,
    time_to_first_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            running: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            tokens_per_second: AtomicU64::new(0f64.to_bits()),
            verify_steps: AtomicU64::new(0),
            verify_committed: AtomicU64::new(0),
            step_latency: Histogram::new(STEP_BUCKETS),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
        }
    }
}

impl Metrics {
    /// A finished HTTP request and its status code.
    pub fn request_done(&self, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(status).or_insert(0) += 1;
    }

    pub fn add_generated_tokens(&self, n: u64) {
        self.generated_tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_prompt_tokens(&self, n: u64) {
        self.prompt_tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_queue_depth(&self, n: usize) {
        self.queue_depth.store(n as u64, Ordering::Relaxed);
    }

    pub fn set_running(&self, n: usize) {
        self.running.store(n as u64, Ordering::Relaxed);
    }

    /// A request whose client went away before it finished (queued or generating).
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_tokens_per_second(&self, rate: f64) {
        self.tokens_per_second
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The tokens committed by each verify step of a speculative generation.
    pub fn add_accept_lengths(&self, lengths: &[usize]) {
        let committed: usize = lengths.iter().sum();
        self.verify_steps
            .fetch_add(lengths.len() as u64, Ordering::Relaxed);
        self.verify_committed
            .fetch_add(committed as u64, Ordering::Relaxed);
    }

    /// Mean tokens per verify step since the start (DFlash's tau); 0 before any.
    fn mean_acceptance(&self) -> f64 {
        match self.verify_steps.load(Ordering::Relaxed) {
            0 => 0.0,
            steps => self.verify_committed.load(Ordering::Relaxed) as f64 / steps as f64,
        }
    }

    pub fn observe_step(&self, d: Duration) {
        self.step_latency.observe(d);
    }

    pub fn observe_time_to_first_token(&self, d: Duration) {
        self.time_to_first_token.observe(d);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        header(
            &mut out,
            "mimo_requests_total",
            "counter",
            "HTTP requests answered, by status code.",
        );
        for (status, n) in &requests {
            let _ = writeln!(out, "mimo_requests_total{{status=\"{status}\"}} {n}");
        }
        let counters = [
            (
                "mimo_generated_tokens_total",
                "Tokens generated (completion tokens).",
                &self.generated_tokens,
            ),
            (
                "mimo_prompt_tokens_total",
                "Prompt tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "mimo_requests_cancelled_total",
                "Requests whose client disconnected before they finished; their work was stopped.",
                &self.cancelled,
            ),
            (
                "mimo_dflash_verify_steps_total",
                "DFlash verify steps (one block drafted and verified); 0 without a draft.",
                &self.verify_steps,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "mimo_queue_depth",
                "Requests waiting for the engine (not counting the one generating).",
                self.queue_depth.load(Ordering::Relaxed) as f64,
            ),
            (
                "mimo_requests_running",
                "Requests generating now (the engine is single-stream: 0 or 1).",
                self.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "mimo_tokens_per_second",
                "Decode speed of the latest request with decode steps (tokens/s, prompt step excluded).",
                f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed)),
            ),
            (
                "mimo_dflash_mean_acceptance",
                "Mean tokens committed per DFlash verify step (accepted drafts plus the bonus) since the start; 0 without a draft.",
                self.mean_acceptance(),
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        self.step_latency.render(
            &mut out,
            "mimo_step_latency_seconds",
            "Time of one decode step (one new token after the first), seen by the generation loop.",
        );
        self.time_to_first_token.render(
            &mut out,
            "mimo_time_to_first_token_seconds",
            "From the start of generation to the first new token (the prompt step).",
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A cumulative histogram with fixed bounds; the sum is kept in nanoseconds to stay exact.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound (not cumulative; summed when rendered), plus +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request_done(200);
        m.request_done(200);
        m.request_done(400);
        m.add_generated_tokens(5);
        m.set_queue_depth(3);
        m.observe_step(Duration::from_millis(3));
        m.observe_step(Duration::from_secs(9));
        let text = m.render();
        m.add_accept_lengths(&[16, 1, 4]);
        m.add_accept_lengths(&[3]);
        let after = m.render();
        for line in [
            "mimo_dflash_mean_acceptance 6",
            "mimo_dflash_verify_steps_total 4",
        ] {
            assert!(
                after.lines().any(|l| l == line),
                "missing `{line}` in\n{after}"
            );
        }
        for line in [
            "mimo_requests_total{status=\"200\"} 2",
            "mimo_requests_total{status=\"400\"} 1",
            "mimo_generated_tokens_total 5",
            "mimo_queue_depth 3",
            "mimo_dflash_mean_acceptance 0",
            "mimo_dflash_verify_steps_total 0",
            "mimo_step_latency_seconds_bucket{le=\"0.002\"} 0",
            "mimo_step_latency_seconds_bucket{le=\"0.005\"} 1",
            "mimo_step_latency_seconds_bucket{le=\"+Inf\"} 2",
            "mimo_step_latency_seconds_sum 9.003",
            "mimo_step_latency_seconds_count 2",
            "# TYPE mimo_tokens_per_second gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample `{l}`");
        }
    }
}
