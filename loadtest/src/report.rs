//! Results for people (a table printed level by level) and for programs (JSON).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::lengths::LengthSummary;
use crate::summary::{LevelSummary, Load, Stats};

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    pub api: String,
    pub endpoint: String,
    pub model: String,
    /// `closed` (concurrency levels) or `open` (arrival-rate levels).
    pub mode: String,
    pub max_tokens: u32,
    /// With `--max-tokens-dist`: the spec and what was drawn (`max_tokens` is then unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_dist: Option<LengthSummary>,
    pub temperature: f64,
    pub prompts: String,
    pub warmup: u64,
    /// Open loop only.
    pub arrival: Option<String>,
    pub burstiness: Option<f64>,
    pub seed: u64,
    pub levels: Vec<LevelSummary>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Fixed-width columns, so rows can be printed as levels finish.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    open_loop: bool,
    goodput: bool,
}

const COLUMNS: [(&str, usize); 12] = [
    ("", 7),
    ("done", 6),
    ("fail", 5),
    ("req/s", 7),
    ("out tok/s", 10),
    ("TTFT p50", 9),
    ("TTFT p99", 9),
    ("ITL p50", 9),
    ("ITL p99", 9),
    ("TPOT p50", 9),
    ("E2E p50", 9),
    ("E2E p99", 9),
];

impl Table {
    pub fn new(open_loop: bool, goodput: bool) -> Table {
        Table { open_loop, goodput }
    }

    pub fn header(&self) -> String {
        let mut line = String::new();
        for (i, (name, width)) in COLUMNS.iter().enumerate() {
            let name = match (i, self.open_loop) {
                (0, false) => "conc",
                (0, true) => "rate/s",
                _ => name,
            };
            let _ = write!(line, "{name:>width$} ");
        }
        if self.goodput {
            let _ = write!(line, "{:>13}", "goodput");
        }
        line.trim_end().to_owned()
    }

    pub fn row(&self, level: &LevelSummary) -> String {
        let p50 = |s: Option<Stats>| secs(s.map(|s| s.p50));
        let p99 = |s: Option<Stats>| secs(s.map(|s| s.p99));
        let load = match level.load {
            Load::Concurrency(c) => c.to_string(),
            Load::Rate(r) => format!("{r}"),
        };
        let cells = [
            load,
            level.completed.to_string(),
            level.failed.to_string(),
            format!("{:.2}", level.requests_per_second),
            format!("{:.1}", level.output_tokens_per_second),
            p50(level.ttft_seconds),
            p99(level.ttft_seconds),
            p50(level.itl_seconds),
            p99(level.itl_seconds),
            p50(level.tpot_seconds),
            p50(level.e2e_seconds),
            p99(level.e2e_seconds),
        ];
        let mut line = String::new();
        for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
            let _ = write!(line, "{cell:>width$} ");
        }
        if let (true, Some(g)) = (self.goodput, level.goodput) {
            let _ = write!(
                line,
                "{:>6.2}/s {:>3.0}%",
                g.requests_per_second,
                g.fraction * 100.0
            );
        }
        line.trim_end().to_owned()
    }
}

/// Failed requests by message, per level; empty when nothing failed.
pub fn errors(levels: &[LevelSummary]) -> String {
    let mut out = String::new();
    for level in levels.iter().filter(|l| !l.errors.is_empty()) {
        let _ = writeln!(out, "errors at {}:", level.load.describe());
        for (message, count) in &level.errors {
            let _ = writeln!(out, "  {count:>5} x {message}");
        }
    }
    out
}

/// Seconds in the unit that keeps three significant digits readable.
pub fn secs(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v < 0.001 => format!("{:.2}ms", v * 1e3),
        Some(v) if v < 1.0 => format!("{:.1}ms", v * 1e3),
        Some(v) => format!("{v:.2}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Outcome, Record};
    use crate::summary::{summarize, Slo};
    use std::time::Duration;

    #[test]
    fn seconds_formatting() {
        assert_eq!(secs(None), "-");
        assert_eq!(secs(Some(0.00042)), "0.42ms");
        assert_eq!(secs(Some(0.0315)), "31.5ms");
        assert_eq!(secs(Some(2.5)), "2.50s");
    }

    #[test]
    fn rows_line_up_with_the_header() {
        let record = Record {
            outcome: Outcome::Ok,
            ttft: Some(Duration::from_millis(120)),
            itl: vec![Duration::from_millis(30)],
            e2e: Duration::from_millis(150),
            prompt_tokens: Some(5),
            output_tokens: 2,
        };
        let slo = Slo {
            ttft_seconds: Some(1.0),
            ..Slo::default()
        };
        let level = summarize(
            Load::Concurrency(16),
            &[record],
            Duration::from_secs(1),
            &slo,
        );
        let table = Table::new(false, true);
        let (header, row) = (table.header(), table.row(&level));
        assert!(header.starts_with("   conc   done"));
        assert!(header.ends_with("goodput"));
        assert_eq!(header.len(), row.len(), "\n{header}\n{row}");
        // 120 ms within the histogram's 0.1%.
        assert!(row.contains("120.1ms") && row.contains("100%"), "{row}");
    }

    #[test]
    fn errors_listed_per_level() {
        let failed = Record {
            outcome: Outcome::Timeout(Duration::from_secs(5)),
            ttft: None,
            itl: vec![],
            e2e: Duration::from_secs(5),
            prompt_tokens: None,
            output_tokens: 0,
        };
        let level = summarize(
            Load::Rate(2.0),
            &[failed.clone(), failed],
            Duration::from_secs(6),
            &Slo::default(),
        );
        assert_eq!(
            errors(&[level]),
            "errors at rate 2/s:\n      2 x timeout after 5s\n"
        );
    }
}
