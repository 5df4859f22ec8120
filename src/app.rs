//! `main` → `try_main` → exit code.
//!
//! Parses the command line, sets up logging, resolves the workspace and hands
//! over to one command. Every error comes back here, is printed once on stderr,
//! and picks the exit code (DESIGN.md: 0 ok, 1 failed, 2 bad input, 3 denied).
//! A closed stdout pipe is a normal end, not an error.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::error::{Error, Result};
use crate::output::{self, ColorChoice, Output};
use crate::workspace::{OpaSettings, Workspace, ensure_dir};
use crate::{
    audit, bench, blueprints, kpi, logging, monitor, orchestrate, plan, policy, queue, roadmap,
    setup, tasks,
};

pub fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == crate::orchestrate::guard::ARG)
    {
        return crate::orchestrate::guard::serve();
    }
    crate::orchestrate::guard::enable();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let out = Output::new(cli.json, cli.quiet, cli.color);
    let mut logs = None;
    let code = match try_main(&cli, &out, &mut logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // On stderr the error is printed below; this puts it in the log files.
            tracing::info!(error = %e, exit_code = e.exit_code(), "command failed");
            report(&e, cli.color);
            ExitCode::from(e.exit_code())
        }
    };
    drop(logs); // flushes the log files
    code
}

/// Run the command; `logs` receives the log files' guard once logging is up.
pub fn try_main(cli: &Cli, out: &Output, logs: &mut Option<logging::LogGuard>) -> Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "nova", &mut buf);
        return out.text(&String::from_utf8_lossy(&buf));
    }
    let mut ws = Workspace::discover(cli.home.clone())?;
    ws.opa = OpaSettings {
        url: cli.opa_url.clone().filter(|u| !u.is_empty()),
        token_file: cli.opa_token_file.clone(),
        timeout: cli.opa_timeout,
    };
    let log_dir = ws.home.join("logs");
    let keep_files =
        cli.command.keeps_log_files() && ws.ensure_home().is_ok() && ensure_dir(&log_dir).is_ok();
    *logs = Some(logging::init(
        cli.verbose,
        cli.quiet,
        keep_files.then_some(log_dir.as_path()),
    ));
    if keep_files && !cli.command.handles_signals() {
        logging::flush_on_signals();
    }
    match &cli.command {
        Command::Blueprints(args) => blueprints::command::run(&ws, out, args),
        Command::Plan(args) => plan::command::run(&ws, out, args),
        Command::Tasks(args) => tasks::run(&ws, out, args),
        Command::Roadmap(args) => roadmap::run(&ws, out, args),
        Command::Serve(args) => crate::serve::run(&ws, out, args),
        Command::Dashboard(args) => crate::http::command::run(&ws, out, args),
        Command::Setup(args) => setup::run(&ws, out, args),
        Command::Monitor(args) => monitor::run(&ws, out, args),
        Command::Orchestrate(args) => orchestrate::command::run(&ws, out, args, cli.verbose),
        Command::Runs(args) => orchestrate::command::runs_command(&ws, out, args),
        Command::Worker(args) => orchestrate::command::worker_command(&ws, out, args, cli.verbose),
        Command::Queue(args) => queue::command::run(&ws, out, args),
        Command::Bench(args) => bench::run(&ws, out, args),
        Command::Kpi => kpi::command::run(&ws, out),
        Command::Audit(crate::cli::AuditArgs {
            action:
                crate::cli::AuditAction::Verify {
                    checkpoints: Some(url),
                    verifier_key,
                },
            store,
        }) => crate::backup::command::verify_checkpoints(
            &ws,
            out,
            &store.choice(),
            url,
            verifier_key.as_deref(),
        ),
        Command::Audit(args) => audit::command::run(&ws, out, args),
        Command::Policy(args) => policy::command::run(&ws, out, args),
        Command::Report(args) => match &args.action {
            crate::cli::ReportAction::Tests(a) => crate::testreport::command::tests(out, a),
        },
        Command::Backup(args) => crate::backup::command::run(&ws, out, args),
        Command::Restore(args) => crate::backup::command::restore_command(&ws, out, args),
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

fn report(err: &Error, choice: ColorChoice) {
    let color = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let label = if color {
        "\x1b[1;31merror:\x1b[0m"
    } else {
        "error:"
    };
    match err {
        Error::Invalid(diags) if diags.0.len() > 1 => {
            eprintln!("{label} {} problems found", diags.0.len());
            for d in &diags.0 {
                eprintln!("  {d}");
            }
        }
        Error::Unfinished(summary) => eprintln!("{summary}"),
        other => eprintln!("{label} {other}"),
    }
}
