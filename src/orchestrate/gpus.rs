//! The GPUs a worker process lends its tasks.
//!
//! An agent's `resources.gpus: N` gives each of its tasks N whole GPUs of
//! the host for as long as the task runs: they are named to it in
//! `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` by UUID (CUDA numbers
//! devices in its own order, NVML by PCI bus, so indices could name others)
//! and in `NOVA_GPUS` by NVML index, and no other task gets them meanwhile:
//! a task that finds too few free waits for them. On a host with fewer than
//! N GPUs the agent's tasks do not run.
//!
//! A GPU lent is also claimed for the whole host: a task holds an exclusive
//! `flock` on `gpu-<UUID>.lock` in the claims folder (`NOVA_GPU_LOCKS`, by
//! default `/run/lock/nova-gpus`) while it runs, so that two `nova worker`s,
//! or a worker and a local run, on one host never hand one GPU to two
//! tasks. The kernel drops a claim when its process ends, however it ends.
//! Where the folder cannot be used, GPUs are lent per process, with a
//! warning that says so.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

/// How often a task waiting for GPUs claimed by other processes looks again
/// (their release wakes nothing here).
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// The GPUs one process lends, and which are lent now.
pub struct Pool {
    /// (NVML index, UUID) of each GPU.
    devices: Vec<(u32, String)>,
    /// Why there are none, when NVML did not answer.
    absent: Option<String>,
    /// The folder of host-wide claims; `None`: lent per process.
    claims: Option<PathBuf>,
    lent: Mutex<Vec<bool>>,
    freed: Notify,
}

/// GPUs held by one task; dropping it gives them back.
pub struct Lease<'a> {
    pool: &'a Pool,
    slots: Vec<usize>,
    /// The open claim files; closing them drops the claims.
    _claims: Vec<File>,
}

impl Pool {
    /// A pool of `devices`, claimed host-wide in the folder `claims`.
    pub fn new(devices: Vec<(u32, String)>, claims: Option<PathBuf>) -> Pool {
        let lent = Mutex::new(vec![false; devices.len()]);
        Pool {
            devices,
            absent: None,
            claims,
            lent,
            freed: Notify::new(),
        }
    }

    /// This host's GPUs, asked of NVML once per process.
    pub fn host() -> &'static Pool {
        static HOST: OnceLock<Pool> = OnceLock::new();
        HOST.get_or_init(|| match crate::gpu::uuids() {
            Ok(devices) if devices.is_empty() => Pool::new(devices, None),
            Ok(devices) => Pool::new(devices, claims_folder()),
            Err(why) => Pool {
                absent: Some(why.0),
                ..Pool::new(Vec::new(), None)
            },
        })
    }

    /// How many GPUs the pool lends.
    pub fn count(&self) -> usize {
        self.devices.len()
    }

    /// How many GPUs not lent by this process another process holds now
    /// (its claim is taken): what a scheduler counts as busy beside its
    /// own tasks'. Each is looked at with a claim taken and dropped at once.
    pub fn claimed_elsewhere(&self) -> usize {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        (0..lent.len())
            .filter(|&i| !lent[i] && matches!(self.claim(i), Claim::Taken))
            .count()
    }

    /// `None` when the host has `n` GPUs to lend, else what it lacks
    /// (`1 GPU, this host has none: no NVIDIA driver found ...`).
    pub fn shortfall(&self, n: u32) -> Option<String> {
        let have = self.devices.len();
        if n as usize <= have {
            return None;
        }
        let want = if n == 1 {
            "1 GPU".into()
        } else {
            format!("{n} GPUs")
        };
        Some(match (have, &self.absent) {
            (0, Some(why)) => format!("{want}, this host has none: {why}"),
            (0, None) => format!("{want}, this host has none"),
            (have, _) => format!("{want}, this host has {have}"),
        })
    }

    /// `n` GPUs, the lowest-numbered free ones, once that many are free
    /// here and unclaimed by other processes. Never returns while the host
    /// has fewer than `n` ([`Pool::shortfall`]).
    pub async fn lend(&self, n: u32) -> Lease<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a release in between wakes it.
            freed.as_mut().enable();
            match self.try_lend(n) {
                Ok(lease) => return lease,
                Err(Busy::Here) => freed.await,
                Err(Busy::Elsewhere) => {
                    tokio::select! {
                        () = freed => {}
                        () = tokio::time::sleep(CLAIM_POLL) => {}
                    }
                }
            }
        }
    }

    fn try_lend(&self, n: u32) -> Result<Lease<'_>, Busy> {
        let mut lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        let free: Vec<usize> = (0..lent.len()).filter(|&i| !lent[i]).collect();
        if free.len() < n as usize {
            return Err(Busy::Here);
        }
        let mut slots = Vec::new();
        let mut claims = Vec::new();
        for i in free {
            if slots.len() == n as usize {
                break;
            }
            match self.claim(i) {
                Claim::Held(file) => claims.push(file),
                Claim::Unused => {}
                Claim::Taken => continue,
            }
            slots.push(i);
        }
        if slots.len() < n as usize {
            // The claims taken are dropped (and so released) here.
            return Err(Busy::Elsewhere);
        }
        for &i in &slots {
            lent[i] = true;
        }
        Ok(Lease {
            pool: self,
            slots,
            _claims: claims,
        })
    }

    /// Claim GPU `slot` for the host.
    fn claim(&self, slot: usize) -> Claim {
        let Some(folder) = &self.claims else {
            return Claim::Unused;
        };
        let path = folder.join(format!("gpu-{}.lock", self.devices[slot].1));
        let file = match open_claim(&path) {
            Ok(file) => file,
            Err(e) => {
                claims_off(folder, &e);
                return Claim::Unused;
            }
        };
        match file.try_lock() {
            Ok(()) => Claim::Held(file),
            Err(std::fs::TryLockError::WouldBlock) => Claim::Taken,
            Err(std::fs::TryLockError::Error(e)) => {
                claims_off(folder, &e);
                Claim::Unused
            }
        }
    }
}

