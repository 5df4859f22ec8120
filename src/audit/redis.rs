//! The audit chain in Redis, for a fleet whose queue lives there: one list of
//! records (`nova:audit:log`) and the chain's head (`nova:audit:head`: seq
//! and hash). Hashing happens here, not in Redis (its Lua has no SHA-256), so
//! an append is a compare-and-set: the script adds the record only if the
//! head is still the one the record was sealed against, and the writer that
//! lost the race seals again on the new head.

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};

use super::filter::Filter;
use super::record::{Event, GENESIS, Record};
use super::{AuditError, AuditResult};

const LOG: &str = "nova:audit:log";
const HEAD: &str = "nova:audit:head";
const MAX_TRIES: usize = 1000;
const READ_CHUNK: isize = 1000;

const APPEND: &str = r"
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'seq', seq + 1, 'hash', ARGV[3])
return 1
";

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
        let script = Script::new(APPEND);
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
            let added: i64 = script
                .key(LOG)
                .key(HEAD)
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
                let position = start as u64 + i as u64 + 1;
                out.push(serde_json::from_str::<Record>(json).map_err(|e| {
                    AuditError::Unreadable {
                        seq: position,
                        reason: e.to_string(),
                    }
                }));
            }
            start += READ_CHUNK;
        }
    }

    pub async fn records(&self) -> AuditResult<Vec<Record>> {
        self.read_all().await?.into_iter().collect()
    }

    /// The newest `limit` records `filter` accepts, newest first, read a
    /// chunk at a time from the end of the list.
    pub async fn newest(&self, filter: &Filter, limit: usize) -> AuditResult<Vec<Record>> {
        let mut conn = self.conn.clone();
        let len: isize = conn.llen(LOG).await.map_err(store_err)?;
        let mut found = Vec::new();
        let mut end = len;
        while found.len() < limit && end > 0 {
            let start = (end - READ_CHUNK).max(0);
            let chunk: Vec<String> = conn.lrange(LOG, start, end - 1).await.map_err(store_err)?;
            for (i, json) in chunk.iter().enumerate().rev() {
                let record =
                    serde_json::from_str::<Record>(json).map_err(|e| AuditError::Unreadable {
                        seq: start as u64 + i as u64 + 1,
                        reason: e.to_string(),
                    })?;
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
