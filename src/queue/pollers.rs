//! Workers that poll: clients that take tasks with `Dequeue` (or an ack's
//! `next`) instead of holding a Work stream, as every client of the
//! original proto does. A stream is listed while it is open; a poller has
//! no connection to watch, so the server notes it in the store when its
//! first call comes, again at most every [`WORKER_REFRESH`] while it keeps
//! calling (or waits in a long poll) or when it asks for other queues,
//! and the store stops listing it [`WORKER_TTL_MS`] after the last note
//! (20 to 30 s after its last call), as it does a stream whose server
//! went away. Only what the call says is known: its worker id, its queues
//! and the address it called from; its version, pid and concurrency are
//! unknown (empty and 0). Calls made inside the server's own process (a
//! local run's workers, which come and go with their run) are not listed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::model::{WORKER_REFRESH, WORKER_TTL_MS, WorkerRecord};

/// Pollers remembered at most; a caller past it (say, one that makes up a
/// new worker id for every call) is not listed, rather than costing the
/// store a write a call.
const MOST: usize = 4096;

/// When each poller this server has seen was first seen and last noted.
#[derive(Default)]
pub(super) struct Pollers {
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    connected_at: i64,
    noted_at: i64,
    queues: Vec<String>,
}

impl Pollers {
    /// A call from poller `id` taking `queues`, from `peer`, at `now`: the
    /// record to write when it is due for one (its first call, its last
    /// note is [`WORKER_REFRESH`] old, or it asks for other queues). Callers without an id are not
    /// listed: nothing would tell two of them apart.
    pub(super) fn called(
        &self,
        id: &str,
        queues: &[String],
        peer: SocketAddr,
        now: i64,
    ) -> Option<WorkerRecord> {
        self.note(id, queues, peer, now, WORKER_REFRESH.as_millis() as i64)
    }

    /// Poller `id` still waits in a long poll at `now`: the record to
    /// write, whenever it was last noted.
    pub(super) fn waiting(
        &self,
        id: &str,
        queues: &[String],
        peer: SocketAddr,
        now: i64,
    ) -> Option<WorkerRecord> {
        self.note(id, queues, peer, now, 0)
    }

    /// The record to write for poller `id` at `now` if it was last noted
    /// `refresh` ms ago or more.
    fn note(
        &self,
        id: &str,
        queues: &[String],
        peer: SocketAddr,
        now: i64,
        refresh: i64,
    ) -> Option<WorkerRecord> {
        if id.is_empty() {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let connected_at = match seen.get_mut(id) {
            Some(s) if now - s.noted_at < refresh && s.queues == queues => return None,
            // Not heard of for longer than the store lists it: a new visit.
            Some(s) if now - s.noted_at >= WORKER_TTL_MS => {
                *s = Seen {
                    connected_at: now,
                    noted_at: now,
                    queues: queues.to_vec(),
                };
                now
            }
            Some(s) => {
                s.noted_at = now;
                s.queues = queues.to_vec();
                s.connected_at
            }
            None => {
                if seen.len() >= MOST {
                    seen.retain(|_, s| now - s.noted_at < WORKER_TTL_MS);
                    if seen.len() >= MOST {
                        return None;
                    }
                }
                seen.insert(
                    id.to_string(),
                    Seen {
                        connected_at: now,
                        noted_at: now,
                        queues: queues.to_vec(),
                    },
                );
                now
            }
        };
        Some(WorkerRecord {
            id: id.to_string(),
            host: peer.ip().to_string(),
            version: String::new(),
            pid: 0,
            concurrency: 0,
            queues: queues.to_vec(),
            connected_at,
            last_seen_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: i64 = WORKER_REFRESH.as_millis() as i64;

    fn peer() -> SocketAddr {
        "192.0.2.7:40000".parse().unwrap()
    }

    #[test]
    fn a_poller_is_noted_on_its_first_call_and_then_once_a_refresh() {
        let p = Pollers::default();
        let first = p.called("w1", &["q".into()], peer(), 1_000).unwrap();
        assert_eq!(first.host, "192.0.2.7");
        assert_eq!((first.pid, first.concurrency), (0, 0));
        assert_eq!(first.queues, ["q"]);
        assert_eq!((first.connected_at, first.last_seen_at), (1_000, 1_000));
        assert!(
            p.called("w1", &["q".into()], peer(), 1_000 + REFRESH - 1)
                .is_none()
        );
        let again = p
            .called("w1", &["q".into()], peer(), 1_000 + REFRESH)
            .unwrap();
        assert_eq!(
            (again.connected_at, again.last_seen_at),
            (1_000, 1_000 + REFRESH)
        );
        // A long poll's wait is noted whenever it is asked.
        let waited = p.called("w1", &["q".into()], peer(), 1_000 + REFRESH + 1);
        assert!(waited.is_none());
        let waited = p.waiting("w1", &["q".into()], peer(), 1_000 + REFRESH + 1);
        assert_eq!(waited.unwrap().last_seen_at, 1_000 + REFRESH + 1);
        // Other queues are noted at once.
        let moved = p.called("w1", &["r".into()], peer(), 1_000 + REFRESH + 2);
        assert_eq!(moved.unwrap().queues, ["r"]);
        // Another poller is noted on its own schedule.
        assert!(p.called("w2", &[], peer(), 1_001).is_some());
    }

    #[test]
    fn a_poller_back_after_its_listing_lapsed_is_a_new_visit() {
        let p = Pollers::default();
        p.called("w1", &[], peer(), 1_000).unwrap();
        let back = p.called("w1", &[], peer(), 1_000 + WORKER_TTL_MS).unwrap();
        assert_eq!(back.connected_at, 1_000 + WORKER_TTL_MS);
    }

    #[test]
    fn callers_without_an_id_are_not_listed() {
        assert!(Pollers::default().called("", &[], peer(), 1).is_none());
    }

    #[test]
    fn past_the_most_remembered_only_live_pollers_are_kept() {
        let p = Pollers::default();
        for i in 0..MOST {
            p.called(&format!("w{i}"), &[], peer(), 1_000).unwrap();
        }
        assert!(p.called("late", &[], peer(), 1_001).is_none());
        // Once the first ones are no longer listed, room is made for new ones.
        assert!(
            p.called("later", &[], peer(), 1_000 + WORKER_TTL_MS)
                .is_some()
        );
    }
}
