//! Live updates: one watcher per server notices what changed and tells every
//! open page over server-sent events, so pages never poll.
//!
//! The watcher works only while a page listens. Every [`TICK`] it asks the
//! workspace database whether anyone committed since it last looked
//! (`PRAGMA data_version`, one cheap call) and only then compares small
//! fingerprints of the runs, of each live run's tasks and messages, and of
//! the audit log. Queue depths come from the backend (either store) and are
//! sent only when they change; a host sample is taken every [`HOST_EVERY`].
//! Events name what changed (`runs`, `run` with its id, `audit`) or carry
//! the new figures (`queue`, `host`); a page refetches only what it shows.
//! Queue throughput and latency points are kept whether or not anyone
//! watches. Latency comes from this process's counters; throughput is the
//! higher of what this process applied and what the store's counts moved
//! by, so runs in other processes on the same store (each run that
//! `nova dashboard` starts is one) and other servers on a shared Redis show
//! up too. Both are lower bounds: retention purging finished tasks hides
//! some of the store's movement.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::Stream;

use super::AppState;
use super::api::{KpiPoint, QueueDepth, depths};
use crate::queue::backend::QueueBackend;
use crate::queue::model::now_ms;

pub const TICK: Duration = Duration::from_millis(500);
pub const HOST_EVERY: Duration = Duration::from_secs(2);
pub const KPI_EVERY: Duration = Duration::from_secs(5);
/// Points kept: 10 minutes of host samples, an hour of KPI points.
const HOST_KEPT: usize = 300;
const KPI_KEPT: usize = 720;

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub topic: &'static str,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

pub struct Live {
    tx: broadcast::Sender<Change>,
    host: Mutex<VecDeque<Value>>,
    sampler: Mutex<Option<crate::monitor::Sampler>>,
    kpis: Mutex<VecDeque<KpiPoint>>,
    /// Set by control routes: look now rather than at the next tick.
    nudge: tokio::sync::Notify,
    /// Set when the server stops: event streams end.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tx: broadcast::channel(256).0,
            host: Mutex::new(VecDeque::new()),
            sampler: Mutex::new(None),
            kpis: Mutex::new(VecDeque::new()),
            nudge: tokio::sync::Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Live {
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// End every event stream (the server is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn host_samples(&self) -> Vec<Value> {
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn kpi_series(&self) -> Vec<KpiPoint> {
        self.kpis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Take a host sample now (off the async threads) and keep it.
    async fn sample_host(&self) -> Option<Value> {
        let mut sampler = self
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (sampler, sample) = tokio::task::spawn_blocking(move || {
            if sampler.is_none() {
                sampler = crate::monitor::Sampler::new().ok();
            }
            let sample = sampler
                .as_mut()
                .map(|s| serde_json::to_value(s.sample()).unwrap_or(Value::Null));
            (sampler, sample)
        })
        .await
        .ok()?;
        *self.sampler.lock().unwrap_or_else(|p| p.into_inner()) = sampler;
        let sample = sample?;
        let mut host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        host.push_back(sample.clone());
        while host.len() > HOST_KEPT {
            host.pop_front();
        }
        Some(sample)
    }

    /// A page opening the host view sees a figure at once, not after the first tick.
    pub async fn ensure_host_sample(&self) {
        if self
            .host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            self.sample_host().await;
        }
    }

    fn send(&self, topic: &'static str, data: Value) {
        crate::counter!("http.events.sent").add(self.tx.receiver_count() as u64);
        let _ = self.tx.send(Change { topic, data });
    }
}

/// What the database looked like at the last look.
#[derive(Default)]
struct Seen {
    data_version: Option<i64>,
    runs: Option<(i64, i64, i64, i64)>,
    run_tasks: HashMap<String, (i64, i64, i64, i64, i64)>,
    audit: Option<i64>,
    queue: Option<(Vec<QueueDepth>, u64)>,
}

/// Watch for changes until the server stops.
pub async fn watch(state: AppState) {
    let mut seen = Seen::default();
    let mut conn: Option<rusqlite::Connection> = None;
    let mut last_host = Instant::now() - HOST_EVERY;
    let mut last_kpi: Option<KpiMark> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.live.nudge.notified() => {}
        }
        if last_kpi
            .as_ref()
            .is_none_or(|mark| mark.at.elapsed() >= KPI_EVERY)
        {
            let totals = state
                .queue
                .stats(now_ms())
                .await
                .ok()
                .map(|s| StoreTotals::of(&s));
            last_kpi = Some(kpi_point(&state.live, last_kpi.take(), totals));
        }
        if state.live.watchers() == 0 {
            continue;
        }
        let db = state.ws.db_path();
        let (back, changes) = tokio::task::spawn_blocking(move || {
            let mut conn = conn.or_else(|| open(&db));
            let changes = match conn.as_ref() {
                Some(c) => db_changes(c, &mut seen).map(|ch| (ch, seen)),
                None => Ok((Vec::new(), seen)),
            };
            if changes.is_err() {
                conn = None;
            }
            (conn, changes)
        })
        .await
        .unwrap_or((None, Ok((Vec::new(), Seen::default()))));
        conn = back;
        match changes {
            Ok((list, s)) => {
                seen = s;
                for (topic, data) in list {
                    state.live.send(topic, data);
                }
            }
            Err(_) => seen = Seen::default(),
        }
        if let Ok(stats) = state.queue.stats(now_ms()).await {
            let now = (depths(&stats), stats.in_flight_leases);
            if seen.queue.as_ref() != Some(&now) {
                state.live.send(
                    "queue",
                    json!({"queues": now.0, "in_flight_leases": now.1,
                           "oldest_pending_age_ms": stats.oldest_pending_age_ms}),
                );
                seen.queue = Some(now);
            }
        }
        if last_host.elapsed() >= HOST_EVERY {
            last_host = Instant::now();
            if let Some(sample) = state.live.sample_host().await {
                state.live.send("host", sample);
            }
        }
    }
}

