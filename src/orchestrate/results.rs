//! Each task's results folder (`$NOVA_RESULTS`): an empty folder while it
//! runs, filed under `runs/<run>/<agent>/results/<task>` afterwards when the
//! task left something in it.
//!
//! Most tasks write nothing there, and making a folder is dear: it allocates
//! an inode, which on ext4 without a journal costs 50 to 600 µs (the
//! allocator steps over every recently deleted inode one by one), more than
//! running `true` itself. So a task gets a folder lent from a small pool
//! (`runs/<run>/.results-<pid>-<n>`); one it leaves empty goes back to the
//! pool for the next task, one with files in it is renamed to its place
//! under the agent's `results` (a rename allocates nothing). The task sees
//! the same either way: an empty folder of its own. Folders go back only to
//! tasks that run as the same user.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Empty folders waiting for the next task, with the user a task ran as in
/// each (`None`: nova's own), most recently returned last.
static SPARE: Mutex<Vec<(PathBuf, Option<u32>)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Spare folders kept at most (a long-lived worker sees many runs).
const KEEP: usize = 16;
const PREFIX: &str = ".results-";

/// Where the results of `task` of `agent` end up.
pub fn filed(run_dir: &Path, agent: &str, task: &str) -> PathBuf {
    run_dir.join(agent).join("results").join(task)
}

/// A folder lent to one task while it runs.
#[derive(Debug)]
pub struct Lent {
    path: PathBuf,
    user: Option<u32>,
}

fn spare() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Option<u32>)>> {
    SPARE.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty folder for a task of the run in `run_dir` that runs as `user`
/// (a uid; `None`: nova's own user). A folder is lent again only to a task
/// of the same user: one a service user's task had is that user's to
/// write in (a process of its that outlived the task could plant a link
/// there), never a root task's. One that cannot be made (a full or
/// read-only disk) is said in the log; the task still runs, and finds no
/// folder at `$NOVA_RESULTS`.
pub fn lend(run_dir: &Path, user: Option<u32>) -> Lent {
    let reused = {
        let mut spare = spare();
        let at = spare
            .iter()
            .rposition(|(p, u)| p.parent() == Some(run_dir) && *u == user);
        at.map(|i| spare.remove(i).0)
    };
    if let Some(path) = reused {
        return Lent { path, user };
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = run_dir.join(format!("{PREFIX}{}-{n}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&path) {
        tracing::warn!(folder = %path.display(), error = %e, "cannot make a results folder");
    }
    Lent { path, user }
}

impl Lent {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// After the task: what it left goes to `dest` (an earlier attempt's
    /// files there are kept, those of the same name replaced); the folder,
    /// when empty, goes back to the pool.
    pub fn file(self, dest: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return; // The task removed it.
        };
        let entries: Vec<_> = entries.flatten().collect();
        if !entries.is_empty() {
            if let Some(parent) = dest.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if std::fs::rename(&self.path, dest).is_ok() {
                return;
            }
            if let Err(e) = std::fs::create_dir_all(dest) {
                tracing::warn!(results = %dest.display(), error = %e, "cannot file the task's results");
                return;
            }
            for entry in entries {
                let to = dest.join(entry.file_name());
                if let Err(e) = std::fs::rename(entry.path(), &to) {
                    tracing::warn!(results = %to.display(), error = %e, "cannot file the task's results");
                }
            }
        }
        let mut spare = spare();
        spare.push((self.path, self.user));
        if spare.len() > KEEP {
            let _ = std::fs::remove_dir(spare.remove(0).0);
        }
    }
}

/// At the end of a run: remove its spare folders.
pub fn tidy(run_dir: &Path) {
    spare().retain(|(p, _)| {
        let ours = p.parent() == Some(run_dir);
        if ours {
            let _ = std::fs::remove_dir(p);
        }
        !ours
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_folder_is_lent_again_and_results_are_filed_under_the_task() {
        let run = tempfile::tempdir().unwrap();
        let first = lend(run.path(), None);
        let scratch = first.path().to_path_buf();
        assert!(scratch.is_dir());
        first.file(&filed(run.path(), "a", "t1"));
        assert!(
            !run.path().join("a").exists(),
            "nothing to file, nothing made"
        );

        let second = lend(run.path(), None);
        assert_eq!(second.path(), scratch, "the empty folder is lent again");
        std::fs::write(second.path().join("junit.xml"), "<testsuite/>").unwrap();
        second.file(&filed(run.path(), "a", "t2"));
        let t2 = filed(run.path(), "a", "t2");
        assert!(t2.join("junit.xml").is_file());
        assert!(!scratch.exists(), "the folder itself was filed");

        // Another attempt's files join the first's, the same name replaced.
        std::fs::write(t2.join("other.xml"), "<testsuite/>").unwrap();
        let third = lend(run.path(), None);
        assert_eq!(std::fs::read_dir(third.path()).unwrap().count(), 0);
        std::fs::write(third.path().join("junit.xml"), "<testsuites/>").unwrap();
        let lent = third.path().to_path_buf();
        third.file(&t2);
        assert_eq!(
            std::fs::read_to_string(t2.join("junit.xml")).unwrap(),
            "<testsuites/>"
        );
        assert!(t2.join("other.xml").is_file());
        assert!(lent.is_dir(), "emptied, it goes back to the pool");

        // Another user's task gets a folder of its own.
        let theirs = lend(run.path(), Some(65534));
        assert_ne!(theirs.path(), lent);
        let theirs_path = theirs.path().to_path_buf();
        theirs.file(&filed(run.path(), "a", "t4"));
        let again = lend(run.path(), None);
        assert_eq!(again.path(), lent);
        again.file(&filed(run.path(), "a", "t5"));

        tidy(run.path());
        assert!(!lent.exists());
        assert!(!theirs_path.exists());
        let left: Vec<_> = std::fs::read_dir(run.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["a"]);
    }
}
