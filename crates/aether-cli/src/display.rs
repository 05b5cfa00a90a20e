//! How a running perform shows: a progress bar on a terminal, `progress N` lines on a pipe.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Where progress goes (stderr, so stdout holds only the result).
#[derive(Debug)]
pub(crate) enum Display {
    /// A terminal: one bar, redrawn.
    Bar(ProgressBar),
    /// A pipe or file: one line per report.
    Lines,
    /// Nothing (JSON output to a pipe).
    Quiet,
}

impl Display {
    /// A bar of `len` steps on a terminal; else lines, or nothing if `quiet`.
    pub(crate) fn new(label: &str, len: u64, unit: &str, quiet: bool) -> Display {
        if !std::io::stderr().is_terminal() {
            return if quiet {
                Display::Quiet
            } else {
                Display::Lines
            };
        }
        let bar = ProgressBar::new(len);
        let template = format!("{{spinner}} {{prefix}} [{{bar:40}}] {{pos}}{unit} {{msg}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Display::Bar(bar)
    }

    /// A progress report of a single task: percent and the data the worker sent.
    pub(crate) fn progress(&self, percent: u8, data: &Value) {
        let detail = describe(data);
        match self {
            Display::Bar(bar) => {
                bar.set_position(u64::from(percent));
                bar.set_message(detail);
            }
            Display::Lines => {
                let mut err = std::io::stderr().lock();
                let _ = if detail.is_empty() {
                    writeln!(err, "progress {percent}")
                } else {
                    writeln!(err, "progress {percent} {detail}")
                };
            }
            Display::Quiet => {}
        }
    }

    /// One more task done, of many.
    pub(crate) fn inc(&self) {
        if let Display::Bar(bar) = self {
            bar.inc(1);
        }
    }

    /// Leaves the bar showing how it ended; full if `done`.
    pub(crate) fn finish(&self, outcome: &str, done: bool) {
        if let Display::Bar(bar) = self {
            bar.disable_steady_tick();
            if done && let Some(len) = bar.length() {
                bar.set_position(len);
            }
            bar.finish_with_message(outcome.to_owned());
        }
    }
}

/// Progress data in a few words: nothing for `{}`/null, a string as is, else compact JSON.
fn describe(data: &Value) -> String {
    match data {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
