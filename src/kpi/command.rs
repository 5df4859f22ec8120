//! `nova kpi`: the latest KPI snapshot of each source in the workspace.

use super::human_ns;
use serde_json::json;

use super::store;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::Workspace;

pub fn run(ws: &Workspace, out: &Output) -> Result<()> {
    let Some(db) = ws.open_store_read()?.filter(|db| db.version() >= 3) else {
        return out.text("no KPIs recorded yet\n");
    };
    let latest = store::latest(db.connection())
        .map_err(|e| Error::Failed(format!("cannot read KPI snapshots: {e}")))?;
    let mut sources = Vec::new();
    for (source, snapshot) in latest {
        let snapshot = snapshot.map_err(|e| {
            Error::Failed(format!("the KPI snapshot of {source} does not parse: {e}"))
        })?;
        sources.push((source, snapshot));
    }
    if out.json {
        let list: Vec<_> = sources
            .iter()
            .map(|(source, s)| json!({"source": source, "snapshot": s}))
            .collect();
        return out.json(&list);
    }
    if sources.is_empty() {
        return out.text("no KPIs recorded yet\n");
    }
    let mut counters = out.table(&["source", "counter", "value"]);
    let mut timings = out.table(&["source", "operation", "count", "p50", "p90", "p99", "max"]);
    for (source, s) in &sources {
        let label = format!("{source} @ {}", crate::clock::rfc3339(s.taken_at));
        for (name, value) in &s.counters {
            counters.add_row(vec![label.clone(), name.clone(), value.to_string()]);
        }
        for h in &s.histograms {
            timings.add_row(vec![
                label.clone(),
                h.name.clone(),
                h.count.to_string(),
                human_ns(h.p50_ns),
                human_ns(h.p90_ns),
                human_ns(h.p99_ns),
                human_ns(h.max_ns),
            ]);
        }
    }
    out.print_table(&timings)?;
    out.text("\n")?;
    out.print_table(&counters)
}
