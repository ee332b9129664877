//! Operator output. Text for people (a live per-host view on a TTY, plain lines otherwise) or
//! JSON for scripts (`--output json`: one document on stdout at the end; `--output jsonl`: the
//! engine's events as they happen, one object a line, then the same document on one line).
//! Logs go to stderr.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use slipway_common::process::LineSplitter;

use crate::cli::console::Console;
use crate::engine::events::Event;
pub use crate::engine::events::HostEvent;
use crate::engine::host_error::Shown;
pub use crate::units::{bytes, millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    /// One JSON object a line: the events as they happen, then the result.
    Jsonl,
}

impl OutputFormat {
    pub fn is_json(self) -> bool {
        matches!(self, OutputFormat::Json | OutputFormat::Jsonl)
    }

    /// The result document as printed: pretty for `json`, one line for `jsonl`.
    pub fn doc_text(self, doc: &serde_json::Value) -> String {
        let text = match self {
            OutputFormat::Jsonl => serde_json::to_string(doc),
            _ => serde_json::to_string_pretty(doc),
        };
        text.expect("json")
    }
}

fn hook_line(stage: &str, command: &str, exit_code: i32, timed_out: bool, elapsed_ms: u64) -> String {
    let how = if timed_out {
        "timed out".to_owned()
    } else if exit_code == 0 {
        "ok".to_owned()
    } else {
        format!("exit {exit_code}")
    };
    format!("{stage} `{command}`: {how} in {}", millis(elapsed_ms))
}

/// A hook output line as shown: stdout's marked `|`, stderr's `!`.
fn output_line(host: &str, stage: &str, stderr: bool, line: &str) -> String {
    format!("  {host:<16} {stage}{} {line}", if stderr { '!' } else { '|' })
}

/// Hook output cut into whole lines, per host, stage and stream.
#[derive(Default)]
struct HookLines {
    pending: HashMap<(String, String, bool), LineSplitter>,
}

impl HookLines {
    fn push(&mut self, host: &str, stage: &str, stderr: bool, data: &[u8]) -> Vec<String> {
        let split = self.pending.entry((host.to_owned(), stage.to_owned(), stderr)).or_default();
        split.push(data).iter().map(|l| output_line(host, stage, stderr, l)).collect()
    }

    /// The unfinished lines of `host` (all hosts: `None`), when its hook ended.
    fn flush(&mut self, host: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut keys: Vec<_> = self.pending.keys().filter(|k| host.is_none_or(|h| k.0 == h)).cloned().collect();
        keys.sort();
        for key in keys {
            if let Some(line) = self.pending.remove(&key).and_then(|mut s| s.finish()) {
                out.push(output_line(&key.0, &key.1, key.2, &line));
            }
        }
        out
    }
}

enum Mode {
    Live { multi: MultiProgress, bars: HashMap<String, ProgressBar> },
    Plain,
    Quiet,
    Lines,
}

pub struct Reporter {
    mode: Mode,
    lines: HookLines,
    console: Console,
}

