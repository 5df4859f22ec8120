//! `nova monitor`: sample the host every interval, raise alerts past the
//! thresholds, keep a bounded history.
//!
//! A sample holds CPU use and load, memory and swap, free space per disk,
//! network throughput, and per GPU (NVML) utilisation, memory, temperature
//! and power. Alerts have hysteresis: one fires once when its condition
//! starts to hold, and clears once when it has clearly stopped (a margin
//! below the threshold), so a value wavering at the line does not flap.
//! Alerts go to the log, the audit log and, if set, a webhook (POSTed in the
//! background with retries, never holding up sampling).

pub mod alerts;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::audit::Event;
use crate::audit::workspace_log;
use crate::cli::MonitorArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::Workspace;

pub const DEFAULT_HISTORY: u32 = 10_000;
/// The shortest interval between samples.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct DiskSample {
    pub mount: String,
    pub free: u64,
    pub total: u64,
    pub free_percent: f32,
}

/// One GPU's figures in a sample.
pub type GpuSample = crate::gpu::Reading;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub cpu_percent: f32,
    pub load: [f64; 3],
    pub memory_used: u64,
    pub memory_total: u64,
    pub memory_percent: f32,
    pub swap_used: u64,
    pub swap_total: u64,
    pub disks: Vec<DiskSample>,
    pub net_rx_bytes_per_second: f64,
    pub net_tx_bytes_per_second: f64,
    pub gpus: Vec<GpuSample>,
    /// Why there are no GPU figures, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
}

pub struct Sampler {
    sys: sysinfo::System,
    disks: sysinfo::Disks,
    nets: sysinfo::Networks,
    last: Instant,
    /// Whether samples ask NVML for GPU figures.
    gpus: bool,
}

impl Sampler {
    pub fn new() -> Result<Sampler> {
        let fail =
            |e: sysinfo::Error| Error::Failed(format!("cannot read the host's figures: {e}"));
        let mut sys = sysinfo::System::new().map_err(fail)?;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        Ok(Sampler {
            sys,
            disks: sysinfo::Disks::new_with_refreshed_list().map_err(fail)?,
            nets: sysinfo::Networks::new_with_refreshed_list().map_err(fail)?,
            last: Instant::now(),
            gpus: true,
        })
    }

    /// The same sampler without GPU figures (to measure what NVML costs).
    pub fn without_gpus(mut self) -> Sampler {
        self.gpus = false;
        self
    }

    /// A sample of now. CPU use and throughput are measured since the last
    /// sample (or since [`Sampler::new`]), so the first needs a moment between.
    pub fn sample(&mut self) -> Sample {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        self.nets.refresh(true);
        let elapsed = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let load = sysinfo::System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let (rx, tx) = self
            .nets
            .iter()
            .filter(|(name, _)| name.as_os_str() != "lo")
            .fold((0u64, 0u64), |(r, t), (_, n)| {
                (r + n.received(), t + n.transmitted())
            });
        let mut seen = std::collections::HashSet::new();
        let disks = self
            .disks
            .iter()
            .filter(|d| d.total_space() > 0 && seen.insert(d.name().to_os_string()))
            .map(|d| DiskSample {
                mount: d.mount_point().display().to_string(),
                free: d.available_space(),
                total: d.total_space(),
                free_percent: d.available_space() as f32 * 100.0 / d.total_space() as f32,
            })
            .collect();
        let (gpus, gpu_note) = if !self.gpus {
            (Vec::new(), Some("GPU sampling is off".to_string()))
        } else {
            match crate::gpu::readings() {
                Ok(gpus) => (gpus, None),
                Err(why) => (Vec::new(), Some(why.to_string())),
            }
        };
        let total = self.sys.total_memory();
        let used = self.sys.used_memory();
        Sample {
            at: crate::clock::now_ms(),
            cpu_percent: self.sys.global_cpu_usage(),
            load: [load.one, load.five, load.fifteen],
            memory_used: used,
            memory_total: total,
            memory_percent: if total == 0 {
                0.0
            } else {
                used as f32 * 100.0 / total as f32
            },
            swap_used: self.sys.used_swap(),
            swap_total: self.sys.total_swap(),
            disks,
            net_rx_bytes_per_second: rx as f64 / elapsed,
            net_tx_bytes_per_second: tx as f64 / elapsed,
            gpus,
            gpu_note,
        }
    }
}

