//! What the harness prints: markdown tables, either min / median / max over repeated runs ([`Row`]) or
//! free-form ([`Table`]) for the scenarios that report one long run per line.

/// One measured quantity over repeated runs, printed as min / median / max.
pub struct Row {
    pub scenario: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

impl Row {
    pub fn new(scenario: impl Into<String>, unit: &'static str) -> Self {
        Self {
            scenario: scenario.into(),
            unit,
            values: Vec::new(),
        }
    }

    fn cells(&self) -> Vec<String> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        // Latencies in milliseconds need their decimals; rates do not.
        let digits = if self.unit == "ms" { 2 } else { 0 };
        let cell = |x: f64| format!("{x:.digits$}");
        vec![
            self.scenario.clone(),
            cell(v[0]),
            cell(v[v.len() / 2]),
            cell(v[v.len() - 1]),
            self.unit.to_owned(),
        ]
    }
}

/// The `p`-th percentile (0-100) of `sorted`, which is sorted and not empty: the value at that rank.
pub fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A markdown table.
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The min / median / max table of `rows`.
    pub fn summary(rows: &[Row]) -> Self {
        Self {
            header: vec!["scenario", "min", "median", "max", "unit"],
            rows: rows.iter().map(Row::cells).collect(),
        }
    }

    pub fn print(&self) {
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        println!();
    }
}
