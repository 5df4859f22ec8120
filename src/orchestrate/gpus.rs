//! The GPUs a worker process lends its tasks.
//!
//! An agent's `resources.gpus: N` gives each of its tasks N whole GPUs of
//! the host for as long as the task runs: they are named to it in
//! `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` by UUID (CUDA numbers
//! devices in its own order, NVML by PCI bus, so indices could name others)
//! and in `NOVA_GPUS` by NVML index, and no other task of this process gets
//! them meanwhile: a task that finds too few free waits for them. On a host
//! with fewer than N GPUs the agent's tasks do not run. The pool is one
//! process's: two `nova worker`s on one host each lend every GPU.

use std::sync::{Mutex, OnceLock};

use tokio::sync::Notify;

/// The GPUs one process lends, and which are lent now.
pub struct Pool {
    /// (NVML index, UUID) of each GPU.
    devices: Vec<(u32, String)>,
    /// Why there are none, when NVML did not answer.
    absent: Option<String>,
    lent: Mutex<Vec<bool>>,
    freed: Notify,
}

/// GPUs held by one task; dropping it gives them back.
pub struct Lease<'a> {
    pool: &'a Pool,
    slots: Vec<usize>,
}

impl Pool {
    pub fn new(devices: Vec<(u32, String)>) -> Pool {
        let lent = Mutex::new(vec![false; devices.len()]);
        Pool {
            devices,
            absent: None,
            lent,
            freed: Notify::new(),
        }
    }

    /// This host's GPUs, asked of NVML once per process.
    pub fn host() -> &'static Pool {
        static HOST: OnceLock<Pool> = OnceLock::new();
        HOST.get_or_init(|| match crate::gpu::uuids() {
            Ok(devices) => Pool::new(devices),
            Err(why) => Pool {
                absent: Some(why.0),
                ..Pool::new(Vec::new())
            },
        })
    }

    /// How many GPUs the pool lends.
    pub fn count(&self) -> usize {
        self.devices.len()
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

    /// `n` GPUs, the lowest-numbered free ones, once that many are free.
    /// Never returns while the host has fewer than `n` ([`Pool::shortfall`]).
    pub async fn lend(&self, n: u32) -> Lease<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a release in between wakes it.
            freed.as_mut().enable();
            if let Some(lease) = self.try_lend(n) {
                return lease;
            }
            freed.await;
        }
    }

    fn try_lend(&self, n: u32) -> Option<Lease<'_>> {
        let mut lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        let free: Vec<usize> = (0..lent.len()).filter(|&i| !lent[i]).collect();
        if free.len() < n as usize {
            return None;
        }
        let slots = free[..n as usize].to_vec();
        for &i in &slots {
            lent[i] = true;
        }
        Some(Lease { pool: self, slots })
    }
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
        Pool::new((0..4).map(|i| (i, format!("GPU-{i}"))).collect())
    }

    #[test]
    fn a_host_with_too_few_says_what_it_has() {
        let pool = four();
        assert_eq!(pool.shortfall(4), None);
        assert_eq!(pool.shortfall(5).unwrap(), "5 GPUs, this host has 4");
        let none = Pool {
            absent: Some("no NVIDIA driver found".into()),
            ..Pool::new(Vec::new())
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
}
