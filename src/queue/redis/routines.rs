//! The queue's Lua routines, and how Redis is asked to run them.
//!
//! Each routine is the shared prelude, the function files it needs and a
//! body (the `.lua` files beside this one). On Redis 7 and later nova loads
//! them all once, as one function library (`FUNCTION LOAD`), and calls each
//! with `FCALL`: the prelude's tables and helpers are then built once per
//! load instead of once per call, where as scripts they cost about 9 µs of
//! Redis's time on every call. The library's name carries a digest of its
//! code, so servers of different nova versions sharing one Redis each call
//! their own. On an older Redis, or one that refuses `FUNCTION`, each
//! routine runs as a script (`EVALSHA`). A Redis that lost its functions
//! (restarted without persistence, `FUNCTION FLUSH`) is given the library
//! again by the first call that misses it.
//!
//! Each upgrade that changes the routines adds a library, so a server that
//! loads its own also removes old ones: `nova:functions` remembers when each
//! version's library was last loaded, and those beyond the newest
//! [`LIBRARIES_KEPT`] that no server has loaded for [`LIBRARY_IDLE`] go, as
//! do libraries no server recorded (from a nova before the record). A server
//! still running a removed version loads its library again on its next call;
//! the idle time keeps a fleet running more versions than that at once from
//! taking turns to remove each other's.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script, Value};

const PRELUDE: &str = include_str!("prelude.lua");
const ACK_FN: &str = include_str!("ack_fn.lua");
const ENQUEUE_FN: &str = include_str!("enqueue_fn.lua");
const LEASE_FN: &str = include_str!("lease_fn.lua");
/// Stands for the library's name in its code until the digest is known.
const NAME: &str = "{LIBRARY}";
/// When each version's library was last loaded (a sorted set: names scored
/// by milliseconds since the Unix epoch).
const LOADED: &str = "nova:functions";
/// How many of nova's libraries a Redis keeps, this server's among them: a
/// fleet upgraded one version at a time runs two at once.
pub const LIBRARIES_KEPT: usize = 3;
/// How long since a library was last loaded before it may be removed.
const LIBRARY_IDLE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub(super) struct Routine {
    /// Its name in the library is `<library>_<name>`.
    name: &'static str,
    script: Script,
}

pub(super) struct Routines {
    pub enqueue: Routine,
    pub enqueue_lease: Routine,
    pub dequeue: Routine,
    pub ack: Routine,
    pub ack_lease: Routine,
    pub due: Routine,
    pub heartbeat: Routine,
    pub release: Routine,
    pub cancel: Routine,
    pub retry: Routine,
    pub reap: Routine,
    pub purge: Routine,
    /// The function library: every routine, the prelude once.
    library: String,
    /// The library's name: `nova_` and a digest of its code.
    name: String,
}

pub(super) static ROUTINES: LazyLock<Routines> = LazyLock::new(|| {
    let mut library = format!("#!lua name={NAME}\n{PRELUDE}\n{ACK_FN}\n{ENQUEUE_FN}\n{LEASE_FN}\n");
    let mut routine = |name: &'static str, parts: &[&str], body: &str| {
        library.push_str(&format!(
            "redis.register_function('{NAME}_{name}', function(_, args)\nbegin(args)\n{body}\nend)\n"
        ));
        // As a script: ARGV is Redis's global until the prelude's local
        // hides it.
        let script = Script::new(&format!(
            "local GIVEN = ARGV\n{PRELUDE}\n{}\nbegin(GIVEN)\n{body}",
            parts.join("\n")
        ));
        Routine { name, script }
    };
    let mut routines = Routines {
        enqueue: routine("enqueue", &[ENQUEUE_FN], include_str!("enqueue.lua")),
        enqueue_lease: routine(
            "enqueue_lease",
            &[ACK_FN, ENQUEUE_FN, LEASE_FN],
            include_str!("enqueue_lease.lua"),
        ),
        dequeue: routine("dequeue", &[LEASE_FN], include_str!("dequeue.lua")),
        ack: routine("ack", &[ACK_FN], include_str!("ack.lua")),
        ack_lease: routine(
            "ack_lease",
            &[ACK_FN, LEASE_FN],
            include_str!("ack_lease.lua"),
        ),
        due: routine("due", &[], include_str!("due.lua")),
        heartbeat: routine("heartbeat", &[], include_str!("heartbeat.lua")),
        release: routine("release", &[], include_str!("release.lua")),
        cancel: routine("cancel", &[], include_str!("cancel.lua")),
        retry: routine("retry", &[], include_str!("retry.lua")),
        reap: routine("reap", &[], include_str!("reap.lua")),
        purge: routine("purge", &[], include_str!("purge.lua")),
        library: String::new(),
        name: String::new(),
    };
    let digest = Script::new(&library).get_hash().to_string();
    routines.name = format!("nova_{}", &digest[..16]);
    routines.library = library.replace(NAME, &routines.name);
    routines
});

/// Runs routines on one Redis: as functions while it has them.
pub(super) struct Caller {
    functions: AtomicBool,
}

impl Caller {
    /// A caller for the Redis behind `conn`: functions if the library loads,
    /// scripts otherwise (or when `functions` is false).
    pub async fn new(conn: &ConnectionManager, functions: bool) -> Caller {
        Caller {
            functions: AtomicBool::new(functions && load(conn).await),
        }
    }

