//! What a run shows while it runs: on a terminal, a progress bar for the
//! phase and a line per running agent (indicatif); elsewhere, one plain line
//! per event on stderr. `-q` and `--json` show neither.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bars: Option<Bars>,
    quiet: bool,
}

struct Bars {
    multi: MultiProgress,
    phase: Mutex<Option<ProgressBar>>,
    agents: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    /// Bars when stdout is a terminal and output is wanted.
    pub fn new(terminal: bool, quiet: bool) -> Progress {
        let bars = (terminal && !quiet).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            phase: Mutex::new(None),
            agents: Mutex::new(HashMap::new()),
        });
        Progress { bars, quiet }
    }

    /// A line of text, above the bars when there are bars.
    pub fn say(&self, text: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn phase(&self, name: &str, tasks: u64) {
        let Some(b) = &self.bars else { return };
        let bar = b.multi.add(ProgressBar::new(tasks));
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} tasks {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("phase {name}"));
        if let Some(old) = b
            .phase
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bar)
        {
            old.finish();
        }
    }

    pub fn agent_started(&self, agent: &str) {
        let Some(b) = &self.bars else { return };
        let bar = b.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix}: {msg}").expect("a valid template"),
        );
        bar.set_prefix(agent.to_string());
        bar.set_message("starting");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        b.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_string(), bar);
    }

    pub fn task_finished(&self, agent: &str, task: &str, status: &str) {
        let Some(b) = &self.bars else { return };
        if let Some(bar) = b.phase.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.inc(1);
        }
        if let Some(bar) = b
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
        {
            bar.set_message(format!("{task} {status}"));
        }
    }

    pub fn agent_finished(&self, agent: &str, outcome: &str) {
        let Some(b) = &self.bars else { return };
        if let Some(bar) = b
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent)
        {
            bar.finish_and_clear();
        }
        let _ = b.multi.println(format!("  {agent}: {outcome}"));
    }

    pub fn finish(&self) {
        let Some(b) = &self.bars else { return };
        if let Some(bar) = b.phase.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish();
        }
        let _ = b.multi.clear();
    }
}
