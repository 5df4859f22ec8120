//! `nova bench`: measurements of nova's own speed, run on demand (never in
//! timed tests; the machines that run tests are shared and noisy).

pub mod audit;
pub mod kpi;
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
    }
}
