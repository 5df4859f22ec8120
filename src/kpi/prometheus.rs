//! KPIs in the Prometheus text exposition format (version 0.0.4): counters as
//! `nova_<name>_total`, histograms as summaries `nova_<name>_seconds` with
//! the 0.5, 0.9 and 0.99 quantiles, `_sum`, `_count`, and a `_max` gauge.

use std::fmt::Write;

use super::Snapshot;

/// `queue.grpc.enqueue` → `nova_queue_grpc_enqueue`.
fn metric_name(name: &str) -> String {
    let mut out = String::from("nova_");
    for c in name.chars() {
        out.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    out
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (name, value) in &snapshot.counters {
        let m = metric_name(name);
        let _ = writeln!(out, "# TYPE {m}_total counter\n{m}_total {value}");
    }
    for h in &snapshot.histograms {
        let m = format!("{}_seconds", metric_name(&h.name));
        let _ = writeln!(out, "# TYPE {m} summary");
        for (q, v) in [("0.5", h.p50_ns), ("0.9", h.p90_ns), ("0.99", h.p99_ns)] {
            let _ = writeln!(out, "{m}{{quantile=\"{q}\"}} {}", seconds(v));
        }
        let _ = writeln!(out, "{m}_sum {}\n{m}_count {}", seconds(h.sum_ns), h.count);
        let _ = writeln!(out, "# TYPE {m}_max gauge\n{m}_max {}", seconds(h.max_ns));
    }
    out
}

/// A gauge with labels, for figures read when scraped (queue depth, say).
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(Vec<(&str, &str)>, f64)]) {
    let m = metric_name(name);
    let _ = writeln!(out, "# HELP {m} {help}\n# TYPE {m} gauge");
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{m} {value}");
        } else {
            let _ = writeln!(out, "{m}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Serve `GET /metrics` on `listener` until `shutdown`; `render` makes the
/// body for each scrape.
pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    render: F,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render().await,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kpi::HistogramSnapshot;

    #[test]
    fn renders_counters_and_summaries() {
        let snap = Snapshot {
            taken_at: 0,
            counters: vec![("queue.enqueued".into(), 7)],
            histograms: vec![HistogramSnapshot {
                name: "queue.grpc.ack".into(),
                count: 2,
                sum_ns: 3_000_000,
                p50_ns: 1_000_000,
                p90_ns: 2_000_000,
                p99_ns: 2_000_000,
                max_ns: 2_000_000,
            }],
        };
        let text = render(&snap);
        assert!(
            text.contains(
                "# TYPE nova_queue_enqueued_total counter\nnova_queue_enqueued_total 7\n"
            )
        );
        assert!(text.contains("nova_queue_grpc_ack_seconds{quantile=\"0.5\"} 0.001\n"));
        assert!(text.contains("nova_queue_grpc_ack_seconds_count 2\n"));
        assert!(text.contains("nova_queue_grpc_ack_seconds_max 0.002\n"));
        let mut g = String::new();
        gauge(
            &mut g,
            "queue.tasks",
            "Tasks",
            &[(vec![("queue", "a\"b")], 3.0)],
        );
        assert!(g.contains("nova_queue_tasks{queue=\"a\\\"b\"} 3\n"), "{g}");
    }
}
