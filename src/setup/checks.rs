//! Host checks: each reads the real machine and says ok, warn, fail or
//! skipped, with a plain reason. A failed *required* check fails `nova setup`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::config::SetupConfig;

pub const DEFAULT_MIN_DISK: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_MIN_MEMORY: u64 = 2 * 1024 * 1024 * 1024;
const NET_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// A failure of a required check makes `nova setup` exit 1.
    pub required: bool,
    /// Figures for scripts (`--json`).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

fn check(name: &str, status: Status, detail: impl Into<String>, required: bool) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        required,
        data: serde_json::Value::Null,
    }
}

fn gib(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// The first line a program prints for `args`, if it runs.
pub fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

pub fn run_all(cfg: &SetupConfig, home: &Path) -> Vec<Check> {
    let mut checks = match sysinfo::System::new_all() {
        Ok(mut sys) => {
            sys.refresh_all();
            vec![cpu(&sys), memory(&sys, cfg)]
        }
        Err(e) => vec![check(
            "cpu and memory",
            Status::Warn,
            format!("cannot read them: {e}"),
            false,
        )],
    };
    checks.extend([os(), time_sync()]);
    checks.extend(disks(cfg, home));
    checks.extend(gpus(cfg));
    checks.extend(network(cfg));
    checks.extend(tools());
    checks
}

fn cpu(sys: &sysinfo::System) -> Check {
    let cpus = sys.cpus();
    let model = cpus
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let load = sysinfo::System::load_average().unwrap_or(sysinfo::LoadAvg {
        one: 0.0,
        five: 0.0,
        fifteen: 0.0,
    });
    let mut c = check(
        "cpu",
        Status::Ok,
        format!(
            "{model}, {} cores, load {:.2} {:.2} {:.2}",
            cpus.len(),
            load.one,
            load.five,
            load.fifteen
        ),
        false,
    );
    if load.five > cpus.len() as f64 * 2.0 {
        c.status = Status::Warn;
        c.detail.push_str(" (heavily loaded)");
    }
    c.data = serde_json::json!({"model": model, "cores": cpus.len(), "load": [load.one, load.five, load.fifteen]});
    c
}

fn memory(sys: &sysinfo::System, cfg: &SetupConfig) -> Check {
    let min = cfg.min_memory.map_or(DEFAULT_MIN_MEMORY, |b| b.as_u64());
    let (total, available) = (sys.total_memory(), sys.available_memory());
    let (swap_total, swap_used) = (sys.total_swap(), sys.used_swap());
    let detail = format!(
        "{} total, {} available; swap {} of {} used",
        gib(total),
        gib(available),
        gib(swap_used),
        gib(swap_total)
    );
    let mut c = if total < min {
        check(
            "memory",
            Status::Fail,
            format!("{detail}: less than the {} required", gib(min)),
            true,
        )
    } else {
        check("memory", Status::Ok, detail, true)
    };
    c.data = serde_json::json!({"total": total, "available": available, "swap_total": swap_total, "swap_used": swap_used});
    c
}

fn disks(cfg: &SetupConfig, home: &Path) -> Vec<Check> {
    let min = cfg.min_disk_free.map_or(DEFAULT_MIN_DISK, |b| b.as_u64());
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return vec![check(
            "disk",
            Status::Warn,
            "cannot list the mounted file systems",
            false,
        )];
    };
    // The nearest existing folder: $NOVA_HOME may not exist yet.
    let mut home_dir = home.to_path_buf();
    while !home_dir.exists() && home_dir.pop() {}
    let home_dir = std::fs::canonicalize(&home_dir).unwrap_or(home_dir);
    let mut out = Vec::new();
    for (label, path) in [
        ("disk $NOVA_HOME", home_dir.as_path()),
        ("disk /", Path::new("/")),
    ] {
        let disk = disks
            .iter()
            .filter(|d| path.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let c = match disk {
            None => check(
                label,
                Status::Warn,
                format!("no mounted file system found for {}", path.display()),
                false,
            ),
            Some(d) => {
                let free = d.available_space();
                let detail = format!(
                    "{} free of {} on {} ({})",
                    gib(free),
                    gib(d.total_space()),
                    d.mount_point().display(),
                    path.display()
                );
                let mut c = if free < min {
                    check(
                        label,
                        Status::Fail,
                        format!("{detail}: less than the {} required", gib(min)),
                        true,
                    )
                } else {
                    check(label, Status::Ok, detail, true)
                };
                c.data = serde_json::json!({"free": free, "total": d.total_space(), "mount": d.mount_point()});
                c
            }
        };
        out.push(c);
    }
    out
}

fn os() -> Check {
    let name =
        sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.to_string());
    let kernel = sysinfo::System::kernel_version().unwrap_or_default();
    let mut c = check(
        "os",
        Status::Ok,
        format!("{name}, kernel {kernel}, {}", std::env::consts::ARCH),
        false,
    );
    c.data = serde_json::json!({"os": name, "kernel": kernel, "arch": std::env::consts::ARCH});
    c
}

