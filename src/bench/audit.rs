//! `nova bench audit`: how fast records are appended to the audit chain (each
//! append is its own durable transaction, as in real use). Several of these
//! processes run at once on one `--db` is also how the tests check that
//! concurrent writers keep one chain.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::audit::{AuditLog, Event};
use crate::cli::BenchAuditArgs;
use crate::error::{Error, Result};
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Report {
    store: String,
    records: u64,
    seconds: f64,
    appends_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn run(out: &Output, args: &BenchAuditArgs) -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let rt = crate::runtime::runtime()?;
    let report = rt.block_on(async {
        let (log, store) = match (&args.db, &args.redis) {
            (_, Some(url)) => (
                AuditLog::redis(url)
                    .await
                    .map_err(|e| Error::Failed(e.to_string()))?,
                url.clone(),
            ),
            (Some(db), None) => (
                AuditLog::sqlite(db).map_err(|e| Error::Failed(e.to_string()))?,
                format!("sqlite:{}", db.display()),
            ),
            (None, None) => {
                let db = tmp.path().join("audit.db");
                (
                    AuditLog::sqlite(&db).map_err(|e| Error::Failed(e.to_string()))?,
                    "sqlite (temporary file, durable)".to_string(),
                )
            }
        };
        let mut latencies = Vec::with_capacity(args.records as usize);
        let start = Instant::now();
        let pid = std::process::id();
        for i in 0..args.records {
            let t = Instant::now();
            log.append(
                Event::new(
                    format!("bench:{pid}"),
                    "bench.append",
                    format!("record {i}"),
                    "ok",
                )
                .details(json!({"i": i, "pid": pid})),
            )
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let seconds = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let pick = |p: f64| super::pick(&latencies, p).unwrap_or(0.0);
        Ok::<_, Error>(Report {
            store,
            records: args.records,
            seconds,
            appends_per_second: args.records as f64 / seconds.max(1e-9),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
        })
    })?;
    if out.json {
        return out.json(&report);
    }
    out.text(&format!(
        "audit appends: {} records to {} in {:.2} s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms\n",
        report.records,
        report.store,
        report.seconds,
        report.appends_per_second,
        report.p50_ms,
        report.p99_ms
    ))
}
