//! Summaries of several rounds (median with min and max) and the Markdown
//! tables the bench prints.

use std::fmt::Write;

/// Median, min and max of one figure over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    rounds: usize,
}

impl Spread {
    /// The spread of `values`; None when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let (first, last) = (*values.first()?, *values.last()?);
        Some(Spread {
            median: percentile(&values, 50.0),
            min: first,
            max: last,
            rounds: values.len(),
        })
    }

    /// `median (min–max)` with `decimals` digits; only the median for one round.
    pub fn show(&self, decimals: usize) -> String {
        if self.rounds == 1 {
            format!("{:.decimals$}", self.median)
        } else {
            format!(
                "{:.decimals$} ({:.decimals$}–{:.decimals$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// The `p`th percentile (0–100) of sorted `values`, interpolating between
/// neighbours; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// A Markdown table built row by row.
pub struct Table {
    text: String,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        let mut table = Table {
            text: String::new(),
        };
        table.row(headers.iter().map(|h| h.to_string()));
        table.row(headers.iter().map(|_| "---".to_owned()));
        table
    }

    /// Appends one row.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let cells: Vec<String> = cells.into_iter().collect();
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }

    /// The finished table.
    pub fn render(&self) -> &str {
        &self.text
    }
}

/// A cell for a figure that may be missing (`–`).
pub fn cell(spread: Option<Spread>, decimals: usize) -> String {
    spread.map_or_else(|| "–".to_owned(), |s| s.show(decimals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_neighbours() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&values, 50.0), 2.5);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&values, 100.0), 4.0);
    }

    #[test]
    fn spread_shows_median_min_and_max() {
        let spread = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!(spread.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([5.0]).unwrap().show(0), "5");
        assert!(Spread::of([]).is_none());
    }
}