impl Reporter {
    pub fn new(cx: &super::Cx) -> Self {
        let mode = match cx.format {
            OutputFormat::Json => Mode::Quiet,
            OutputFormat::Jsonl => Mode::Lines,
            OutputFormat::Text if std::io::stdout().is_terminal() && !cx.console.is_remote() => Mode::Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                bars: HashMap::new(),
            },
            OutputFormat::Text => Mode::Plain,
        };
        Reporter { mode, lines: HookLines::default(), console: cx.console.clone() }
    }

    /// A controller-level line ("fetching", "packaged …").
    pub fn say(&mut self, line: impl std::fmt::Display) {
        match &self.mode {
            Mode::Live { multi, .. } => {
                let _ = multi.println(line.to_string());
            }
            Mode::Plain => crate::outln!(self.console, "{line}"),
            Mode::Quiet | Mode::Lines => {}
        }
    }

    /// Show one line per host, in this order, before any of them reports.
    pub fn hosts<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        if let Mode::Live { .. } = self.mode {
            for name in names {
                self.host(name, HostEvent::Connecting);
            }
        }
    }

    pub fn host(&mut self, host: &str, event: HostEvent) {
        match &mut self.mode {
            Mode::Quiet | Mode::Lines => {}
            Mode::Plain => {
                let text = match &event {
                    HostEvent::Connecting => return,
                    HostEvent::Uploading { sent: 0, total: 0 } => "uploading while packaging".to_owned(),
                    HostEvent::Uploading { sent: 0, total } => format!("uploading {}", bytes(*total)),
                    HostEvent::Uploading { .. } | HostEvent::Unpacking { .. } => return,
                    HostEvent::Staged { elapsed_ms } => format!("staged in {}", millis(*elapsed_ms)),
                    HostEvent::Activating => return,
                    HostEvent::Activated { previous, elapsed_ms } => {
                        format!("activated (was {}) in {}", Shown(previous), millis(*elapsed_ms))
                    }
                    HostEvent::Aborted => "staged release removed".to_owned(),
                    HostEvent::Balancer { action, detail } => format!("{action}: {detail}"),
                    HostEvent::Failed(why) => format!("FAILED: {why}"),
                    HostEvent::Output { stage, data, stderr } => {
                        for line in self.lines.push(host, stage, *stderr, data) {
                            crate::outln!(self.console, "{line}");
                        }
                        return;
                    }
                    HostEvent::Hook { stage, command, exit_code, timed_out, elapsed_ms } => {
                        for line in self.lines.flush(Some(host)) {
                            crate::outln!(self.console, "{line}");
                        }
                        hook_line(stage, command, *exit_code, *timed_out, *elapsed_ms)
                    }
                };
                crate::outln!(self.console, "  {host:<16} {text}");
            }
            Mode::Live { multi, bars } => {
                let bar = bars.entry(host.to_owned()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix:<16} {bar:24.cyan/blue} {msg}")
                            .expect("static template")
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(host.to_owned());
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                match event {
                    HostEvent::Connecting => bar.set_message("connecting"),
                    HostEvent::Uploading { sent, total } => {
                        bar.set_length(total.max(sent).max(1));
                        bar.set_position(sent);
                        if total == 0 {
                            bar.set_message(format!("uploading {} while packaging", bytes(sent)));
                        } else {
                            bar.set_message(format!("uploading {} / {}", bytes(sent), bytes(total)));
                        }
                    }
                    HostEvent::Unpacking { entries, total } => {
                        bar.set_message(format!("unpacking {entries} / {total} entries"));
                    }
                    HostEvent::Staged { elapsed_ms } => {
                        bar.set_position(bar.length().unwrap_or(0));
                        bar.set_message(format!("staged in {}", millis(elapsed_ms)));
                    }
                    HostEvent::Activating => bar.set_message("activating"),
                    HostEvent::Activated { elapsed_ms, .. } => {
                        bar.finish_with_message(format!("\x1b[32mactive\x1b[0m (flip {})", millis(elapsed_ms)));
                    }
                    HostEvent::Aborted => bar.finish_with_message("staged release removed"),
                    HostEvent::Balancer { action, detail } => bar.set_message(format!("{action}: {detail}")),
                    HostEvent::Failed(why) => bar.abandon_with_message(format!("\x1b[31mFAILED\x1b[0m {why}")),
                    HostEvent::Output { stage, data, stderr } => {
                        for line in self.lines.push(host, &stage, stderr, &data) {
                            let _ = multi.println(line);
                        }
                    }
                    HostEvent::Hook { stage, command, exit_code, timed_out, elapsed_ms } => {
                        for line in self.lines.flush(Some(host)) {
                            let _ = multi.println(line);
                        }
                        bar.set_message(hook_line(&stage, &command, exit_code, timed_out, elapsed_ms));
                    }
                }
            }
        }
    }

    /// Stop live bars so the summary prints below them.
    /// Show one event of the engine's stream.
    pub fn on(&mut self, event: Event) {
        if let Mode::Lines = self.mode {
            crate::outln!(self.console, "{}", event.to_json());
            return;
        }
        match event {
            Event::Say(line) => self.say(line),
            Event::Hosts(names) => self.hosts(names.iter().map(String::as_str)),
            Event::Host { host, event } => self.host(&host, event),
            Event::Started { .. } => {}
            Event::Finished => self.finish(),
        }
    }

    pub fn finish(&mut self) {
        for line in self.lines.flush(None) {
            match &self.mode {
                Mode::Live { multi, .. } => {
                    let _ = multi.println(line);
                }
                Mode::Plain => crate::outln!(self.console, "{line}"),
                Mode::Quiet | Mode::Lines => {}
            }
        }
        if let Mode::Live { multi, bars } = &mut self.mode {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.finish();
                }
            }
            bars.clear();
            // Retire this set of lines: a reused MultiProgress would redraw over later output.
            *multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        }
    }
}

/// Columns aligned to their widest cell.
/// `text` safe to print on a terminal on one line: every control character (escape sequences,
/// carriage returns, newlines, bells) becomes `�`, so text that someone else wrote (a ticket's
/// title, a comment, a description) can neither move the cursor nor fake another line.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// Columns of cells, each [`clean`]ed.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(millis(950), "950 ms");
        assert_eq!(millis(1500), "1.50 s");
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        let t = table(&["A"], &[vec!["x\x1b]0;owned\x07\ny".into()]]);
        assert_eq!(t, "A\nx\u{fffd}]0;owned\u{fffd}\u{fffd}y\n", "escapes and newlines in cells are replaced");
        assert_eq!(clean("plain ünïcode 上线"), "plain ünïcode 上线");
    }
}
