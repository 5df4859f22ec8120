//! The audit chain in the workspace's SQLite database (`audit_log`).
//!
//! An append reads the last record and inserts the next inside one
//! transaction of the file's writer ([`Writer`]): in this process appends are
//! applied one after another (and share fsyncs with everything else written
//! at the time); across processes the transaction is `IMMEDIATE`, so SQLite
//! lets one writer in at a time. Each append sees the true head and the chain
//! cannot fork.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::filter::{ActionPattern, Filter};
use super::record::{Event, GENESIS, Record};
use super::{AuditError, AuditResult};
use crate::store::Store;
use crate::store::writer::{Durability, Writer};

#[derive(Clone)]
pub struct SqliteAudit {
    /// `None` for a log opened only to be read (a read-only workspace).
    writer: Option<Arc<Writer>>,
    conn: Arc<Mutex<Connection>>,
}

fn store_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Store(e.to_string())
}

const COLUMNS: &str = "seq, at, actor, action, target, outcome, details, controls, prev_hash, hash";

fn record_from_row(row: &Row) -> rusqlite::Result<AuditResult<Record>> {
    let seq: i64 = row.get(0)?;
    let seq = seq as u64;
    let details: String = row.get(6)?;
    let controls: String = row.get(7)?;
    let unreadable = |what: &str, e: serde_json::Error| AuditError::Unreadable {
        seq,
        reason: format!("{what}: {e}"),
    };
    let details = match serde_json::from_str(&details) {
        Ok(v) => v,
        Err(e) => return Ok(Err(unreadable("details", e))),
    };
    let controls = match serde_json::from_str(&controls) {
        Ok(v) => v,
        Err(e) => return Ok(Err(unreadable("controls", e))),
    };
    Ok(Ok(Record {
        seq,
        at: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        outcome: row.get(5)?,
        details,
        controls,
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    }))
}

/// Seal `event` on the chain's head and insert it, inside the writer's transaction.
fn append_in(conn: &Connection, event: Event) -> AuditResult<Record> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .optional()
        .map_err(store_err)?;
    let (seq, hash) = head.unwrap_or((0, GENESIS.to_string()));
    let record = event.seal(seq as u64, &hash, crate::clock::now_ms());
    conn.prepare_cached(&format!(
        "INSERT INTO audit_log ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .map_err(store_err)?
    .execute(params![
        record.seq as i64,
        record.at,
        record.actor,
        record.action,
        record.target,
        record.outcome,
        record.details.to_string(),
        serde_json::to_string(&record.controls).expect("controls serialize"),
        record.prev_hash,
        record.hash,
    ])
    .map_err(store_err)?;
    Ok(record)
}

impl SqliteAudit {
    pub fn open(path: &Path) -> AuditResult<SqliteAudit> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(store_err)?;
        }
        let writer = Writer::shared(path).map_err(store_err)?;
        let conn = Store::open(path).map_err(store_err)?.into_connection();
        Ok(SqliteAudit {
            writer: Some(writer),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The log of an existing database, to be read only: appends fail.
    pub fn open_for_reading(path: &Path) -> AuditResult<SqliteAudit> {
        let conn = Store::open_read_only(path)
            .map_err(store_err)?
            .into_connection();
        Ok(SqliteAudit {
            writer: None,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn writer(&self) -> AuditResult<&Writer> {
        self.writer
            .as_deref()
            .ok_or_else(|| AuditError::Store("the workspace database can only be read here".into()))
    }

    /// Append `events` in order in one transaction of the file's writer,
    /// answered once it is committed with `durability`.
    pub async fn append_all(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> AuditResult<Vec<Record>> {
        self.append_all_queued(events, durability).await
    }

    /// [`SqliteAudit::append_all`], queued in the writer's order now; the
    /// returned future answers once the records are committed.
    pub fn append_all_queued(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> impl std::future::Future<Output = AuditResult<Vec<Record>>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.writer().map(|writer| {
            writer.submit(
                durability,
                move |conn| {
                    events
                        .into_iter()
                        .map(|e| append_in(conn, e))
                        .collect::<AuditResult<Vec<Record>>>()
                },
                AuditError::Store,
                move |r| {
                    let _ = tx.send(r);
                },
            )
        });
        async move {
            let stopped = || AuditError::Store("the database writer has stopped".into());
            match queued {
                Err(e) => Err(e),
                Ok(false) => Err(stopped()),
                Ok(true) => rx.await.unwrap_or_else(|_| Err(stopped())),
            }
        }
    }

    /// Every record in sequence order; unreadable ones as errors in place.
    pub fn read_all(&self) -> AuditResult<Vec<AuditResult<Record>>> {
        self.read_from(1)
    }

    /// The records numbered `first` and after, as [`Self::read_all`].
    pub fn read_from(&self, first: u64) -> AuditResult<Vec<AuditResult<Record>>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE seq >= ?1 ORDER BY seq"
            ))
            .map_err(store_err)?;
        let rows = stmt
            .query_map([first as i64], record_from_row)
            .map_err(store_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_err)?;
        Ok(rows)
    }

    pub fn records(&self) -> AuditResult<Vec<Record>> {
        self.read_all()?.into_iter().collect()
    }

    /// The newest `limit` records `filter` accepts, newest first: SQLite
    /// reads back from the newest only as far as they are found, and
    /// parses only the records it returns.
    pub fn newest(&self, filter: &Filter, limit: usize) -> AuditResult<Vec<Record>> {
        let (exact, prefix) = match filter.action_pattern() {
            None => (None, None),
            Some(ActionPattern::Exact(a)) => (Some(a), None),
            Some(ActionPattern::Prefix(p)) => (None, Some(p)),
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_log
                 WHERE (?1 IS NULL OR action = ?1)
                   AND (?2 IS NULL OR substr(action, 1, length(?2)) = ?2)
                   AND (?3 IS NULL OR outcome = ?3)
                   AND (?4 IS NULL OR instr(actor, ?4) > 0)
                   AND (?5 IS NULL OR instr(target, ?5) > 0 OR instr(details, ?5) > 0)
                   AND (?7 IS NULL OR at >= ?7)
                 ORDER BY seq DESC LIMIT ?6"
            ))
            .map_err(store_err)?;
        let rows = stmt
            .query_map(
                params![
                    exact,
                    prefix,
                    filter.outcome,
                    filter.actor,
                    filter.mentions,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    filter.since
                ],
                record_from_row,
            )
            .map_err(store_err)?;
        let mut found = Vec::new();
        for row in rows {
            found.push(row.map_err(store_err)??);
        }
        Ok(found)
    }
}
