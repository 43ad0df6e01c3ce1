//! The timed loop every run shares: each worker repeats its step until the
//! time is up; latencies go into one HDR histogram per worker, merged at the
//! end into one JSON line.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// One step's result: whether it succeeded, and whether it was a read
/// (in a mixed load, reads' latencies are also reported on their own).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ok: bool,
    pub read: bool,
}

impl From<bool> for Sample {
    fn from(ok: bool) -> Self {
        Self { ok, read: false }
    }
}

/// What a run measured.
pub struct Outcome {
    pub hist: Histogram<u64>,
    /// The reads among them.
    pub reads: Histogram<u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The figures of the run as JSON members (milliseconds, 2 decimals).
    pub fn figures(&self) -> serde_json::Map<String, Value> {
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        let h = &self.hist;
        let v = json!({
            "requests": h.len(),
            "rps": (self.rps() * 10.0).round() / 10.0,
            "p50_ms": ms(h.value_at_quantile(0.50)),
            "p90_ms": ms(h.value_at_quantile(0.90)),
            "p99_ms": ms(h.value_at_quantile(0.99)),
            "max_ms": ms(h.max()),
            "errors": self.errors,
        });
        let mut m = match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if !self.reads.is_empty() && self.reads.len() < h.len() {
            m.insert("read_p99_ms".into(), json!(ms(self.reads.value_at_quantile(0.99))));
        }
        m
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("a histogram"))
}

/// Runs every step over and over for `secs` (after `warmup`, not counted).
/// A step answers whether it succeeded; failures count as errors and are
/// not timed.
pub async fn measure<S, F, O>(steps: Vec<S>, warmup: Duration, secs: Duration) -> anyhow::Result<Outcome>
where
    S: FnMut() -> F + Send + 'static,
    F: Future<Output = O> + Send,
    O: Into<Sample>,
{
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = steps
        .into_iter()
        .map(|mut step| {
            let (counting, stop) = (counting.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut hist, mut reads, mut errors) = (histogram(), histogram(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let sample: Sample = step().await.into();
                    if counting.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        if sample.ok {
                            let us = t.elapsed().as_micros().max(1) as u64;
                            hist.saturating_record(us);
                            if sample.read {
                                reads.saturating_record(us);
                            }
                        } else {
                            errors += 1;
                        }
                    }
                }
                (hist, reads, errors)
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let (mut hist, mut reads, mut errors) = (histogram(), histogram(), 0);
    for t in tasks {
        let (h, r, e) = t.await?;
        hist.add(&h).map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
        reads.add(&r).map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
        errors += e;
    }
    Ok(Outcome { hist, reads, errors, elapsed })
}

/// The peak resident size of a process while a future runs, sampled every
/// 50 ms from /proc (Linux), in MiB.
pub async fn with_peak_rss<T>(pid: Option<u32>, work: impl Future<Output = T>) -> (T, Option<f64>) {
    let Some(pid) = pid else {
        return (work.await, None);
    };
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let out = work.await;
    sampler.abort();
    if let Some(kib) = rss_kib(pid) {
        peak.fetch_max(kib, Ordering::Relaxed);
    }
    let kib = peak.load(Ordering::Relaxed);
    (out, (kib > 0).then(|| (kib as f64 / 1024.0 * 10.0).round() / 10.0))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