    /// Whether routines run as functions of the loaded library.
    pub fn uses_functions(&self) -> bool {
        self.functions.load(Ordering::Relaxed)
    }

    /// Run `routine` with the arguments `prefix`, then `args`.
    pub async fn call(
        &self,
        conn: &ConnectionManager,
        routine: &Routine,
        prefix: &str,
        args: &[Vec<u8>],
    ) -> Result<Value, RedisError> {
        if self.uses_functions() {
            match fcall(conn, routine, prefix, args).await {
                Err(e) if e.to_string().contains("Function not found") => {
                    if load(conn).await {
                        return fcall(conn, routine, prefix, args).await;
                    }
                    self.functions.store(false, Ordering::Relaxed);
                }
                answered => return answered,
            }
        }
        let mut call = routine.script.prepare_invoke();
        call.arg(prefix);
        for arg in args {
            call.arg(arg);
        }
        call.invoke_async(&mut conn.clone()).await
    }
}

async fn fcall(
    conn: &ConnectionManager,
    routine: &Routine,
    prefix: &str,
    args: &[Vec<u8>],
) -> Result<Value, RedisError> {
    let mut cmd = ::redis::cmd("FCALL");
    cmd.arg(format!("{}_{}", ROUTINES.name, routine.name))
        .arg(0)
        .arg(prefix);
    for arg in args {
        cmd.arg(arg);
    }
    cmd.query_async(&mut conn.clone()).await
}

/// Load the library; false when this Redis will not have it.
async fn load(conn: &ConnectionManager) -> bool {
    let loaded: Result<Value, RedisError> = ::redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&ROUTINES.library)
        .query_async(&mut conn.clone())
        .await;
    match loaded {
        // Another server of this version may have loaded it first.
        Ok(_) => {
            prune(conn).await;
            true
        }
        Err(e) if e.to_string().contains("already exists") => {
            prune(conn).await;
            true
        }
        Err(e) => {
            tracing::debug!(
                "Redis functions unavailable ({e}): the queue's routines run as scripts"
            );
            false
        }
    }
}

/// Record this library's load, and remove nova's libraries beyond the newest
/// [`LIBRARIES_KEPT`] that have been idle for [`LIBRARY_IDLE`], and those no
/// server recorded. Best effort: a Redis that refuses leaves them.
async fn prune(conn: &ConnectionManager) {
    let mut conn = conn.clone();
    let now = crate::clock::now_ms();
    let listed: Result<(Value, Vec<(String, i64)>), RedisError> = ::redis::pipe()
        .zadd(LOADED, &ROUTINES.name, now)
        .ignore()
        .cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("nova_*")
        .zrevrange_withscores(LOADED, 0, -1)
        .query_async(&mut conn)
        .await;
    let (libraries, loaded) = match listed {
        Ok(listed) => listed,
        Err(e) => {
            tracing::debug!("could not list Redis's function libraries: {e}");
            return;
        }
    };
    // Only names nova gives its libraries (the pattern ignores case).
    let present: Vec<String> = library_names(&libraries)
        .into_iter()
        .filter(|n| is_nova_library(n))
        .collect();
    let newest_first: Vec<&String> = loaded.iter().map(|(n, _)| n).collect();
    let keep: Vec<&String> = std::iter::once(&ROUTINES.name)
        .chain(
            newest_first
                .iter()
                .copied()
                .filter(|n| present.contains(n) && **n != ROUTINES.name),
        )
        .take(LIBRARIES_KEPT)
        .collect();
    let idle_since = now - LIBRARY_IDLE.as_millis() as i64;
    let doomed: Vec<&String> = present
        .iter()
        .filter(|n| !keep.contains(n))
        .filter(|n| {
            loaded
                .iter()
                .all(|(name, at)| name != *n || *at < idle_since)
        })
        .collect();
    let forgotten: Vec<&String> = newest_first
        .into_iter()
        .filter(|n| !present.contains(n) || doomed.contains(n))
        .collect();
    if doomed.is_empty() && forgotten.is_empty() {
        return;
    }
    let mut removal = ::redis::pipe();
    for name in &doomed {
        removal
            .cmd("FUNCTION")
            .arg("DELETE")
            .arg(name.as_str())
            .ignore();
    }
    for name in forgotten {
        removal.zrem(LOADED, name).ignore();
    }
    if let Err(e) = removal.query_async::<()>(&mut conn).await {
        tracing::debug!("could not remove old function libraries: {e}");
    } else if !doomed.is_empty() {
        tracing::info!(removed = ?doomed, "removed old nova function libraries from Redis");
    }
}

/// `nova_` and sixteen hex digits, as [`ROUTINES`] names a library.
fn is_nova_library(name: &str) -> bool {
    name.strip_prefix("nova_")
        .is_some_and(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The libraries' names in a `FUNCTION LIST` answer (a map or a flat list
/// of fields per library, as RESP3 or RESP2 gives it).
fn library_names(listed: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(libraries) = listed else {
        return Vec::new();
    };
    libraries
        .iter()
        .filter_map(|library| match library {
            Value::Map(fields) => fields
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some("library_name"))
                .and_then(|(_, v)| text(v)),
            Value::Array(fields) => fields
                .chunks(2)
                .find(|kv| text(&kv[0]).as_deref() == Some("library_name"))
                .and_then(|kv| kv.get(1).and_then(text)),
            _ => None,
        })
        .collect()
}