fn time_sync() -> Check {
    if let Some(v) = version_of("timedatectl", &["show", "-p", "NTPSynchronized", "--value"]) {
        return match v.as_str() {
            "yes" => check(
                "time sync",
                Status::Ok,
                "the clock is synchronized (NTP)",
                false,
            ),
            "no" => check(
                "time sync",
                Status::Warn,
                "the clock is not synchronized (timedatectl: NTPSynchronized=no)",
                false,
            ),
            other => check(
                "time sync",
                Status::Warn,
                format!("timedatectl says {other:?}"),
                false,
            ),
        };
    }
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        return check(
            "time sync",
            Status::Ok,
            "the clock is synchronized (systemd-timesyncd)",
            false,
        );
    }
    if let Some(v) = version_of("chronyc", &["tracking"]) {
        return check("time sync", Status::Ok, format!("chrony: {v}"), false);
    }
    #[cfg(target_os = "linux")]
    if let Some(synced) = kernel_clock_synced() {
        return if synced {
            check(
                "time sync",
                Status::Ok,
                "the kernel reports its clock synchronized (adjtimex)",
                false,
            )
        } else {
            check(
                "time sync",
                Status::Warn,
                "the kernel reports its clock unsynchronized (adjtimex: STA_UNSYNC)",
                false,
            )
        };
    }
    check(
        "time sync",
        Status::Warn,
        "cannot tell: no timedatectl, timesyncd or chrony answered",
        false,
    )
}

/// The kernel's own view: whether an NTP daemon has disciplined the clock.
#[cfg(target_os = "linux")]
fn kernel_clock_synced() -> Option<bool> {
    // SAFETY: with `modes` zero, adjtimex only reads the kernel's clock state
    // into the struct we own; nothing is changed.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    (state >= 0).then_some(tx.status & libc::STA_UNSYNC == 0)
}

/// `535.104.05` >= `535`? Compares the numeric parts in order.
pub(crate) fn version_at_least(have: &str, want: &str) -> bool {
    let parts = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|p| p.trim().parse().unwrap_or(0))
            .collect()
    };
    let (h, w) = (parts(have), parts(want));
    for (i, want) in w.iter().enumerate() {
        let hv = h.get(i).copied().unwrap_or(0);
        if hv != *want {
            return hv > *want;
        }
    }
    true
}

fn gpus(cfg: &SetupConfig) -> Vec<Check> {
    let min = cfg.min_gpus.unwrap_or(0);
    match crate::gpu::inventory() {
        Err(why) => {
            if min > 0 {
                vec![check(
                    "gpu",
                    Status::Fail,
                    format!("{why}; {min} GPU(s) required"),
                    true,
                )]
            } else {
                vec![check("gpu", Status::Skipped, why.to_string(), false)]
            }
        }
        Ok(inv) => {
            let mut out = Vec::new();
            let mut summary = check(
                "gpu",
                Status::Ok,
                format!(
                    "{} GPU(s), driver {}, CUDA {}",
                    inv.devices.len(),
                    inv.driver,
                    inv.cuda
                ),
                min > 0,
            );
            if (inv.devices.len() as u32) < min {
                summary.status = Status::Fail;
                summary.detail.push_str(&format!("; {min} required"));
            }
            if let Some(want) = &cfg.min_driver
                && !version_at_least(&inv.driver, want)
            {
                summary.status = Status::Fail;
                summary.required = true;
                summary
                    .detail
                    .push_str(&format!("; driver {want} or newer required"));
            }
            summary.data = serde_json::to_value(&inv).unwrap_or_default();
            out.push(summary);
            for d in &inv.devices {
                let mut c = check(
                    &format!("gpu {}", d.now.index),
                    Status::Ok,
                    format!(
                        "{}, {} of {} used, {}, {}, {}, ECC errors {}, persistence {}",
                        d.now.name,
                        gib(d.now.memory_used),
                        gib(d.now.memory_total),
                        d.now
                            .utilization
                            .map_or("utilisation ?".into(), |u| format!("{u}% busy")),
                        d.now
                            .temperature
                            .map_or("temperature ?".into(), |t| format!("{t} °C")),
                        d.now
                            .power
                            .map_or("power ?".into(), |p| format!("{p:.0} W")),
                        d.ecc_errors.map_or("n/a".into(), |e| e.to_string()),
                        d.persistence_mode
                            .map_or("n/a", |p| if p { "on" } else { "off" }),
                    ),
                    false,
                );
                if d.ecc_errors.is_some_and(|e| e > 0) {
                    c.status = Status::Warn;
                }
                c.data = serde_json::to_value(d).unwrap_or_default();
                out.push(c);
            }
            out
        }
    }
}