/// Why no lease now: too few GPUs free in this process, or some of them
/// claimed by another.
enum Busy {
    Here,
    Elsewhere,
}

enum Claim {
    Held(File),
    /// Host-wide claims are off (no folder, or it cannot be used).
    Unused,
    /// Another process holds it.
    Taken,
}

/// The folder of host-wide GPU claims, made if missing (open to every user,
/// as `/tmp` is, so that each user's workers see the others' claims);
/// `None`, with a warning, where it cannot be made.
fn claims_folder() -> Option<PathBuf> {
    let folder = claims_path(std::env::var_os("NOVA_GPU_LOCKS"));
    match make_shared_folder(&folder) {
        Ok(()) => Some(folder),
        Err(e) => {
            claims_off(&folder, &e);
            None
        }
    }
}

/// The claims folder `NOVA_GPU_LOCKS` names (`setting`), or the default
/// where it is unset or empty.
fn claims_path(setting: Option<std::ffi::OsString>) -> PathBuf {
    match setting {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Path::new("/run/lock").is_dir() => PathBuf::from("/run/lock/nova-gpus"),
        _ => std::env::temp_dir().join("nova-gpus"),
    }
}

fn make_shared_folder(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(folder) {
        Ok(()) => std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o1777)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && folder.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A claim file, opened for writing where this user may (making it), else
/// for reading (a lock needs only an open file).
fn open_claim(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // A link planted in a shared folder is not followed.
    let nofollow = libc::O_NOFOLLOW;
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(nofollow)
        .open(path)
    {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nofollow)
            .open(path),
        Err(e) => Err(e),
    }
}

/// Say once per process that host-wide claims are off, and why.
fn claims_off(folder: &Path, e: &dyn std::fmt::Display) {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| tracing::warn!("{}", claims_off_message(folder, e)));
}

fn claims_off_message(folder: &Path, e: &dyn std::fmt::Display) -> String {
    format!(
        "cannot claim GPUs for the host in {} (NOVA_GPU_LOCKS): {e}; GPUs are lent per process",
        folder.display()
    )
}

