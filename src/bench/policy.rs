//! `nova bench policy`: how long an embedded policy decision takes, evaluated
//! afresh and answered from the decision cache.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::cli::BenchPolicyArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::policy::{self, Evaluator};
use crate::workspace::Workspace;

#[derive(Debug, Serialize)]
struct Row {
    path: &'static str,
    decisions: u64,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn row(path: &'static str, mut micros: Vec<f64>, total_secs: f64) -> Row {
    micros.sort_by(f64::total_cmp);
    let pick = |p: f64| super::pick(&micros, p).unwrap_or(0.0);
    Row {
        path,
        decisions: micros.len() as u64,
        per_second: micros.len() as f64 / total_secs.max(1e-9),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        max_us: *micros.last().unwrap_or(&0.0),
    }
}

pub fn run(ws: &Workspace, out: &Output, args: &BenchPolicyArgs) -> Result<()> {
    let mut local = ws.clone();
    local.opa.url = None;
    local.config.opa_url = None;
    let policy = policy::open(&local)?;
    let Evaluator::Embedded(embedded) = policy.evaluator().clone() else {
        return Err(Error::Failed("the embedded evaluator did not load".into()));
    };
    let roles = [
        "operator",
        "infrastructure",
        "implementation",
        "security",
        "stranger",
    ];
    let actions = ["run", "install", "enqueue", "serve"];
    let inputs: Vec<_> = roles
        .iter()
        .flat_map(|r| {
            actions
                .iter()
                .map(move |a| policy::input("bench", r, a, "tree", json!({"as_root": false})))
        })
        .collect();

    let mut fresh = Vec::with_capacity(args.decisions as usize);
    let start = Instant::now();
    for i in 0..args.decisions {
        let t = Instant::now();
        std::hint::black_box(embedded.decide(&inputs[i as usize % inputs.len()]));
        fresh.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let fresh_secs = start.elapsed().as_secs_f64();

    let rt = crate::runtime::runtime()?;
    let cached = rt.block_on(async {
        for input in &inputs {
            policy.decide(input).await; // fill the cache
        }
        let mut cached = Vec::with_capacity(args.decisions as usize);
        let start = Instant::now();
        for i in 0..args.decisions {
            let t = Instant::now();
            std::hint::black_box(policy.decide(&inputs[i as usize % inputs.len()]).await);
            cached.push(t.elapsed().as_secs_f64() * 1e6);
        }
        (cached, start.elapsed().as_secs_f64())
    });
    let rows = vec![
        row("embedded, evaluated", fresh, fresh_secs),
        row("embedded, cached", cached.0, cached.1),
    ];
    if out.json {
        return out.json(&rows);
    }
    let mut table = out.table(&[
        "path",
        "decisions",
        "per second",
        "p50 us",
        "p99 us",
        "max us",
    ]);
    for r in &rows {
        table.add_row(vec![
            r.path.to_string(),
            r.decisions.to_string(),
            format!("{:.0}", r.per_second),
            format!("{:.1}", r.p50_us),
            format!("{:.1}", r.p99_us),
            format!("{:.1}", r.max_us),
        ]);
    }
    out.print_table(&table)
}