fn open(db: &std::path::Path) -> Option<rusqlite::Connection> {
    if !db.is_file() {
        return None;
    }
    rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()
}

/// What changed in the database since `seen`, as events.
fn db_changes(
    conn: &rusqlite::Connection,
    seen: &mut Seen,
) -> rusqlite::Result<Vec<(&'static str, Value)>> {
    let version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if seen.data_version == Some(version) {
        return Ok(Vec::new());
    }
    seen.data_version = Some(version);
    let mut out = Vec::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let has = |t: &str| tables.iter().any(|n| n == t);
    if has("runs") {
        let runs = conn.query_row(
            "SELECT COUNT(*), TOTAL(LENGTH(status)), COALESCE(MAX(started_at), 0), TOTAL(COALESCE(finished_at, 0)) FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)? as i64, r.get(2)?, r.get::<_, f64>(3)? as i64)),
        )?;
        if seen.runs != Some(runs) {
            seen.runs = Some(runs);
            out.push(("runs", Value::Null));
        }
        // The runs still moving, or that just stopped.
        let recent = now_ms() - 60_000;
        let mut stmt = conn.prepare_cached(
            "SELECT r.id,
                    (SELECT COUNT(*) FROM run_tasks t WHERE t.run_id = r.id),
                    (SELECT TOTAL(COALESCE(started_at, 0) + COALESCE(finished_at, 0) + attempts + LENGTH(status)) FROM run_tasks t WHERE t.run_id = r.id),
                    (SELECT COALESCE(MAX(seq), 0) FROM run_messages m WHERE m.run_id = r.id),
                    LENGTH(r.status), COALESCE(LENGTH(r.report), 0)
             FROM runs r WHERE r.status = 'running' OR COALESCE(r.finished_at, 0) > ?1",
        )?;
        let rows = stmt.query_map([recent], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get(1)?,
                    r.get::<_, f64>(2)? as i64,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ),
            ))
        })?;
        for row in rows {
            let (id, print) = row?;
            if seen.run_tasks.get(&id) != Some(&print) {
                seen.run_tasks.insert(id.clone(), print);
                out.push(("run", json!({"id": id})));
            }
        }
    }
    if has("audit_log") {
        let head: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_log", [], |r| {
            r.get(0)
        })?;
        if seen.audit != Some(head) {
            seen.audit = Some(head);
            out.push(("audit", json!({"seq": head})));
        }
    }
    Ok(out)
}

