//! `nova report tests FILE... [--compare OLD...] [--out FILE]`: the QA
//! summary of JUnit results. Exit 0 when every test passed, 1 when any
//! failed, 2 when a file cannot be read as JUnit XML.

use crate::cli::ReportTestsArgs;
use crate::error::{Error, Result};
use crate::output::Output;

pub fn tests(out: &Output, args: &ReportTestsArgs) -> Result<()> {
    let summary = super::summarize(&args.files, &args.compare)?;
    let text = super::markdown::render(&summary, "#");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|e| Error::io(path, e))?;
    }
    if out.json {
        out.json(&summary)?;
    } else if args.out.is_none() {
        out.text(&text)?;
    }
    if summary.all_passed() {
        Ok(())
    } else {
        Err(Error::Unfinished(format!(
            "{} of {} tests failed",
            summary.totals.failed, summary.totals.tests
        )))
    }
}
