//! The one printer every command writes through.
//!
//! Commands build values; this module renders them: `--json` prints one JSON
//! document on stdout and nothing else there, `--quiet` silences human output,
//! and colour is used only when `--color` and the terminal allow it (`NO_COLOR`
//! and a non-terminal stdout both turn it off). Writes report errors instead of
//! panicking, so a closed pipe (`nova tasks | head`) ends the command quietly.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use comfy_table::{Cell, ContentArrangement, Table};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
    color: bool,
    tty: bool,
}

pub const BOLD: Style = Style::new().bold();
pub const GREEN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));
pub const RED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
pub const YELLOW: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
pub const DIM: Style = Style::new().dimmed();

impl Output {
    pub fn new(json: bool, quiet: bool, choice: ColorChoice) -> Self {
        let tty = std::io::stdout().is_terminal();
        Output {
            json,
            quiet,
            color: color_enabled(choice, tty),
            tty,
        }
    }

    /// An output that never colours and never decorates (for tests and files).
    pub fn plain() -> Self {
        Output {
            json: false,
            quiet: false,
            color: false,
            tty: false,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.tty
    }

    /// Print `value` as pretty JSON followed by a newline.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut text = serde_json::to_string_pretty(value).expect("output values serialize");
        text.push('\n');
        write_stdout(&text)
    }

    /// Print `value` as one line of JSON (for streams of events, such as a server's).
    pub fn json_line<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut text = serde_json::to_string(value).expect("output values serialize");
        text.push('\n');
        write_stdout(&text)
    }

    /// Print human text as is (unless `--quiet`).
    pub fn text(&self, text: &str) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        write_stdout(text)
    }

    /// Print a table built with [`Output::table`] (unless `--quiet`).
    pub fn print_table(&self, table: &Table) -> Result<()> {
        let mut text = table.trim_fmt();
        text.push('\n');
        self.text(&text)
    }

    /// An empty table in nova's style: no borders, upper-case headers.
    pub fn table(&self, headers: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        table.set_content_arrangement(if self.tty {
            ContentArrangement::Dynamic
        } else {
            ContentArrangement::Disabled
        });
        table.set_header(headers.iter().map(|h| Cell::new(h.to_uppercase())));
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        table
    }

    /// `text` in `style` when colour is on, plain otherwise.
    pub fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }
}

fn color_enabled(choice: ColorChoice, tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
        }
    }
}

fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

/// `n` and a regular noun, singular for one: "1 file", "3 files".
pub fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// True when an error is a closed stdout pipe, which is a normal way to end.
pub fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
