//! Alert rules with hysteresis, and the webhook that carries alerts out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Sample;
use crate::config::MonitorConfig;
use crate::error::{Error, Result};

/// How far back past its threshold a value must come before an alert clears.
const MARGIN: f32 = 5.0;

/// How long `nova monitor` waits at exit for webhook deliveries in flight.
const FINISH_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    /// `cpu`, `memory`, `disk:/`, `gpu-temperature:0`.
    pub key: String,
    /// `fired` or `cleared`.
    pub state: String,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
}

pub struct Rules {
    cpu_percent: f32,
    cpu_for: Duration,
    memory_percent: f32,
    disk_free_percent: f32,
    gpu_temperature: f32,
    /// Alerts firing now.
    firing: HashMap<String, bool>,
    /// Since when CPU use has been over its threshold.
    cpu_over_since: Option<Instant>,
}

impl Rules {
    pub fn new(cfg: &MonitorConfig) -> Rules {
        Rules {
            cpu_percent: cfg.cpu_percent.unwrap_or(90.0),
            cpu_for: cfg.cpu_for.map_or(Duration::from_secs(60), |d| d.0),
            memory_percent: cfg.memory_percent.unwrap_or(95.0),
            disk_free_percent: cfg.disk_free_percent.unwrap_or(10.0),
            gpu_temperature: cfg.gpu_temperature.unwrap_or(85) as f32,
            firing: HashMap::new(),
            cpu_over_since: None,
        }
    }

    /// Fire `key` if `over` and it is not firing; clear it if `clear` and it is.
    #[allow(clippy::too_many_arguments)]
    fn edge(
        &mut self,
        out: &mut Vec<Alert>,
        key: String,
        over: bool,
        clear: bool,
        value: f32,
        threshold: f32,
        message: String,
    ) {
        let firing = self.firing.get(&key).copied().unwrap_or(false);
        let state = if over && !firing {
            "fired"
        } else if clear && firing {
            "cleared"
        } else {
            return;
        };
        self.firing.insert(key.clone(), state == "fired");
        out.push(Alert {
            key,
            state: state.into(),
            message,
            value: value as f64,
            threshold: threshold as f64,
        });
    }

    pub fn evaluate(&mut self, s: &Sample, now: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        if s.cpu_percent > self.cpu_percent {
            self.cpu_over_since.get_or_insert(now);
        } else {
            self.cpu_over_since = None;
        }
        let cpu_held = self
            .cpu_over_since
            .is_some_and(|since| now.duration_since(since) >= self.cpu_for);
        let (cpu, t) = (s.cpu_percent, self.cpu_percent);
        self.edge(
            &mut out,
            "cpu".into(),
            cpu_held,
            cpu < t - MARGIN,
            cpu,
            t,
            format!(
                "CPU at {cpu:.0}%, over {t:.0}% for {}",
                humantime::format_duration(self.cpu_for)
            ),
        );
        let (mem, t) = (s.memory_percent, self.memory_percent);
        self.edge(
            &mut out,
            "memory".into(),
            mem > t,
            mem < t - MARGIN,
            mem,
            t,
            format!("memory {mem:.0}% used, over {t:.0}%"),
        );
        for d in &s.disks {
            let (free, t) = (d.free_percent, self.disk_free_percent);
            self.edge(
                &mut out,
                format!("disk:{}", d.mount),
                free < t,
                free > t + MARGIN.min(t.max(1.0)),
                free,
                t,
                format!("{} has {free:.1}% free, under {t:.0}%", d.mount),
            );
        }
        for g in &s.gpus {
            let Some(temp) = g.temperature else { continue };
            let (temp, t) = (temp as f32, self.gpu_temperature);
            self.edge(
                &mut out,
                format!("gpu-temperature:{}", g.index),
                temp > t,
                temp < t - MARGIN,
                temp,
                t,
                format!("GPU {} at {temp:.0} °C, over {t:.0} °C", g.index),
            );
        }
        out
    }
}

