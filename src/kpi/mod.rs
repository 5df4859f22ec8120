//! KPIs: counters and latency histograms named `subsystem.operation`.
//!
//! Recording is lock-free: a call site finds its metric once (the
//! [`counter!`](crate::counter) and [`timer!`](crate::timer) macros keep it in
//! a `static`), then only touches atomics. A histogram has 8 buckets per
//! power of two (values within 6.25% of their bucket), so p50, p90 and p99
//! are read off the buckets without keeping samples. [`snapshot`] reads every
//! metric; [`store`] persists snapshots and [`prometheus`] renders them.

pub mod command;
pub mod prometheus;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub struct Counter {
    name: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Exact buckets below this; log-linear buckets above.
const LINEAR: u64 = 16;
const SUB_BITS: u32 = 3;
const BUCKETS: usize = LINEAR as usize + (64 - 4) * (1 << SUB_BITS);

/// Latencies in nanoseconds.
pub struct Histogram {
    name: &'static str,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros(); // >= 4
    let sub = (v >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((octave - 4) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The middle of bucket `i`: what a percentile falling in it reports.
fn bucket_value(i: usize) -> u64 {
    if (i as u64) < LINEAR {
        return i as u64;
    }
    let i = i - LINEAR as usize;
    let octave = (i >> SUB_BITS) as u32 + 4;
    let sub = (i & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    let low = (1u64 << octave) + sub * width;
    low + width / 2
}

impl Histogram {
    fn new(name: &'static str) -> Self {
        Histogram {
            name,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(nanos, Ordering::Relaxed);
        self.max.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Record the time since `start`.
    pub fn since(&self, start: Instant) {
        self.record(start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
    }

    fn read(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let at = |p: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_value(i).min(max);
                }
            }
            max
        };
        HistogramSnapshot {
            name: self.name.to_string(),
            count: total,
            sum_ns: self.sum.load(Ordering::Relaxed),
            p50_ns: at(0.50),
            p90_ns: at(0.90),
            p99_ns: at(0.99),
            max_ns: max,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub name: String,
    pub count: u64,
    pub sum_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch.
    pub taken_at: i64,
    /// (name, value), sorted by name.
    pub counters: Vec<(String, u64)>,
    /// Sorted by name.
    pub histograms: Vec<HistogramSnapshot>,
}

#[derive(Default)]
struct Registry {
    counters: Vec<&'static Counter>,
    histograms: Vec<&'static Histogram>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The counter called `name`, created on first use. Keep the result (the
/// [`counter!`](crate::counter) macro does): this call takes a lock.
pub fn counter(name: &'static str) -> &'static Counter {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = reg.counters.iter().find(|c| c.name == name) {
        return c;
    }
    let c: &'static Counter = Box::leak(Box::new(Counter {
        name,
        value: AtomicU64::new(0),
    }));
    reg.counters.push(c);
    c
}

/// The histogram called `name`, created on first use; keep the result.
pub fn histogram(name: &'static str) -> &'static Histogram {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = reg.histograms.iter().find(|h| h.name == name) {
        return h;
    }
    let h: &'static Histogram = Box::leak(Box::new(Histogram::new(name)));
    reg.histograms.push(h);
    h
}

/// Every metric of this process, now.
pub fn snapshot() -> Snapshot {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut counters: Vec<(String, u64)> = reg
        .counters
        .iter()
        .map(|c| (c.name.to_string(), c.get()))
        .collect();
    counters.sort();
    let mut histograms: Vec<HistogramSnapshot> = reg.histograms.iter().map(|h| h.read()).collect();
    histograms.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        taken_at: crate::clock::now_ms(),
        counters,
        histograms,
    }
}

/// `counter!("queue.enqueue.errors")`: the counter, looked up once per call site.
#[macro_export]
macro_rules! counter {
    ($name:literal) => {{
        static C: ::std::sync::OnceLock<&'static $crate::kpi::Counter> =
            ::std::sync::OnceLock::new();
        *C.get_or_init(|| $crate::kpi::counter($name))
    }};
}

/// `let _t = timer!("queue.enqueue");`: records the time until the guard drops.
#[macro_export]
macro_rules! timer {
    ($name:literal) => {{
        static H: ::std::sync::OnceLock<&'static $crate::kpi::Histogram> =
            ::std::sync::OnceLock::new();
        $crate::kpi::Timer::start(*H.get_or_init(|| $crate::kpi::histogram($name)))
    }};
}

/// Records into its histogram the time from [`Timer::start`] to its drop.
pub struct Timer {
    histogram: &'static Histogram,
    start: Instant,
}

impl Timer {
    pub fn start(histogram: &'static Histogram) -> Timer {
        Timer {
            histogram,
            start: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.since(self.start);
    }
}

/// A duration in nanoseconds, in the unit that reads best.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last && b < BUCKETS, "{v} -> {b}");
            last = b;
        }
        for v in [17u64, 1000, 123_456, 10_000_000_000] {
            let mid = bucket_value(bucket_of(v));
            let err = (mid as f64 - v as f64).abs() / v as f64;
            assert!(err <= 0.0625, "{v}: bucket value {mid}");
        }
    }

    #[test]
    fn percentiles_come_from_the_buckets() {
        let h = histogram("test.percentiles");
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.read();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max_ns, 1_000_000);
        for (got, want) in [
            (s.p50_ns, 500_000.0),
            (s.p90_ns, 900_000.0),
            (s.p99_ns, 990_000.0),
        ] {
            assert!(
                (got as f64 - want).abs() / want <= 0.0625,
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn a_name_is_one_metric() {
        counter("test.same").add(2);
        counter("test.same").inc();
        assert_eq!(counter("test.same").get(), 3);
        let snap = snapshot();
        assert!(snap.counters.contains(&("test.same".to_string(), 3)));
    }
}
