//! Aligned text tables for `vpuctl`'s human-readable output.

use std::fmt::Write;

/// A table of strings; columns whose cells all look numeric are right-aligned.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra ones dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, header first, no trailing spaces.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        let mut numeric = vec![!self.rows.is_empty(); cols];
        for row in &self.rows {
            for (c, cell) in row.iter().enumerate() {
                width[c] = width[c].max(cell.chars().count());
                if !looks_numeric(cell) {
                    numeric[c] = false;
                }
            }
        }
        let mut out = String::new();
        let lines = std::iter::once(&self.headers).chain(self.rows.iter());
        for line in lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                let pad = width[c] - cell.chars().count();
                if numeric[c] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        }
        out
    }
}

fn looks_numeric(cell: &str) -> bool {
    let t = cell.trim_end_matches(['%', 'x']);
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
}

/// Formats bit/s as `1.23 Mb/s`, `640 kb/s`.
pub fn bitrate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mb/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.0} kb/s", bps / 1e3)
    } else {
        format!("{bps:.0} b/s")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aligns_text_left_and_numbers_right() {
        let mut t = Table::new(&["card", "load"]);
        t.row(vec!["emu0".into(), "5".into()]);
        t.row(vec!["emulated1".into(), "1200".into()]);
        let text = t.render();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "card       load");
        assert_eq!(lines[1], "emu0          5");
        assert_eq!(lines[2], "emulated1  1200");
    }

    #[test]
    fn formats_bitrates() {
        assert_eq!(bitrate(1_234_567.0), "1.23 Mb/s");
        assert_eq!(bitrate(640_000.0), "640 kb/s");
    }
}
