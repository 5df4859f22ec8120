//! The audit chain in Redis, for a fleet whose queue lives there: one list of
//! records (`nova:audit:log`) and the chain's head (`nova:audit:head`: seq
//! and hash). Hashing happens here, not in Redis (its Lua has no SHA-256), so
//! an append is a compare-and-set: the script adds the record only if the
//! head is still the one the record was sealed against, and the writer that
//! lost the race seals again on the new head.
//!
//! Each action has an index beside the list (`nova:audit:action:NAME`: the
//! numbers of its records, oldest first), so that the dashboard's views of
//! one action (decisions, alerts) read those records and no others. The
//! head's `indexed` field says how many records from the start are in the
//! indexes. An append indexes its record when every record before it is;
//! records that are not (written by a nova from before the indexes) are
//! indexed by the next reader of an action, a chunk at a time, once.

use std::sync::LazyLock;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};

use super::filter::{ActionPattern, Filter};
use super::record::{Event, GENESIS, Record};
use super::{AuditError, AuditResult};

const LOG: &str = "nova:audit:log";
const HEAD: &str = "nova:audit:head";
const MAX_TRIES: usize = 1000;
const READ_CHUNK: isize = 1000;

/// The prefix of an action's index; the action's name follows it.
const ACTION_INDEX: &str = "nova:audit:action:";

/// KEYS: the log, the head, the record's action index. ARGV: the head's seq
/// the record was sealed against, the record, its hash.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return 0 end
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'seq', seq + 1, 'hash', ARGV[3])
if tonumber(redis.call('HGET', KEYS[2], 'indexed') or '0') == n - 1 then
  redis.call('RPUSH', KEYS[3], n)
  redis.call('HSET', KEYS[2], 'indexed', n)
end
return 1
",
    )
});

/// Index records the indexes lack. KEYS: the head, then one action index
/// per record. ARGV: how many records were indexed when they were read,
/// then each record's number (its place in the list), then how many are
/// indexed after. Does nothing, answering 0, when another reader indexed
/// them first.
static INDEX: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('HGET', KEYS[1], 'indexed') or '0') ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[i]) end
redis.call('HSET', KEYS[1], 'indexed', ARGV[#KEYS + 1])
return 1
",
    )
});

fn action_index(action: &str) -> String {
    format!("{ACTION_INDEX}{action}")
}

/// The one field of a stored record that indexing reads.
#[derive(serde::Deserialize)]
struct ActionOf {
    action: String,
}

#[derive(Clone)]
pub struct RedisAudit {
    conn: ConnectionManager,
}

fn store_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Store(format!("redis: {e}"))
}

impl RedisAudit {
    pub async fn connect(url: &str) -> AuditResult<RedisAudit> {
        let client = ::redis::Client::open(url).map_err(store_err)?;
        let conn = client
            .get_connection_manager_with_config(crate::store_url::redis_connection_config())
            .await
            .map_err(|e| AuditError::Store(format!("cannot connect to {url}: {e}")))?;
        Ok(RedisAudit { conn })
    }

    pub async fn append(&self, event: Event) -> AuditResult<Record> {
        let mut conn = self.conn.clone();
        let index = action_index(&event.action);
        for _ in 0..MAX_TRIES {
            let (seq, hash): (Option<u64>, Option<String>) = ::redis::cmd("HMGET")
                .arg(HEAD)
                .arg("seq")
                .arg("hash")
                .query_async(&mut conn)
                .await
                .map_err(store_err)?;
            let seq = seq.unwrap_or(0);
            let hash = hash.unwrap_or_else(|| GENESIS.to_string());
            let record = event.clone().seal(seq, &hash, crate::clock::now_ms());
            let json = serde_json::to_string(&record).expect("a record serializes");
            let added: i64 = APPEND
                .key(LOG)
                .key(HEAD)
                .key(&index)
                .arg(seq)
                .arg(json)
                .arg(&record.hash)
                .invoke_async(&mut conn)
                .await
                .map_err(store_err)?;
            if added == 1 {
                return Ok(record);
            }
        }
        Err(AuditError::Store(format!(
            "gave up after {MAX_TRIES} attempts: the chain's head kept moving"
        )))
    }

    pub async fn read_all(&self) -> AuditResult<Vec<AuditResult<Record>>> {
        self.read_from(1).await
    }

