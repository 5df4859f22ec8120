//! The chain as a long-running reader checks it: the dashboard, whose
//! governance page asks for the chain's state and the controls' evidence on
//! every refresh while records flow in.
//!
//! The whole chain is walked once; after that only the records appended
//! since are read, each checked against the one before it, starting from
//! the last record already verified, which must itself still be stored
//! unchanged. A record changed further back than that is found by the next
//! whole walk, at most [`WHOLE_EVERY`] later (and by `nova audit verify`,
//! which always walks the whole chain). A broken chain is walked whole on
//! every check, so a repair shows at once. Checks wait for each other, so
//! a burst of page loads costs one walk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{AuditLog, AuditResult, Record, Verification, Walk};

/// How long a whole walk vouches for the records behind the last verified one.
pub const WHOLE_EVERY: Duration = Duration::from_secs(300);

/// One check's answer.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verification: Verification,
    /// When the whole chain was last walked (ms since the Unix epoch).
    pub whole_at: i64,
    /// Records that evidence each ISO/IEC 27001 control, over every
    /// readable record (a broken chain's too).
    pub evidence: BTreeMap<String, u64>,
    /// Records this check read from the store.
    pub read: u64,
}

pub struct ChainWatch {
    whole_every: Duration,
    known: tokio::sync::Mutex<Option<Known>>,
}

/// What the last check found, when the chain held.
struct Known {
    walk: Walk,
    evidence: BTreeMap<String, u64>,
    whole_at: i64,
    walked: Instant,
}

impl Default for ChainWatch {
    fn default() -> Self {
        ChainWatch::every(WHOLE_EVERY)
    }
}

impl ChainWatch {
    /// A watch that walks the whole chain again once `whole_every` has passed.
    pub fn every(whole_every: Duration) -> ChainWatch {
        ChainWatch {
            whole_every,
            known: tokio::sync::Mutex::new(None),
        }
    }

    /// The chain's state now.
    pub async fn check(&self, log: &AuditLog) -> AuditResult<Checked> {
        let mut known = self.known.lock().await;
        if let Some(k) = known.as_mut()
            && k.walked.elapsed() < self.whole_every
            && let Some(read) = extend(k, log).await?
        {
            return Ok(Checked {
                verification: k.walk.holds(),
                whole_at: k.whole_at,
                evidence: k.evidence.clone(),
                read,
            });
        }
        let rows = log.read_from(1).await?;
        let read = rows.len() as u64;
        let mut walk = Walk::default();
        let mut evidence = BTreeMap::new();
        let mut broken = None;
        for row in rows {
            if let Ok(record) = &row {
                count(&mut evidence, record);
            }
            if broken.is_none()
                && let Err(b) = walk.step(row)
            {
                broken = Some(b);
            }
        }
        let whole_at = crate::clock::now_ms();
        let verification = match broken {
            Some(b) => {
                *known = None;
                walk.broken(b)
            }
            None => {
                *known = Some(Known {
                    walk: walk.clone(),
                    evidence: evidence.clone(),
                    whole_at,
                    walked: Instant::now(),
                });
                walk.holds()
            }
        };
        Ok(Checked {
            verification,
            whole_at,
            evidence,
            read,
        })
    }
}

/// Check the records appended after `known`'s last one; how many were read,
/// or `None` when that record is no longer stored as it was, or a new one
/// does not chain (a whole walk then says where the chain breaks).
async fn extend(known: &mut Known, log: &AuditLog) -> AuditResult<Option<u64>> {
    let first = known.walk.last().map_or(1, |r| r.seq);
    let rows = log.read_from(first).await?;
    let read = rows.len() as u64;
    let mut rows = rows.into_iter();
    if let Some(anchor) = known.walk.last() {
        match rows.next() {
            Some(Ok(stored)) if &stored == anchor => {}
            _ => return Ok(None),
        }
    }
    let mut walk = known.walk.clone();
    let mut evidence = known.evidence.clone();
    for row in rows {
        if let Ok(record) = &row {
            count(&mut evidence, record);
        }
        if walk.step(row).is_err() {
            return Ok(None);
        }
    }
    known.walk = walk;
    known.evidence = evidence;
    Ok(Some(read))
}