fn print_sample(out: &Output, s: &Sample, fired: &[alerts::Alert]) -> Result<()> {
    if out.json {
        let mut v = serde_json::to_value(s).expect("a sample serializes");
        v["alerts"] = serde_json::to_value(fired).expect("alerts serialize");
        return out.json_line(&v);
    }
    let size = |b: u64| bytesize::ByteSize(b).to_string();
    let mut text = String::new();
    if out.is_terminal() {
        text.push_str("\x1b[H\x1b[2J");
    }
    text.push_str(&format!(
        "{}  cpu {:.1}%  load {:.2} {:.2} {:.2}  memory {} of {} ({:.1}%)  swap {} of {}  net rx {}/s tx {}/s\n",
        crate::clock::rfc3339(s.at),
        s.cpu_percent,
        s.load[0],
        s.load[1],
        s.load[2],
        size(s.memory_used),
        size(s.memory_total),
        s.memory_percent,
        size(s.swap_used),
        size(s.swap_total),
        size(s.net_rx_bytes_per_second as u64),
        size(s.net_tx_bytes_per_second as u64),
    ));
    let mut disks = out.table(&["disk", "free", "total", "free %"]);
    for d in &s.disks {
        disks.add_row(vec![
            d.mount.clone(),
            size(d.free),
            size(d.total),
            format!("{:.1}", d.free_percent),
        ]);
    }
    text.push_str(&disks.trim_fmt());
    text.push('\n');
    if s.gpus.is_empty() {
        text.push_str(&format!(
            "gpu: {}\n",
            s.gpu_note.as_deref().unwrap_or("none")
        ));
    } else {
        let mut g = out.table(&["gpu", "name", "busy", "memory", "temperature", "power"]);
        for d in &s.gpus {
            g.add_row(vec![
                d.index.to_string(),
                d.name.clone(),
                d.utilization.map_or("?".into(), |u| format!("{u}%")),
                format!("{} / {}", size(d.memory_used), size(d.memory_total)),
                d.temperature.map_or("?".into(), |t| format!("{t} °C")),
                d.power.map_or("?".into(), |p| format!("{p:.0} W")),
            ]);
        }
        text.push_str(&g.trim_fmt());
        text.push('\n');
    }
    for a in fired {
        text.push_str(&format!("alert {}: {} ({})\n", a.state, a.key, a.message));
    }
    out.text(&text)
}

pub fn run(ws: &Workspace, out: &Output, args: &MonitorArgs) -> Result<()> {
    if args.interval < MIN_INTERVAL {
        return Err(Error::usage("--interval: at least 200ms"));
    }
    let cfg = ws.config.monitor.clone();
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let audit = workspace_log(ws, &args.store.choice(), true).await?;
        let writer = crate::store::writer::Writer::shared(&ws.db_path())?;
        let webhook = alerts::Webhook::new(cfg.webhook.as_deref())?;
        let mut rules = alerts::Rules::new(&cfg);
        let mut sampler = Sampler::new()?;
        let keep = cfg.history.unwrap_or(DEFAULT_HISTORY).max(1) as i64;
        let deadline = args.duration.map(|d| Instant::now() + d);
        // The first CPU figure needs a span to measure over.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut tick = tokio::time::interval(args.interval);
        tick.tick().await;
        let signal = crate::runtime::signal();
        tokio::pin!(signal);
        let mut last_active: HashMap<String, bool> = HashMap::new();
        loop {
            let sample = sampler.sample();
            let fired = rules.evaluate(&sample, Instant::now());
            tracing::info!(target: "nova::monitor", sample = %serde_json::to_string(&sample).unwrap_or_default(), "host sample");
            for a in &fired {
                last_active.insert(a.key.clone(), a.state == "fired");
                tracing::warn!(alert = %a.key, state = %a.state, message = %a.message, "monitor alert");
                if let Some(log) = &audit {
                    crate::audit::record(
                        log,
                        Event::new("monitor", "monitor.alert", a.key.clone(), a.state.clone())
                            .details(json!({"message": a.message, "value": a.value, "threshold": a.threshold})),
                    )
                    .await;
                }
                webhook.send(a);
            }
            let body = serde_json::to_string(&sample).expect("a sample serializes");
            let at = sample.at;
            let stored = writer
                .write(
                    move |conn| {
                        conn.execute(
                            "INSERT INTO monitor_samples (at, sample) VALUES (?1, ?2)",
                            rusqlite::params![at, body],
                        )
                        .and_then(|_| {
                            conn.execute(
                                "DELETE FROM monitor_samples WHERE seq <= (SELECT MAX(seq) FROM monitor_samples) - ?1",
                                [keep],
                            )
                        })
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                    },
                    |e: String| e,
                )
                .await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not keep the sample");
            }
            print_sample(out, &sample, &fired)?;
            if args.once || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut signal => break,
            }
        }
        webhook.finish().await;
        Ok(())
    })
}