impl Lease<'_> {
    /// The NVML indices of the GPUs held.
    pub fn indices(&self) -> Vec<u32> {
        self.slots.iter().map(|&i| self.pool.devices[i].0).collect()
    }

    /// The variables that name the GPUs to the task.
    pub fn env(&self) -> [(String, String); 3] {
        let join = |f: &dyn Fn(usize) -> String| {
            self.slots
                .iter()
                .map(|&i| f(i))
                .collect::<Vec<_>>()
                .join(",")
        };
        let uuids = join(&|i| self.pool.devices[i].1.clone());
        [
            ("CUDA_VISIBLE_DEVICES".into(), uuids.clone()),
            ("NVIDIA_VISIBLE_DEVICES".into(), uuids),
            (
                "NOVA_GPUS".into(),
                join(&|i| self.pool.devices[i].0.to_string()),
            ),
        ]
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut lent = self.pool.lent.lock().unwrap_or_else(|p| p.into_inner());
        for &i in &self.slots {
            lent[i] = false;
        }
        drop(lent);
        self.pool.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn four() -> Pool {
        Pool::new((0..4).map(|i| (i, format!("GPU-{i}"))).collect(), None)
    }

    #[test]
    fn a_host_with_too_few_says_what_it_has() {
        let pool = four();
        assert_eq!(pool.shortfall(4), None);
        assert_eq!(pool.shortfall(5).unwrap(), "5 GPUs, this host has 4");
        let none = Pool {
            absent: Some("no NVIDIA driver found".into()),
            ..Pool::new(Vec::new(), None)
        };
        assert_eq!(
            none.shortfall(1).unwrap(),
            "1 GPU, this host has none: no NVIDIA driver found"
        );
        assert_eq!(none.shortfall(0), None);
    }

    #[tokio::test]
    async fn tasks_hold_different_gpus_and_a_third_waits_for_one_to_end() {
        let pool = four();
        let a = pool.lend(2).await;
        let b = pool.lend(1).await;
        assert_eq!((a.indices(), b.indices()), (vec![0, 1], vec![2]));
        assert_eq!(
            a.env()[0],
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                "GPU-0,GPU-1".to_string()
            )
        );
        assert_eq!(a.env()[2], ("NOVA_GPUS".to_string(), "0,1".to_string()));
        // Two wanted, one free: it waits until `a` ends.
        let waiting = pool.lend(2);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err()
        );
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("lent once two were free");
        assert_eq!(c.indices(), vec![0, 1]);
        drop(b);
        assert_eq!(pool.lend(2).await.indices(), vec![2, 3]);
    }

    fn four_claimed_in(folder: &Path) -> Pool {
        Pool::new(
            (0..4).map(|i| (i, format!("GPU-{i}"))).collect(),
            Some(folder.to_path_buf()),
        )
    }

    /// Two pools on one claims folder are two processes on one host: each
    /// holds its claims through its own open file, as they would.
    #[tokio::test]
    async fn two_pools_on_one_host_never_lend_one_gpu_twice() {
        let folder = tempfile::tempdir().unwrap();
        let (here, there) = (
            four_claimed_in(folder.path()),
            four_claimed_in(folder.path()),
        );
        let a = here.lend(2).await;
        let b = there.lend(1).await;
        assert_eq!((a.indices(), b.indices()), (vec![0, 1], vec![2]));
        assert_eq!(
            (here.claimed_elsewhere(), there.claimed_elsewhere()),
            (1, 2)
        );
        assert!(folder.path().join("gpu-GPU-0.lock").is_file());
        // Three wanted, one unclaimed: it waits until `a`'s are released.
        let waiting = there.lend(3);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), waiting.as_mut())
                .await
                .is_err()
        );
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("lent once the other pool released two");
        assert_eq!(c.indices(), vec![0, 1, 3]);
    }

    #[tokio::test]
    async fn a_gpu_another_process_holds_is_passed_over_until_it_ends() {
        let folder = tempfile::tempdir().unwrap();
        let claim = folder.path().join("gpu-GPU-0.lock");
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 9>\"$1\"; flock 9; echo held; exec sleep 60")
            .arg("sh")
            .arg(&claim)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "held\n");
        let pool = four_claimed_in(folder.path());
        let one = pool.lend(1).await;
        assert_eq!(one.indices(), vec![1]);
        drop(one);
        let all = pool.lend(4);
        tokio::pin!(all);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), all.as_mut())
                .await
                .is_err()
        );
        assert_eq!(pool.claimed_elsewhere(), 1);
        holder.kill().unwrap();
        holder.wait().unwrap();
        let all = tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("lent once the other process ended");
        assert_eq!(all.indices(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn nova_gpu_locks_names_the_folder_and_empty_means_the_default() {
        assert_eq!(
            claims_path(Some("/srv/gpu-claims".into())),
            PathBuf::from("/srv/gpu-claims")
        );
        assert_eq!(claims_path(Some("".into())), claims_path(None));
        assert!(claims_path(None).ends_with("nova-gpus"));
    }

    #[test]
    fn a_folder_that_cannot_be_made_turns_claims_off() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let under_a_file = file.path().join("gpus");
        let e = make_shared_folder(&under_a_file).unwrap_err();
        let said = claims_off_message(&under_a_file, &e);
        assert!(
            said.starts_with(&format!(
                "cannot claim GPUs for the host in {} (NOVA_GPU_LOCKS): ",
                under_a_file.display()
            )) && said.ends_with("; GPUs are lent per process"),
            "{said}"
        );
        // A file where the folder should be is refused too.
        assert!(make_shared_folder(file.path()).is_err());
        let folder = tempfile::tempdir().unwrap();
        let made = folder.path().join("gpus");
        make_shared_folder(&made).unwrap();
        make_shared_folder(&made).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
    }
}
