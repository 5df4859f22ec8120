//! The Prometheus page of a queue server (`/metrics`): this process's KPIs,
//! the host's figures and the queue's depth, rendered at each scrape.

use super::any::AnyQueue;

/// The host figures of `nova monitor`, as gauges.
fn host_gauges(text: &mut String, s: &crate::monitor::Sample) {
    use crate::kpi::prometheus::gauge;
    gauge(
        text,
        "host.cpu_percent",
        "CPU use since the last scrape.",
        &[(vec![], s.cpu_percent as f64)],
    );
    gauge(
        text,
        "host.load1",
        "Load average over a minute.",
        &[(vec![], s.load[0])],
    );
    gauge(
        text,
        "host.memory_used_bytes",
        "Memory in use.",
        &[(vec![], s.memory_used as f64)],
    );
    gauge(
        text,
        "host.memory_total_bytes",
        "Memory installed.",
        &[(vec![], s.memory_total as f64)],
    );
    let disks: Vec<_> = s
        .disks
        .iter()
        .map(|d| (vec![("mount", d.mount.as_str())], d.free as f64))
        .collect();
    gauge(
        text,
        "host.disk_free_bytes",
        "Free space per mounted file system.",
        &disks,
    );
    gauge(
        text,
        "host.net_rx_bytes_per_second",
        "Bytes received per second.",
        &[(vec![], s.net_rx_bytes_per_second)],
    );
    gauge(
        text,
        "host.net_tx_bytes_per_second",
        "Bytes sent per second.",
        &[(vec![], s.net_tx_bytes_per_second)],
    );
    if s.gpus.is_empty() {
        return;
    }
    let idx: Vec<String> = s.gpus.iter().map(|g| g.index.to_string()).collect();
    let per =
        |f: &dyn Fn(&crate::monitor::GpuSample) -> Option<f64>| -> Vec<(Vec<(&str, &str)>, f64)> {
            s.gpus
                .iter()
                .zip(&idx)
                .filter_map(|(g, i)| f(g).map(|v| (vec![("gpu", i.as_str())], v)))
                .collect()
        };
    gauge(
        text,
        "gpu.utilization_percent",
        "GPU busy time.",
        &per(&|g| g.utilization.map(f64::from)),
    );
    gauge(
        text,
        "gpu.memory_used_bytes",
        "GPU memory in use.",
        &per(&|g| Some(g.memory_used as f64)),
    );
    gauge(
        text,
        "gpu.temperature_celsius",
        "GPU temperature.",
        &per(&|g| g.temperature.map(f64::from)),
    );
    gauge(
        text,
        "gpu.power_watts",
        "GPU power draw.",
        &per(&|g| g.power),
    );
}

/// The `/metrics` page: this process's KPIs and the queue's depth now.
pub fn page(
    backend: AnyQueue,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    use crate::kpi::prometheus;
    let sampler = std::sync::Arc::new(tokio::sync::Mutex::new(crate::monitor::Sampler::new().ok()));
    move || {
        let backend = backend.clone();
        let sampler = sampler.clone();
        Box::pin(async move {
            let mut text = prometheus::render(&crate::kpi::snapshot());
            if let Some(s) = sampler.lock().await.as_mut() {
                host_gauges(&mut text, &s.sample());
            }
            match crate::queue::backend::QueueBackend::stats(&backend, super::model::now_ms()).await
            {
                Ok(stats) => {
                    let samples: Vec<_> = stats
                        .counts
                        .iter()
                        .map(|(q, st, n)| {
                            (
                                vec![("queue", q.as_str()), ("status", st.as_str())],
                                *n as f64,
                            )
                        })
                        .collect();
                    prometheus::gauge(
                        &mut text,
                        "queue.tasks",
                        "Tasks by queue and status.",
                        &samples,
                    );
                    prometheus::gauge(
                        &mut text,
                        "queue.oldest_pending_age_seconds",
                        "Age of the oldest due pending task.",
                        &[(vec![], stats.oldest_pending_age_ms as f64 / 1000.0)],
                    );
                    prometheus::gauge(
                        &mut text,
                        "queue.leases_in_flight",
                        "Tasks held by a live lease.",
                        &[(vec![], stats.in_flight_leases as f64)],
                    );
                }
                Err(e) => tracing::warn!(error = %e, "queue stats for /metrics failed"),
            }
            text
        })
    }
}
