//! The audit log: an append-only, hash-chained record of what nova did, who
//! asked, and how it ended, with the ISO 27001 controls each record evidences.
//!
//! Records live in the workspace database (`audit_log`), or in Redis when the
//! queue does, so a fleet of servers writes one chain. Appends are serialized
//! by the store (an `IMMEDIATE` transaction; a compare-and-set script), so two
//! processes appending at once never fork the chain. [`verify`] walks the
//! chain and names the first record that does not hold.

pub mod command;
pub mod controls;
pub mod filter;
pub mod open;
pub mod record;
pub mod redis;
pub mod sqlite;
pub mod watch;

pub use filter::Filter;
pub use open::{operator, workspace_log};

use std::path::Path;

use serde::Serialize;

pub use crate::store::writer::Durability;
pub use record::{Event, GENESIS, Record};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log: {0}")]
    Store(String),
    /// A stored record that cannot be read back (damaged or edited by hand).
    #[error("audit record {seq} is unreadable: {reason}")]
    Unreadable { seq: u64, reason: String },
}

pub type AuditResult<T> = Result<T, AuditError>;

/// Where the chain lives.
#[derive(Clone)]
pub enum AuditLog {
    Sqlite(sqlite::SqliteAudit),
    Redis(redis::RedisAudit),
}

impl AuditLog {
    /// The chain in the SQLite database at `path` (created if needed).
    pub fn sqlite(path: &Path) -> AuditResult<AuditLog> {
        Ok(AuditLog::Sqlite(sqlite::SqliteAudit::open(path)?))
    }

    /// The log in an existing database that this process may only read.
    pub fn sqlite_for_reading(path: &Path) -> AuditResult<AuditLog> {
        Ok(AuditLog::Sqlite(sqlite::SqliteAudit::open_for_reading(
            path,
        )?))
    }

    pub async fn redis(url: &str) -> AuditResult<AuditLog> {
        Ok(AuditLog::Redis(redis::RedisAudit::connect(url).await?))
    }

    /// Append `event` after the last record; the sealed record as stored,
    /// on disk once answered.
    pub async fn append(&self, event: Event) -> AuditResult<Record> {
        let mut records = self.append_all(vec![event]).await?;
        Ok(records.pop().expect("one record per event"))
    }

    /// Append several events in order, as one write where the store allows,
    /// on disk once answered.
    pub async fn append_all(&self, events: Vec<Event>) -> AuditResult<Vec<Record>> {
        self.append_all_with(events, Durability::Durable).await
    }

    /// [`AuditLog::append_all`] with the durability the caller needs. With
    /// [`Durability::Background`] the records are answered once committed
    /// (every reader sees them, killing the process does not lose them, a
    /// store that cannot take them says so) while the fsync that puts them
    /// on disk runs; a power cut in that moment can lose them with every
    /// later write. Redis writes as its own persistence settings say,
    /// whatever is asked.
    pub async fn append_all_with(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> AuditResult<Vec<Record>> {
        let _timer = crate::timer!("audit.append");
        match self {
            AuditLog::Sqlite(log) => log.append_all(events, durability).await,
            AuditLog::Redis(log) => log.append_all(events).await,
        }
    }

    /// [`AuditLog::append_all_with`], queued in the SQLite writer's order
    /// at once: a write the caller queues after this call commits after
    /// it, in the same transaction when it comes in time. (Redis appends
    /// start when the future is polled.)
    pub fn append_all_queued(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AuditResult<Vec<Record>>> + Send>> {
        match self {
            AuditLog::Sqlite(log) => Box::pin(log.append_all_queued(events, durability)),
            AuditLog::Redis(_) => {
                let log = self.clone();
                Box::pin(async move { log.append_all_with(events, durability).await })
            }
        }
    }

    /// The newest `limit` records that `filter` accepts, newest first,
    /// without reading the log further back than they are found.
    pub async fn newest(&self, filter: Filter, limit: usize) -> AuditResult<Vec<Record>> {
        match self {
            AuditLog::Sqlite(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.newest(&filter, limit))
                    .await
                    .map_err(|e| AuditError::Store(e.to_string()))?
            }
            AuditLog::Redis(log) => log.newest(&filter, limit).await,
        }
    }

    /// Every record, oldest first.
    pub async fn records(&self) -> AuditResult<Vec<Record>> {
        match self {
            AuditLog::Sqlite(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.records())
                    .await
                    .map_err(|e| AuditError::Store(e.to_string()))?
            }
            AuditLog::Redis(log) => log.records().await,
        }
    }
}

