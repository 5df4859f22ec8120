//! Several hosts on one machine, for tests of nova across a network: each
//! host is a Linux network namespace with its own address on `10.99.0.0/24`,
//! its `eth0` one end of a veth pair whose other end sits on a bridge in a
//! namespace of its own, so that the test bed touches nothing of the
//! machine's network and two test beds never meet. The hosts share the
//! file system; only the network is theirs.
//!
//! It needs root and iproute2 (`ip`, and `tc` for added latency); where
//! either is missing, [`Testbed::new`] says so on stderr and gives `None`,
//! and the test returns early, passing, with that line in its output. CI
//! runs as root, and `scripts/test` installs iproute2.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespace names begin with this, then the test process's id.
const PREFIX: &str = "nova-test-";

pub struct Testbed {
    bridge: String,
    hosts: Vec<Host>,
}

pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces a test process that is gone left behind.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Testbed {
    /// Hosts named `names`, at 10.99.0.1, 10.99.0.2, ... in that order; or
    /// `None`, said on stderr, where this machine cannot build them.
    pub fn new(names: &[&str]) -> Option<Testbed> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the multi-host test bed needs root (network namespaces)");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: the multi-host test bed needs iproute2 (scripts/test installs it)");
            return None;
        }
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Testbed {
            bridge: format!("{base}-bridge"),
            hosts: Vec::new(),
        };
        match bed.build(&base, names) {
            Ok(()) => Some(bed),
            Err(e) if bed.hosts.is_empty() && e.contains("netns add") => {
                eprintln!("skipped: cannot make network namespaces here: {e}");
                None
            }
            Err(e) => panic!("building the test bed: {e}"),
        }
    }

    fn build(&mut self, base: &str, names: &[&str]) -> Result<(), String> {
        let br = self.bridge.clone();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{base}-{name}");
            ip(&["netns", "add", &ns])?;
            let addr = Ipv4Addr::new(10, 99, 0, i as u8 + 1);
            self.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                addr,
            });
            let port = format!("p{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the test bed"))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // A namespace's veth ends go with it; processes left inside keep it
        // alive until they exit, which the tests' own cleanup sees to.
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge]);
    }
}

impl Host {
    /// `cmd`, set to run inside this host's network namespace.
    pub fn enter(&self, mut cmd: Command) -> Command {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns))
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.ns));
        // SAFETY: setns is async-signal-safe, and the file is opened before
        // the fork (it is close-on-exec, so the program does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `program args...` inside this host, waited for; panics if it fails.
    pub fn run(&self, program: &str, args: &[&str]) {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = self
            .enter(cmd)
            .output()
            .unwrap_or_else(|e| panic!("{program} on {}: {e}", self.name));
        assert!(
            out.status.success(),
            "{program} {} on {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Take the host off the network (its end of the link goes down), as a
    /// pulled cable or a dead switch port would.
    pub fn cut(&self) {
        ip(&["-n", &self.ns, "link", "set", "eth0", "down"]).unwrap();
    }

    /// Every packet the host sends waits `ms` first (tc netem); false, said
    /// on stderr, where the kernel has no netem (a VM's trimmed kernel).
    pub fn delay(&self, ms: u32) -> bool {
        let mut cmd = Command::new("tc");
        cmd.args(["qdisc", "add", "dev", "eth0", "root", "netem", "delay"])
            .arg(format!("{ms}ms"));
        let out = self.enter(cmd).output().expect("tc runs");
        if !out.status.success() {
            eprintln!(
                "no added latency on {}: tc netem: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.status.success()
    }
}