    /// The records from the `first`th in the list on (the record numbered
    /// `first`, unless some before it were removed), as [`Self::read_all`].
    pub async fn read_from(&self, first: u64) -> AuditResult<Vec<AuditResult<Record>>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut start = isize::try_from(first.max(1) - 1).unwrap_or(isize::MAX);
        loop {
            let chunk: Vec<String> = conn
                .lrange(LOG, start, start + READ_CHUNK - 1)
                .await
                .map_err(store_err)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            for (i, json) in chunk.iter().enumerate() {
                out.push(parse(json, start as u64 + i as u64 + 1));
            }
            start += READ_CHUNK;
        }
    }

    pub async fn records(&self) -> AuditResult<Vec<Record>> {
        self.read_all().await?.into_iter().collect()
    }

    /// The newest `limit` records `filter` accepts, newest first: through
    /// the action's index when the filter names one action, otherwise read
    /// a chunk at a time from the end of the list.
    pub async fn newest(&self, filter: &Filter, limit: usize) -> AuditResult<Vec<Record>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(ActionPattern::Exact(action)) = filter.action_pattern() {
            self.index_all().await?;
            if let Some(found) = self.newest_indexed(action, filter, limit).await? {
                return Ok(found);
            }
        }
        self.newest_scanned(filter, limit).await
    }

    /// Put every record the indexes lack into its action's index, a chunk
    /// at a time.
    async fn index_all(&self) -> AuditResult<()> {
        let mut conn = self.conn.clone();
        loop {
            let (indexed, len): (Option<u64>, u64) = ::redis::pipe()
                .hget(HEAD, "indexed")
                .llen(LOG)
                .query_async(&mut conn)
                .await
                .map_err(store_err)?;
            let indexed = indexed.unwrap_or(0);
            if indexed >= len {
                return Ok(());
            }
            let start = isize::try_from(indexed).unwrap_or(isize::MAX);
            let chunk: Vec<String> = conn
                .lrange(LOG, start, start + READ_CHUNK - 1)
                .await
                .map_err(store_err)?;
            let mut call = INDEX.prepare_invoke();
            call.key(HEAD).arg(indexed);
            for (i, json) in chunk.iter().enumerate() {
                // An unreadable record is in no index; reading the log
                // through one of them, or verifying it, names it.
                if let Ok(record) = serde_json::from_str::<ActionOf>(json) {
                    call.key(action_index(&record.action))
                        .arg(indexed + i as u64 + 1);
                }
            }
            call.arg(indexed + chunk.len() as u64);
            let _done: i64 = call.invoke_async(&mut conn).await.map_err(store_err)?;
        }
    }

    /// [`Self::newest`] through `action`'s index, or `None` when the index
    /// does not match the list (records removed from it by hand), for the
    /// caller to read the list itself.
    async fn newest_indexed(
        &self,
        action: &str,
        filter: &Filter,
        limit: usize,
    ) -> AuditResult<Option<Vec<Record>>> {
        let mut conn = self.conn.clone();
        let index = action_index(action);
        let mut found = Vec::new();
        let mut end: isize = conn.llen(&index).await.map_err(store_err)?;
        while found.len() < limit && end > 0 {
            // Ask for a few more than are missing, since the other filters
            // may turn some away.
            let wanted = isize::try_from((limit - found.len()).max(16)).unwrap_or(READ_CHUNK);
            let start = (end - wanted.min(READ_CHUNK)).max(0);
            let numbers: Vec<u64> = conn
                .lrange(&index, start, end - 1)
                .await
                .map_err(store_err)?;
            let mut read = ::redis::pipe();
            for n in numbers.iter().rev() {
                read.lindex(LOG, isize::try_from(*n).unwrap_or(isize::MAX) - 1);
            }
            let stored: Vec<Option<String>> =
                read.query_async(&mut conn).await.map_err(store_err)?;
            for (n, json) in numbers.iter().rev().zip(stored) {
                let Some(json) = json else { return Ok(None) };
                let record = parse(&json, *n)?;
                if record.seq != *n || record.action != action {
                    return Ok(None);
                }
                if filter.matches(&record) {
                    found.push(record);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            end = start;
        }
        Ok(Some(found))
    }

    /// [`Self::newest`] by reading the list back from its end.
    async fn newest_scanned(&self, filter: &Filter, limit: usize) -> AuditResult<Vec<Record>> {
        let mut conn = self.conn.clone();
        let len: isize = conn.llen(LOG).await.map_err(store_err)?;
        let mut found = Vec::new();
        let mut end = len;
        while found.len() < limit && end > 0 {
            let start = (end - READ_CHUNK).max(0);
            let chunk: Vec<String> = conn.lrange(LOG, start, end - 1).await.map_err(store_err)?;
            for (i, json) in chunk.iter().enumerate().rev() {
                if !filter.may_match_json(json) {
                    continue;
                }
                let record = parse(json, start as u64 + i as u64 + 1)?;
                if filter.matches(&record) {
                    found.push(record);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            end = start;
        }
        Ok(found)
    }
}

/// A stored record, the `position`th in the list.
fn parse(json: &str, position: u64) -> AuditResult<Record> {
    serde_json::from_str::<Record>(json).map_err(|e| AuditError::Unreadable {
        seq: position,
        reason: e.to_string(),
    })
}