impl AuditLog {
    /// Check the whole chain.
    pub async fn verify(&self) -> AuditResult<Verification> {
        Ok(verify(self.read_from(1).await?))
    }

    /// The stored records from the one numbered `first` on, in order;
    /// unreadable ones as errors in place.
    pub async fn read_from(&self, first: u64) -> AuditResult<Vec<AuditResult<Record>>> {
        match self {
            AuditLog::Sqlite(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.read_from(first))
                    .await
                    .map_err(|e| AuditError::Store(e.to_string()))?
            }
            AuditLog::Redis(log) => log.read_from(first).await,
        }
    }
}

/// Append `event` and log a failure to do so (the action it records has
/// already happened; losing its record is worth a warning, not a crash).
///
/// For records that gate nothing (what a command observed, an alert): when
/// the log cannot be written the command goes on, and says so once on
/// stderr, not only in the log files. Records that gate an action are
/// appended directly by the action, which is not taken when they fail.
pub async fn record(log: &AuditLog, event: Event) {
    record_with(log, event, Durability::Durable).await
}

/// [`record`] with the durability the caller needs (see
/// [`AuditLog::append_all_with`]). The record takes its place in the
/// store's order when this is called, not when the future is first polled,
/// so it commits with whatever the caller writes next (see
/// [`AuditLog::append_all_queued`]).
pub fn record_with(
    log: &AuditLog,
    event: Event,
    durability: Durability,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let action = event.action.clone();
    let appended = log.append_all_queued(vec![event], durability);
    async move {
        if let Err(e) = appended.await {
            not_recorded(&action, &e);
        }
    }
}

/// Say (once a process, on stderr) that what this command did could not
/// be recorded: the command's own outcome stands, as it happened.
pub fn not_recorded(action: &str, error: &dyn std::fmt::Display) {
    static SAID: std::sync::Once = std::sync::Once::new();
    tracing::info!(action = %action, error = %error, "could not append to the audit log");
    SAID.call_once(|| {
        eprintln!("note: nothing this command did was recorded in the audit log ({error})");
    });
}

/// Why the chain breaks at a record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Break {
    /// The first record that does not hold (for a removed record: the one missing).
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub records: u64,
    /// The hash of the last record, when the chain holds.
    pub head: Option<String>,
    pub broken: Option<Break>,
}

/// Walk `records` (in stored order) and find the first that does not chain.
pub fn verify<I>(records: I) -> Verification
where
    I: IntoIterator<Item = AuditResult<Record>>,
{
    let mut walk = Walk::default();
    for item in records {
        if let Err(broken) = walk.step(item) {
            return walk.broken(broken);
        }
    }
    walk.holds()
}

/// A walk along the chain: each record checked against the one before it.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Records read so far.
    count: u64,
    /// The last record that held.
    last: Option<Record>,
}

impl Walk {
    /// A walk that goes on after `last`, the `count`th record, already
    /// verified.
    pub fn after(last: Record, count: u64) -> Walk {
        Walk {
            count,
            last: Some(last),
        }
    }

