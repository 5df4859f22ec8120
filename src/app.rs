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
use crate::workspace::Workspace;
use crate::{bench, blueprints, plan, queue, roadmap, tasks};

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let out = Output::new(cli.json, cli.quiet, cli.color);
    match try_main(&cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, cli.color);
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn try_main(cli: &Cli, out: &Output) -> Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "nova", &mut buf);
        return out.text(&String::from_utf8_lossy(&buf));
    }
    let ws = Workspace::discover(cli.home.clone())?;
    match &cli.command {
        Command::Blueprints(args) => blueprints::command::run(&ws, out, args),
        Command::Plan(args) => plan::command::run(&ws, out, args),
        Command::Tasks(args) => tasks::run(&ws, out, args),
        Command::Roadmap(args) => roadmap::run(&ws, out, args),
        Command::Serve(args) => queue::command::serve(&ws, out, args),
        Command::Queue(args) => queue::command::run(&ws, out, args),
        Command::Bench(args) => bench::run(&ws, out, args),
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
        other => eprintln!("{label} {other}"),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = std::env::var("NOVA_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
