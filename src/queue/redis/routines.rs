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
            &[ENQUEUE_FN, LEASE_FN],
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
        Ok(_) => true,
        // Another server of this version loaded it first.
        Err(e) if e.to_string().contains("already exists") => true,
        Err(e) => {
            tracing::debug!(
                "Redis functions unavailable ({e}): the queue's routines run as scripts"
            );
            false
        }
    }
}