    /// The last record that held, if any did.
    pub fn last(&self) -> Option<&Record> {
        self.last.as_ref()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Check the next stored record: why the chain breaks there, if it does.
    pub fn step(&mut self, item: AuditResult<Record>) -> Result<(), Break> {
        let record = match item {
            Ok(r) => r,
            Err(AuditError::Unreadable { seq, reason }) => {
                return Err(Break {
                    seq,
                    reason: format!("record {seq} is unreadable: {reason}"),
                });
            }
            Err(e) => {
                return Err(Break {
                    seq: self.count + 1,
                    reason: e.to_string(),
                });
            }
        };
        self.count += 1;
        let (want_seq, want_prev) = match &self.last {
            None => (1, GENESIS),
            Some(p) => (p.seq + 1, p.hash.as_str()),
        };
        let broken = |seq: u64, reason: String| Err(Break { seq, reason });
        if record.seq > want_seq {
            let missing = if record.seq == want_seq + 1 {
                format!("record {want_seq} is missing")
            } else {
                format!("records {want_seq} to {} are missing", record.seq - 1)
            };
            return broken(
                want_seq,
                format!(
                    "{missing}: the chain jumps from {} to {}",
                    want_seq - 1,
                    record.seq
                ),
            );
        }
        if record.seq < want_seq {
            return broken(
                record.seq,
                format!(
                    "record {} appears again after record {}",
                    record.seq,
                    want_seq - 1
                ),
            );
        }
        if record.hash != record.expected_hash() {
            return broken(
                record.seq,
                format!(
                    "record {} was changed: its contents do not match its hash",
                    record.seq
                ),
            );
        }
        if record.prev_hash != want_prev {
            return broken(
                record.seq,
                format!(
                    "record {} does not follow record {}: its previous hash does not match (a record was inserted or replaced)",
                    record.seq,
                    want_seq - 1
                ),
            );
        }
        self.last = Some(record);
        Ok(())
    }

    /// The verdict when every record so far held.
    pub fn holds(&self) -> Verification {
        Verification {
            records: self.count,
            head: Some(
                self.last
                    .as_ref()
                    .map_or_else(|| GENESIS.to_string(), |p| p.hash.clone()),
            ),
            broken: None,
        }
    }

    /// The verdict when the chain broke at `broken`.
    pub fn broken(&self, broken: Break) -> Verification {
        Verification {
            records: self.count,
            head: None,
            broken: Some(broken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for i in 0..n {
            let (seq, hash) = out
                .last()
                .map_or((0, GENESIS.to_string()), |r| (r.seq, r.hash.clone()));
            out.push(
                Event::new("me", "run.start", format!("t{i}"), "ok").seal(seq, &hash, i as i64),
            );
        }
        out
    }

    fn check(records: Vec<Record>) -> Verification {
        verify(records.into_iter().map(Ok))
    }

    #[test]
    fn a_whole_chain_holds() {
        let v = check(chain(5));
        assert_eq!(v.records, 5);
        assert!(v.broken.is_none());
        assert!(check(Vec::new()).broken.is_none());
    }

    #[test]
    fn changes_removals_and_insertions_are_named() {
        let mut changed = chain(5);
        changed[2].outcome = "denied".into();
        assert_eq!(check(changed).broken.unwrap().seq, 3);

        let mut removed = chain(5);
        removed.remove(3);
        let b = check(removed).broken.unwrap();
        assert_eq!(b.seq, 4);
        assert!(b.reason.contains("record 4 is missing"), "{}", b.reason);

        let mut first_gone = chain(3);
        first_gone.remove(0);
        assert_eq!(check(first_gone).broken.unwrap().seq, 1);

        // An insertion that renumbers what follows and seals itself properly.
        let mut inserted = chain(5);
        let fake = Event::new("intruder", "run.start", "x", "ok").seal(2, &inserted[1].hash, 0);
        inserted.insert(2, fake);
        for r in inserted.iter_mut().skip(3) {
            r.seq += 1;
            r.hash = r.expected_hash();
        }
        let b = check(inserted).broken.unwrap();
        assert_eq!(b.seq, 4);
        assert!(
            b.reason.contains("does not follow record 3"),
            "{}",
            b.reason
        );
    }
}