/// Tasks in the store, all and finished, at one look.
#[derive(Clone, Copy)]
struct StoreTotals {
    all: u64,
    finished: u64,
}

impl StoreTotals {
    fn of(stats: &crate::queue::model::Stats) -> StoreTotals {
        let mut totals = StoreTotals {
            all: 0,
            finished: 0,
        };
        for (_, status, n) in &stats.counts {
            totals.all += n;
            if matches!(status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
                totals.finished += n;
            }
        }
        totals
    }
}

/// What the last KPI point was computed from.
struct KpiMark {
    at: Instant,
    counters: crate::kpi::Snapshot,
    store: Option<StoreTotals>,
}

/// The KPI point since `last`, kept in the series; the new mark.
fn kpi_point(live: &Live, last: Option<KpiMark>, store: Option<StoreTotals>) -> KpiMark {
    let now = Instant::now();
    let snap = crate::kpi::snapshot();
    if let Some(before) = last {
        let secs = now.duration_since(before.at).as_secs_f64().max(0.001);
        let counter = |s: &crate::kpi::Snapshot, name: &str| {
            s.counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        };
        let here =
            |name: &str| counter(&snap, name).saturating_sub(counter(&before.counters, name));
        let moved = |pick: fn(&StoreTotals) -> u64| match (before.store, store) {
            (Some(a), Some(b)) => pick(&b).saturating_sub(pick(&a)),
            _ => 0,
        };
        let mean_us = |name: &str| {
            let h = |s: &crate::kpi::Snapshot| {
                s.histograms
                    .iter()
                    .find(|h| h.name == name)
                    .map_or((0, 0), |h| (h.count, h.sum_ns))
            };
            let ((c0, s0), (c1, s1)) = (h(&before.counters), h(&snap));
            let n = c1.saturating_sub(c0);
            if n == 0 {
                0.0
            } else {
                s1.saturating_sub(s0) as f64 / n as f64 / 1000.0
            }
        };
        let point = KpiPoint {
            at: now_ms(),
            enqueued_per_s: here("queue.tasks.enqueued").max(moved(|t| t.all)) as f64 / secs,
            acked_per_s: here("queue.acks.applied").max(moved(|t| t.finished)) as f64 / secs,
            dequeue_us: mean_us("queue.grpc.dequeue"),
            ack_us: mean_us("queue.grpc.ack"),
        };
        let mut kpis = live.kpis.lock().unwrap_or_else(|p| p.into_inner());
        kpis.push_back(point);
        while kpis.len() > KPI_KEPT {
            kpis.pop_front();
        }
    }
    KpiMark {
        at: now,
        counters: snap,
        store,
    }
}

/// The event stream every open page listens to.
#[utoipa::path(get, path = "/api/v1/events", tag = "live",
    responses((status = 200, description = "Server-sent events: `runs`, `run` ({id}), `audit`, `queue` (depths), `host` (a sample); `resync` after a slow page missed some",
        content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut changes = state.live.tx.subscribe();
    let mut closing = state.live.closing.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Forward changes until the page goes or the server stops (an open
    // stream would otherwise hold a graceful shutdown up for ever).
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = closing.wait_for(|c| *c) => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        let data = if change.data.is_null() { "{}".to_string() } else { change.data.to_string() };
                        Event::default().event(change.topic).data(data)
                    }
                    // A slow page missed events: it refetches everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    state.live.nudge();
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
