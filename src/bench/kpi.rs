//! `nova bench kpi`: what recording a KPI costs a hot path, per call, from
//! one thread and from several at once on the same metric (the contended case).

use std::time::Instant;

use serde::Serialize;

use crate::cli::BenchKpiArgs;
use crate::error::Result;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Row {
    operation: &'static str,
    threads: u32,
    calls_per_thread: u64,
    ns_per_call: f64,
}

fn measure(operation: &'static str, threads: u32, calls: u64, f: fn()) -> Row {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..calls {
                    f();
                }
            });
        }
    });
    Row {
        operation,
        threads,
        calls_per_thread: calls,
        // Wall time over the calls one thread made: the cost each caller sees.
        ns_per_call: start.elapsed().as_nanos() as f64 / calls as f64,
    }
}

pub fn run(out: &Output, args: &BenchKpiArgs) -> Result<()> {
    let mut rows = Vec::new();
    for threads in [1, args.threads] {
        rows.push(measure("counter.inc", threads, args.calls, || {
            crate::counter!("bench.counter").inc()
        }));
        rows.push(measure("histogram.record", threads, args.calls, || {
            static H: std::sync::OnceLock<&'static crate::kpi::Histogram> =
                std::sync::OnceLock::new();
            H.get_or_init(|| crate::kpi::histogram("bench.histogram"))
                .record(std::hint::black_box(12_345));
        }));
        rows.push(measure(
            "timer (clock + record)",
            threads,
            args.calls,
            || {
                let _t = crate::timer!("bench.timer");
            },
        ));
    }
    if out.json {
        return out.json(&rows);
    }
    let mut table = out.table(&["operation", "threads", "calls/thread", "ns/call"]);
    for r in &rows {
        table.add_row(vec![
            r.operation.to_string(),
            r.threads.to_string(),
            r.calls_per_thread.to_string(),
            format!("{:.1}", r.ns_per_call),
        ]);
    }
    out.print_table(&table)
}
