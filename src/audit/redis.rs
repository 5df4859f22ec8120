//! The audit chain in Redis, for a fleet whose queue lives there: one list of
//! records (`nova:audit:log`) and the chain's head (`nova:audit:head`: seq
//! and hash). Hashing happens here, not in Redis (its Lua has no SHA-256), so
//! an append is a compare-and-set: the script adds the records only if the
//! head is still the one they were sealed against, and otherwise answers
//! the head it has, on which the writer that lost the race seals again. A
//! writer seals against the head it last saw, so a lone writer appends in
//! one round trip, and a batch of records in one call.
//!
//! Each action has an index beside the list (`nova:audit:action:NAME`: the
//! numbers of its records, oldest first), so that the dashboard's views of
//! one action (decisions, alerts) read those records and no others. The
//! head's `indexed` field says how many records from the start are in the
//! indexes. An append indexes its record when every record before it is;
//! records that are not (written by a nova from before the indexes) are
//! indexed by the next reader of an action, a chunk at a time, once.

use std::sync::{Arc, LazyLock, Mutex};

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, FromRedisValue, Script};

use super::filter::{ActionPattern, Filter};
use super::record::{Event, GENESIS, Record};
use super::{AuditError, AuditResult};

const LOG: &str = "nova:audit:log";
const HEAD: &str = "nova:audit:head";
const MAX_TRIES: usize = 1000;
const READ_CHUNK: isize = 1000;

/// The prefix of an action's index; the action's name follows it.
const ACTION_INDEX: &str = "nova:audit:action:";

/// Append records sealed one after another against the head. KEYS: the log,
/// the head, then each record's action index. ARGV: the head's seq the
/// records were sealed against, then each record and its hash. Answers
/// `{1}`, or, when the head has moved, `{0, seq, hash}` of the head now.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then
  return {0, seq, redis.call('HGET', KEYS[2], 'hash') or ''}
end
-- nil when the count is not a number (changed by hand): nothing is indexed.
local indexed = tonumber(redis.call('HGET', KEYS[2], 'indexed') or '0')
local n = (#ARGV - 1) / 2
for i = 1, n do
  local len = redis.call('RPUSH', KEYS[1], ARGV[2 * i])
  if indexed == len - 1 then
    redis.call('RPUSH', KEYS[2 + i], len)
    indexed = len
  end
end
redis.call('HSET', KEYS[2], 'seq', seq + n, 'hash', ARGV[2 * n + 1])
if indexed then redis.call('HSET', KEYS[2], 'indexed', indexed) end
return {1}
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

/// Most records appended by one script call.
const APPEND_CHUNK: usize = 500;

#[derive(Clone)]
pub struct RedisAudit {
    conn: ConnectionManager,
    /// The head as this process last saw it, to seal against without
    /// reading it first; a stale one costs a retry with the head the
    /// script answers.
    head: Arc<Mutex<Option<(u64, String)>>>,
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
            .map_err(|e| {
                AuditError::Store(format!(
                    "cannot connect to {}: {e}",
                    crate::store_url::without_password(url)
                ))
            })?;
        Ok(RedisAudit {
            conn,
            head: Arc::default(),
        })
    }

    /// Append `events` in order, [`APPEND_CHUNK`] to a script call.
    pub async fn append_all(&self, events: Vec<Event>) -> AuditResult<Vec<Record>> {
        let mut out = Vec::with_capacity(events.len());
        for chunk in events.chunks(APPEND_CHUNK) {
            out.extend(self.append_chunk(chunk).await?);
        }
        Ok(out)
    }

    async fn append_chunk(&self, events: &[Event]) -> AuditResult<Vec<Record>> {
        let mut conn = self.conn.clone();
        let cached = self.head.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut head = match cached {
            Some(head) => head,
            None => {
                let (seq, hash): (Option<u64>, Option<String>) = ::redis::cmd("HMGET")
                    .arg(HEAD)
                    .arg("seq")
                    .arg("hash")
                    .query_async(&mut conn)
                    .await
                    .map_err(store_err)?;
                (
                    seq.unwrap_or(0),
                    hash.unwrap_or_else(|| GENESIS.to_string()),
                )
            }
        };
        for _ in 0..MAX_TRIES {
            let at = crate::clock::now_ms();
            let mut records = Vec::with_capacity(events.len());
            let mut call = APPEND.prepare_invoke();
            call.key(LOG).key(HEAD).arg(head.0);
            let (mut seq, mut hash) = head.clone();
            for event in events {
                let record = event.clone().seal(seq, &hash, at);
                call.key(action_index(&record.action))
                    .arg(serde_json::to_string(&record).expect("a record serializes"))
                    .arg(&record.hash);
                (seq, hash) = (record.seq, record.hash.clone());
                records.push(record);
            }
            let answer: Vec<::redis::Value> =
                call.invoke_async(&mut conn).await.map_err(store_err)?;
            match answer.as_slice() {
                [::redis::Value::Int(1)] => {
                    *self.head.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, hash));
                    return Ok(records);
                }
                // The head moved: seal again on the one Redis has.
                [::redis::Value::Int(0), now_seq, now_hash] => {
                    let seq = u64::from_redis_value(now_seq.clone()).map_err(store_err)?;
                    let hash = String::from_redis_value(now_hash.clone()).map_err(store_err)?;
                    head = (seq, if seq == 0 { GENESIS.to_string() } else { hash });
                }
                _ => return Err(store_err(format!("unexpected answer {answer:?}"))),
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
        if let Some(ActionPattern::Exact(action)) = filter.action_pattern()
            && self.index_all().await?
            && let Some(found) = self.newest_indexed(action, filter, limit).await?
        {
            return Ok(found);
        }
        self.newest_scanned(filter, limit).await
    }

    /// Put every record the indexes lack into its action's index, a chunk
    /// at a time; false when the head's count of indexed records is not a
    /// number (changed by hand), so that the indexes cannot be trusted.
    async fn index_all(&self) -> AuditResult<bool> {
        let mut conn = self.conn.clone();
        loop {
            let (indexed, len): (Option<String>, u64) = ::redis::pipe()
                .hget(HEAD, "indexed")
                .llen(LOG)
                .query_async(&mut conn)
                .await
                .map_err(store_err)?;
            let Ok(indexed) = indexed.as_deref().unwrap_or("0").parse::<u64>() else {
                return Ok(false);
            };
            if indexed >= len {
                return Ok(true);
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
    /// does not match the list (records removed from it, or the index
    /// changed, by hand), for the caller to read the list itself.
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
            let numbers: Vec<String> = conn
                .lrange(&index, start, end - 1)
                .await
                .map_err(store_err)?;
            let Ok(numbers) = numbers
                .iter()
                .map(|n| n.parse())
                .collect::<Result<Vec<u64>, _>>()
            else {
                return Ok(None);
            };
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
