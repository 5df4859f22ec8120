//! Whether a shared server's connected workers take the queues a run's
//! tasks wait in.
//!
//! On a shared server a task that needs N GPUs waits in `nova-jobs-gpus-N`,
//! which only workers on hosts with N or more GPUs take by default; with
//! none connected, the run would wait without a word. While a run lasts it
//! asks the server every few seconds, and says once that tasks wait in a
//! queue no connected worker takes (after two looks in a row, so a worker
//! still connecting is not reported), and again once one does.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use crate::queue::client::Client;
use crate::queue::proto::{ListWorkersRequest, StatsRequest};

/// How often the server is asked.
const LOOK_EVERY: Duration = Duration::from_secs(3);

/// Watch `queues` on the server at `url` behind `client` until dropped,
/// telling `say` what the run's user should know.
pub async fn watch(
    mut client: Client,
    url: &str,
    queues: Vec<String>,
    say: impl Fn(&str),
) -> Infallible {
    let mut state = Takers {
        url: url.to_string(),
        ..Takers::default()
    };
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A server that does not answer now is the run's own concern (its
        // next enqueue or ack says so); the watch looks again later.
        let Ok(stats) = client.stats(StatsRequest {}).await else {
            continue;
        };
        let Ok(workers) = client.list_workers(ListWorkersRequest {}).await else {
            continue;
        };
        let pending: BTreeMap<&str, u64> = stats
            .get_ref()
            .counts
            .iter()
            .filter(|c| c.status == "PENDING" && c.count > 0)
            .map(|c| (c.queue.as_str(), c.count))
            .collect();
        let workers = &workers.get_ref().workers;
        let taken = |queue: &str| {
            workers
                .iter()
                .any(|w| w.queues.is_empty() || w.queues.iter().any(|q| q == queue))
        };
        for queue in &queues {
            let waiting = pending.get(queue.as_str()).copied().unwrap_or(0);
            if let Some(line) = state.look(queue, waiting, taken(queue)) {
                say(&line);
            }
        }
    }
}

/// What has been seen of each queue, so that each change is said once.
#[derive(Default)]
struct Takers {
    /// The server's address, for the command that would start a worker.
    url: String,
    /// Queues seen untaken with tasks waiting at the last look.
    untaken_once: BTreeSet<String>,
    /// Queues reported untaken.
    reported: BTreeSet<String>,
}

impl Takers {
    /// One look at `queue`: `waiting` tasks pending in it, `taken` whether
    /// a connected worker takes it. The line to say, if any.
    fn look(&mut self, queue: &str, waiting: u64, taken: bool) -> Option<String> {
        if taken {
            self.untaken_once.remove(queue);
            return self
                .reported
                .remove(queue)
                .then(|| format!("a connected worker takes queue {queue} now"));
        }
        if waiting == 0 || self.reported.contains(queue) {
            self.untaken_once.remove(queue);
            return None;
        }
        if !self.untaken_once.insert(queue.to_string()) {
            self.untaken_once.remove(queue);
            self.reported.insert(queue.to_string());
            let tasks = if waiting == 1 {
                "1 task waits".to_string()
            } else {
                format!("{waiting} tasks wait")
            };
            return Some(format!(
                "{tasks} in queue {queue}, which no connected worker takes: {}",
                self.who_takes(queue)
            ));
        }
        None
    }

    /// Who would take `queue`: for a GPU queue, a worker on a host with
    /// enough GPUs (or one told to take it).
    fn who_takes(&self, queue: &str) -> String {
        let url = &self.url;
        match queue
            .strip_prefix(super::worker::JOBS_QUEUE)
            .and_then(|rest| rest.strip_prefix("-gpus-"))
        {
            Some(n) => format!(
                "start `nova worker --server {url}` on a host with {n} or more GPUs, or one with `--queues {queue}`"
            ),
            None => format!("start `nova worker --server {url}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_reported_after_two_looks_and_once_again_when_taken() {
        let mut t = Takers {
            url: "http://gpu.example:6682".into(),
            ..Takers::default()
        };
        let q = "nova-jobs-gpus-2";
        assert_eq!(t.look(q, 1, false), None);
        let said = t.look(q, 1, false).unwrap();
        assert_eq!(
            said,
            "1 task waits in queue nova-jobs-gpus-2, which no connected worker takes: \
             start `nova worker --server http://gpu.example:6682` on a host with 2 or more GPUs, \
             or one with `--queues nova-jobs-gpus-2`"
        );
        assert_eq!(t.look(q, 3, false), None, "said once");
        assert_eq!(
            t.look(q, 3, true).unwrap(),
            "a connected worker takes queue nova-jobs-gpus-2 now"
        );
        assert_eq!(t.look(q, 3, true), None);
    }

    #[test]
    fn a_worker_connecting_or_an_empty_queue_is_not_reported() {
        let mut t = Takers {
            url: "http://127.0.0.1:6682".into(),
            ..Takers::default()
        };
        let q = "nova-jobs";
        assert_eq!(t.look(q, 2, false), None);
        assert_eq!(t.look(q, 2, true), None, "a worker came in time");
        assert_eq!(t.look(q, 2, false), None);
        assert_eq!(t.look(q, 0, false), None, "nothing waits");
        assert_eq!(t.look(q, 2, false), None);
        assert!(t
            .look(q, 2, false)
            .unwrap()
            .starts_with("2 tasks wait in queue nova-jobs, which no connected worker takes: start `nova worker --server http://127.0.0.1:6682`"));
    }
}