fn count(evidence: &mut BTreeMap<String, u64>, record: &Record) {
    for control in &record.controls {
        *evidence.entry(control.clone()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, GENESIS};

    fn log_in(dir: &tempfile::TempDir) -> (AuditLog, std::path::PathBuf) {
        let db = dir.path().join("nova.db");
        (AuditLog::sqlite(&db).unwrap(), db)
    }

    async fn append(log: &AuditLog, n: usize) {
        for i in 0..n {
            log.append(Event::new("me", "run.start", format!("t{i}"), "ok"))
                .await
                .unwrap();
        }
    }

    fn edit(db: &std::path::Path, seq: u64) {
        let conn = rusqlite::Connection::open(db).unwrap();
        let changed = conn
            .execute(
                "UPDATE audit_log SET outcome = 'denied' WHERE seq = ?1",
                [seq as i64],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    #[tokio::test]
    async fn after_a_whole_walk_only_new_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = log_in(&dir);
        let watch = ChainWatch::default();
        let empty = watch.check(&log).await.unwrap();
        assert_eq!(empty.verification.head.as_deref(), Some(GENESIS));
        append(&log, 5).await;
        let first = watch.check(&log).await.unwrap();
        assert_eq!((first.verification.records, first.read), (5, 5));
        append(&log, 3).await;
        let next = watch.check(&log).await.unwrap();
        // The last verified record, read again to see it is unchanged, and the new ones.
        assert_eq!((next.verification.records, next.read), (8, 4));
        assert_eq!(next.verification, log.verify().await.unwrap());
        assert_eq!(next.whole_at, first.whole_at);
        assert_eq!(next.evidence, first_evidence(&log).await);
    }

    async fn first_evidence(log: &AuditLog) -> BTreeMap<String, u64> {
        let mut evidence = BTreeMap::new();
        for r in log.read_from(1).await.unwrap() {
            count(&mut evidence, &r.unwrap());
        }
        evidence
    }

    /// Where the chain breaks, as `watch` sees it now.
    async fn broken_at(watch: &ChainWatch, log: &AuditLog) -> Option<u64> {
        let checked = watch.check(log).await.unwrap();
        checked.verification.broken.map(|b| b.seq)
    }

    #[tokio::test]
    async fn a_changed_last_record_or_a_new_one_that_does_not_chain_is_found_at_once() {
        for (appended_later, changed) in [(0, 4), (2, 6)] {
            let dir = tempfile::tempdir().unwrap();
            let (log, db) = log_in(&dir);
            let watch = ChainWatch::default();
            append(&log, 4).await;
            assert_eq!(broken_at(&watch, &log).await, None);
            append(&log, appended_later).await;
            edit(&db, changed);
            assert_eq!(broken_at(&watch, &log).await, Some(changed));
            // Then every check walks the whole chain, and names the break.
            let again = watch.check(&log).await.unwrap();
            assert_eq!(again.read, 4 + appended_later as u64);
            assert_eq!(again.verification.broken.unwrap().seq, changed);
        }
    }

    #[tokio::test]
    async fn an_older_change_is_found_by_the_next_whole_walk() {
        let dir = tempfile::tempdir().unwrap();
        let (log, db) = log_in(&dir);
        append(&log, 6).await;
        let lazy = ChainWatch::default();
        let eager = ChainWatch::every(Duration::ZERO);
        assert!(
            lazy.check(&log)
                .await
                .unwrap()
                .verification
                .broken
                .is_none()
        );
        assert!(
            eager
                .check(&log)
                .await
                .unwrap()
                .verification
                .broken
                .is_none()
        );
        edit(&db, 2);
        // Within WHOLE_EVERY only the last verified record is looked at again.
        let lazy = lazy.check(&log).await.unwrap();
        assert!(lazy.verification.broken.is_none());
        assert_eq!(lazy.read, 1);
        let eager = eager.check(&log).await.unwrap();
        assert_eq!(eager.verification.broken.unwrap().seq, 2);
        // Evidence still counts every readable record.
        assert_eq!(eager.evidence, first_evidence(&log).await);
    }
}
