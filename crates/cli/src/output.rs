//! How results are shown: comfy-table tables (boxed on a terminal, plain columns in a pipe),
//! `--json`, and colour only when stdout is a terminal and `NO_COLOR` is unset.

use comfy_table::{presets, Cell, Color, ContentArrangement, Table};
use serde::Serialize;
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub tty: bool,
    pub color: bool,
}

impl Output {
    pub fn detect(json: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Output { json, tty, color }
    }

    /// Prints `value` as pretty JSON.
    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A table with `header`; cells whose text is a state are coloured.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> Table {
        let mut table = Table::new();
        if self.tty {
            table
                .load_preset(presets::UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic);
        } else {
            table.load_preset(presets::NOTHING);
        }
        if self.color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        table.set_header(header.iter().map(Cell::new));
        for row in rows {
            table.add_row(row.iter().map(|c| self.cell(c)));
        }
        table
    }

    fn cell(&self, text: &str) -> Cell {
        match state_color(text) {
            Some(color) if self.color => Cell::new(text).fg(color),
            _ => Cell::new(text),
        }
    }

    /// Prints a table, or a line saying there is nothing to show.
    pub fn print_table(&self, header: &[&str], rows: &[Vec<String>], empty: &str) {
        if rows.is_empty() {
            println!("{empty}");
        } else {
            let text = self.table(header, rows).to_string();
            for line in text.lines() {
                println!("{}", line.trim_end());
            }
        }
    }

    /// `text` in green/red/yellow when colour is on.
    pub fn paint(&self, text: &str, color: Color) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match color {
            Color::Green => 32,
            Color::Red => 31,
            Color::Yellow => 33,
            Color::Cyan => 36,
            _ => 1,
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    pub fn state(&self, state: &str) -> String {
        match state_color(state) {
            Some(c) => self.paint(state, c),
            None => state.to_string(),
        }
    }
}

fn state_color(text: &str) -> Option<Color> {
    match text {
        "RUNNING" | "STARTED" => Some(Color::Green),
        "CRASHED" | "FLAPPING" | "FAILED" => Some(Color::Red),
        "STARTING" | "STOPPED" | "DOWN" | "PENDING" => Some(Color::Yellow),
        _ => None,
    }
}

/// Seconds as `1d 2h 3m 4s`.
pub fn duration(secs: f64) -> String {
    let total = secs.max(0.0) as u64;
    let (d, h, m, s) = (
        total / 86400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Megabytes as `256M` or `1.5G`.
pub fn megabytes(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(512) {
        let g = mb as f64 / 1024.0;
        if g.fract() == 0.0 {
            format!("{}G", g as u64)
        } else {
            format!("{g:.1}G")
        }
    } else {
        format!("{mb}M")
    }
}

/// Bytes in a short human form.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A unix timestamp (seconds) as RFC 3339 in UTC.
pub fn unix_time(secs: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(megabytes(256), "256M");
        assert_eq!(megabytes(1024), "1G");
        assert_eq!(megabytes(1536), "1.5G");
        assert_eq!(megabytes(1000), "1000M");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(duration(3725.0), "1h 2m 5s");
        assert_eq!(duration(59.9), "59s");
        assert_eq!(unix_time(0.0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn plain_tables_have_no_escape_codes() {
        let out = Output {
            json: false,
            tty: false,
            color: false,
        };
        let text = out
            .table(&["Name", "State"], &[vec!["web".into(), "RUNNING".into()]])
            .to_string();
        assert!(
            text.contains("web") && text.contains("RUNNING") && !text.contains('\x1b'),
            "{text}"
        );
        let colored = Output {
            json: false,
            tty: true,
            color: true,
        };
        assert!(colored
            .table(&["State"], &[vec!["RUNNING".into()]])
            .to_string()
            .contains('\x1b'));
    }
}
