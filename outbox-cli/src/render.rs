//! Plain-text output: aligned columns and short ages.

use std::fmt;
use std::time::Duration;

use outbox::repository::StoredEvent;

/// Rows printed under a header, each column as wide as its widest cell.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            rows: vec![header.map(str::to_owned).to_vec()],
        }
    }

    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.to_vec());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// An age to the second, in its largest units: `3d 4h`, `12m 5s`, `0s`.
pub(crate) fn age(age: Duration) -> String {
    let seconds = age.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, &(size, unit)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .filter(|&(n, _)| n > 0)
        .take(2)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A stored event as one JSON object, its payload as JSON.
pub(crate) fn event_json(row: &StoredEvent) -> serde_json::Value {
    // The payload as JSON when it is JSON (it always is when the repository stored it), else as text.
    let payload = serde_json::from_str::<serde_json::Value>(&row.payload)
        .unwrap_or_else(|_| serde_json::Value::String(row.payload.clone()));
    serde_json::json!({
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "data_version": row.data_version,
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "occurred_at": row.occurred_at.to_rfc3339(),
        "attempts": row.attempts,
        "last_error": row.last_error,
        "published_at": row.published_at.map(|t| t.to_rfc3339()),
        "correlation_id": row.correlation_id,
        "causation_id": row.causation_id,
        "traceparent": row.traceparent,
        "payload": payload,
    })
}

/// A progress bar on stderr for a long replay or purge of `len` items; drawn only on a terminal, so scripts and
/// pipes see just the closing line.
pub(crate) fn progress(len: u64, verb: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_owned());
    bar
}

/// A counter on stderr for work whose total is not known in advance (a purge of published events).
pub(crate) fn spinner(verb: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.set_message(verb.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_keep_their_two_largest_units() {
        assert_eq!(age(Duration::from_secs(0)), "0s");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(
            age(Duration::from_secs(3 * 86_400 + 4 * 3_600 + 7)),
            "3d 4h"
        );
        assert_eq!(age(Duration::from_secs(3_600 + 5)), "1h 5s");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(["ID", "TYPE"]);
        table.row(["1234".to_owned(), "a".to_owned()]);
        table.row(["5".to_owned(), "bb".to_owned()]);
        assert_eq!(table.to_string(), "ID    TYPE\n1234  a\n5     bb\n");
    }
}