fn default_route() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&"00000000")).then(|| cols[0].to_string())
    })
}

fn network(cfg: &SetupConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let networks = sysinfo::Networks::new_with_refreshed_list().ok();
    let mut names: Vec<String> = networks
        .iter()
        .flat_map(|n| n.keys().map(|k| k.to_string_lossy().to_string()))
        .collect();
    names.sort();
    out.push(check(
        "network interfaces",
        if names.is_empty() {
            Status::Warn
        } else {
            Status::Ok
        },
        if names.is_empty() {
            "none found".to_string()
        } else {
            names.join(", ")
        },
        false,
    ));
    out.push(match default_route() {
        Some(iface) => check("default route", Status::Ok, format!("via {iface}"), false),
        None => check("default route", Status::Warn, "no default route", false),
    });
    for name in &cfg.resolve {
        let target = format!("{name}:0");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::net::ToSocketAddrs;
            let _ = tx.send(
                target
                    .to_socket_addrs()
                    .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>()),
            );
        });
        out.push(match rx.recv_timeout(NET_TIMEOUT) {
            Ok(Ok(ips)) if !ips.is_empty() => check(
                &format!("dns {name}"),
                Status::Ok,
                ips.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                true,
            ),
            Ok(Ok(_)) => check(&format!("dns {name}"), Status::Fail, "no address", true),
            Ok(Err(e)) => check(
                &format!("dns {name}"),
                Status::Fail,
                format!("does not resolve: {e}"),
                true,
            ),
            Err(_) => check(
                &format!("dns {name}"),
                Status::Fail,
                format!("no answer within {} s", NET_TIMEOUT.as_secs()),
                true,
            ),
        });
    }
    for endpoint in &cfg.endpoints {
        use std::net::ToSocketAddrs;
        let name = format!("reach {endpoint}");
        let addr = match endpoint.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                out.push(check(
                    &name,
                    Status::Fail,
                    "not a reachable host:port (does not resolve)",
                    true,
                ));
                continue;
            }
        };
        out.push(
            match std::net::TcpStream::connect_timeout(&addr, NET_TIMEOUT) {
                Ok(_) => check(
                    &name,
                    Status::Ok,
                    format!("TCP connection to {addr} accepted"),
                    true,
                ),
                Err(e) => check(
                    &name,
                    Status::Fail,
                    format!("TCP connection to {addr} failed: {e}"),
                    true,
                ),
            },
        );
    }
    out
}

/// Container and orchestration tools: present (with version) or not.
fn tools() -> Vec<Check> {
    [
        ("docker", &["--version"][..]),
        ("podman", &["--version"][..]),
        ("containerd", &["--version"][..]),
        ("kubectl", &["version", "--client"][..]),
        ("helm", &["version", "--short"][..]),
        ("nvidia-ctk", &["--version"][..]),
    ]
    .iter()
    .map(|(tool, args)| {
        let name = format!("tool {tool}");
        if !crate::blueprints::model::on_path(tool) {
            return check(&name, Status::Skipped, "not installed", false);
        }
        match version_of(tool, args) {
            Some(v) => check(&name, Status::Ok, v, false),
            None => check(
                &name,
                Status::Warn,
                "installed, but printed no version",
                false,
            ),
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_versions_compare_by_parts() {
        assert!(super::version_at_least("535.104.05", "535"));
        assert!(super::version_at_least("550.1", "535.104"));
        assert!(!super::version_at_least("470.82", "535"));
        assert!(!super::version_at_least("535.54", "535.104"));
    }
}