/// POSTs alerts as JSON in the background, retrying with backoff.
pub struct Webhook {
    target: Option<(reqwest::Client, String)>,
    sending: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Webhook {
    pub fn new(url: Option<&str>) -> Result<Webhook> {
        let target = match url {
            None => None,
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| Error::usage(format!("nova.yaml monitor.webhook {url:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(Error::usage(format!(
                        "nova.yaml monitor.webhook {url:?}: expected http:// or https://"
                    )));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| Error::Failed(format!("cannot build the HTTP client: {e}")))?;
                Some((client, url.to_string()))
            }
        };
        Ok(Webhook {
            target,
            sending: Default::default(),
        })
    }

    pub fn send(&self, alert: &Alert) {
        let Some((client, url)) = &self.target else {
            return;
        };
        let (client, url, alert) = (client.clone(), url.clone(), alert.clone());
        let mut sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        while sending.try_join_next().is_some() {}
        sending.spawn(async move {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=4 {
                match client.post(&url).json(&alert).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), attempt, "the alert webhook refused")
                    }
                    Err(e) => tracing::warn!(error = %e, attempt, "the alert webhook failed"),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        });
    }

    /// Give the deliveries in flight a few seconds to finish; a webhook that
    /// is down must not hold up the exit for its whole retry schedule.
    pub async fn finish(&self) {
        let mut set = std::mem::take(&mut *self.sending.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + FINISH_GRACE;
        while !set.is_empty() {
            if tokio::time::timeout_at(deadline, set.join_next())
                .await
                .is_err()
            {
                tracing::warn!(
                    undelivered = set.len(),
                    "gave up on alerts the webhook had not accepted"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: f32, disk_free: f32) -> Sample {
        Sample {
            at: 0,
            cpu_percent: cpu,
            load: [0.0; 3],
            memory_used: 1,
            memory_total: 100,
            memory_percent: 1.0,
            swap_used: 0,
            swap_total: 0,
            disks: vec![super::super::DiskSample {
                mount: "/".into(),
                free: 0,
                total: 100,
                free_percent: disk_free,
            }],
            net_rx_bytes_per_second: 0.0,
            net_tx_bytes_per_second: 0.0,
            gpus: vec![],
            gpu_note: None,
        }
    }

    #[test]
    fn an_alert_fires_once_and_clears_once() {
        let cfg = MonitorConfig {
            cpu_for: Some(crate::yaml::HumanDuration(Duration::from_secs(60))),
            ..Default::default()
        };
        let mut rules = Rules::new(&cfg);
        let t0 = Instant::now();
        assert!(
            rules.evaluate(&sample(95.0, 50.0), t0).is_empty(),
            "not yet a minute"
        );
        let fired = rules.evaluate(&sample(97.0, 50.0), t0 + Duration::from_secs(61));
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].key.as_str(), fired[0].state.as_str()),
            ("cpu", "fired")
        );
        assert!(
            rules
                .evaluate(&sample(99.0, 50.0), t0 + Duration::from_secs(70))
                .is_empty(),
            "once"
        );
        assert!(
            rules
                .evaluate(&sample(88.0, 50.0), t0 + Duration::from_secs(80))
                .is_empty(),
            "within the margin"
        );
        let cleared = rules.evaluate(&sample(40.0, 50.0), t0 + Duration::from_secs(90));
        assert_eq!(cleared[0].state, "cleared");
        assert!(
            rules
                .evaluate(&sample(40.0, 50.0), t0 + Duration::from_secs(95))
                .is_empty()
        );

        let low = rules.evaluate(&sample(0.0, 5.0), t0 + Duration::from_secs(100));
        assert_eq!(
            (low[0].key.as_str(), low[0].state.as_str()),
            ("disk:/", "fired")
        );
        assert!(
            rules
                .evaluate(&sample(0.0, 11.0), t0 + Duration::from_secs(101))
                .is_empty(),
            "margin"
        );
        assert_eq!(
            rules.evaluate(&sample(0.0, 30.0), t0 + Duration::from_secs(102))[0].state,
            "cleared"
        );
    }
}
