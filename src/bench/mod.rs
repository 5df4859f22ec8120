//! `nova bench`: measurements of nova's own speed, run on demand (never in
//! timed tests; the machines that run tests are shared and noisy).

pub mod audit;
pub mod dashboard;
pub mod kpi;
pub mod monitor;
pub mod orchestrate;
pub mod policy;
pub mod queue;

use crate::cli::{BenchArgs, BenchWhat};
use crate::error::Result;
use crate::output::Output;
use crate::workspace::Workspace;

pub fn run(ws: &Workspace, out: &Output, args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchWhat::Queue(args) => queue::run(ws, out, args),
        BenchWhat::Kpi(args) => kpi::run(out, args),
        BenchWhat::Audit(args) => audit::run(out, args),
        BenchWhat::Policy(args) => policy::run(ws, out, args),
        BenchWhat::Orchestrate(args) => orchestrate::run(out, args),
        BenchWhat::Monitor(args) => monitor::run(out, args),
        BenchWhat::Dashboard(args) => dashboard::run(out, args),
    }
}

/// The value at fraction `p` (0 to 1) of an ascending slice: the nearest rank.
pub fn pick<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The service user of a benchmark's throwaway workspace: as root, its
/// trivial tasks run as root on purpose (as `service_user: root` says),
/// since the shipped policy refuses fixes as root otherwise; else unset.
pub fn service_user() -> String {
    if nix::unistd::Uid::effective().is_root() {
        "root".into()
    } else {
        String::new()
    }
}
