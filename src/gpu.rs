//! NVIDIA GPUs through NVML, loaded at run time.
//!
//! `libnvidia-ml.so.1` is opened on first use; a machine without the driver
//! gets [`Unavailable`] with a plain reason ("no NVIDIA driver found"), never
//! a crash. The library is opened once per process and shared.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use serde::Serialize;

/// Why there are no GPU figures on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

fn nvml() -> Result<&'static Nvml, Unavailable> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| {
        Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(_) => {
                "no NVIDIA driver found (libnvidia-ml.so.1 could not be loaded)".to_string()
            }
            NvmlError::DriverNotLoaded => {
                "no NVIDIA driver found (the kernel module is not loaded)".to_string()
            }
            other => format!("NVML did not start: {other}"),
        })
    })
    .as_ref()
    .map_err(|e| Unavailable(e.clone()))
}

/// One GPU as `nova setup` reports it: its load now, and what identifies
/// and ails it.
fn nvml_error(e: NvmlError) -> Unavailable {
    Unavailable(format!("NVML: {e}"))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Device {
    #[serde(flatten)]
    pub now: Reading,
    pub uuid: String,
    pub ecc_errors: Option<u64>,
    pub persistence_mode: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Inventory {
    pub driver: String,
    /// CUDA version the driver supports, as `12.4`.
    pub cuda: String,
    pub devices: Vec<Device>,
}

/// Every GPU with its figures now.
pub fn inventory() -> Result<Inventory, Unavailable> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_error)?;
    let cuda = nvml
        .sys_cuda_driver_version()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
        .unwrap_or_default();
    let mut devices = Vec::new();
    for index in 0..count {
        let d = nvml.device_by_index(index).map_err(nvml_error)?;
        devices.push(Device {
            now: read(index, &d),
            uuid: d.uuid().unwrap_or_default(),
            ecc_errors: d
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                .ok(),
            persistence_mode: d.is_in_persistent_mode().ok(),
        });
    }
    Ok(Inventory {
        driver: nvml.sys_driver_version().unwrap_or_default(),
        cuda,
        devices,
    })
}

/// Every GPU's index and UUID, in NVML's (PCI bus) order.
pub fn uuids() -> Result<Vec<(u32, String)>, Unavailable> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_error)?;
    (0..count)
        .map(|index| {
            let d = nvml.device_by_index(index).map_err(nvml_error)?;
            Ok((index, d.uuid().map_err(nvml_error)?))
        })
        .collect()
}

/// What one GPU is doing now: the figures `nova monitor` samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reading {
    pub index: u32,
    pub name: String,
    /// Percent of the last sample period a kernel was running.
    pub utilization: Option<u32>,
    pub memory_used: u64,
    pub memory_total: u64,
    /// Degrees Celsius.
    pub temperature: Option<u32>,
    /// Watts.
    pub power: Option<f64>,
}

/// Every GPU's load now. Fewer NVML calls than [`inventory`]: no UUID, ECC
/// counters or persistence mode, which do not change between samples.
pub fn readings() -> Result<Vec<Reading>, Unavailable> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(nvml_error)?;
    (0..count)
        .map(|index| {
            Ok(read(
                index,
                &nvml.device_by_index(index).map_err(nvml_error)?,
            ))
        })
        .collect()
}

fn read(index: u32, d: &nvml_wrapper::Device<'_>) -> Reading {
    let memory = d.memory_info().ok();
    Reading {
        index,
        name: d.name().unwrap_or_default(),
        utilization: d.utilization_rates().ok().map(|u| u.gpu),
        memory_used: memory.as_ref().map_or(0, |m| m.used),
        memory_total: memory.as_ref().map_or(0, |m| m.total),
        temperature: d.temperature(TemperatureSensor::Gpu).ok(),
        power: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
    }
}

/// GPU memory held by the processes `pids`, and the utilisation of the
/// devices they run on (the highest of them); `None` without NVML.
pub fn usage_of(pids: &[u32]) -> Option<(u64, Option<u32>)> {
    let nvml = nvml().ok()?;
    let count = nvml.device_count().ok()?;
    let mut memory = 0;
    let mut utilization: Option<u32> = None;
    for index in 0..count {
        let Ok(d) = nvml.device_by_index(index) else {
            continue;
        };
        let mut procs = d.running_compute_processes().unwrap_or_default();
        procs.extend(d.running_graphics_processes().unwrap_or_default());
        let ours: Vec<_> = procs.iter().filter(|p| pids.contains(&p.pid)).collect();
        if ours.is_empty() {
            continue;
        }
        for p in ours {
            if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                memory += bytes;
            }
        }
        if let Ok(u) = d.utilization_rates() {
            utilization = Some(utilization.map_or(u.gpu, |x| x.max(u.gpu)));
        }
    }
    Some((memory, utilization))
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_driver_the_reason_is_plain() {
        // On a machine with the driver this lists the GPUs; without one it
        // must say so plainly. Either way it must not panic.
        match super::inventory() {
            Ok(inv) => assert!(!inv.driver.is_empty()),
            Err(e) => assert!(
                e.0.contains("no NVIDIA driver found") || e.0.starts_with("NVML"),
                "{e}"
            ),
        }
    }
}
