//! How the tools print: a readable table (column names in capitals, columns aligned) or, with
//! `--format json`, the same rows as JSON objects keyed by the column names, so scripts get
//! numbers as numbers and a table and its JSON never disagree.
//!
//! ```
//! use serde_json::json;
//! use shardlog::cli::output::Table;
//!
//! let mut table = Table::new(&["topic", "partitions"]);
//! table.row(vec![json!("orders"), json!(6)]);
//! assert_eq!(table.render(), "TOPIC   PARTITIONS\norders  6\n");
//! assert_eq!(table.to_json(), json!([{"topic": "orders", "partitions": 6}]));
//! ```

use serde_json::{Map, Value};

/// Output format of a tool.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Rows under named columns.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

impl Table {
    /// An empty table with these columns (snake_case: the JSON keys).
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one value per column.
    pub fn row(&mut self, values: Vec<Value>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// The rows as JSON objects.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    let object: Map<String, Value> = self
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.to_string(), v.clone()))
                        .collect();
                    Value::Object(object)
                })
                .collect(),
        )
    }

    /// The table as text: a header line and one line per row, columns two spaces apart.
    pub fn render(&self) -> String {
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|c| c.to_uppercase().replace('_', "-"))
            .collect();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(cell).collect())
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&header).chain(&cells) {
            let last = line.len() - 1;
            for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(c);
                } else {
                    out.push_str(&format!("{c:<w$}  "));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A value as a table cell: strings bare, lists comma-separated, null as "-".
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints named tables: as text, each under its title (when it has one) with a blank line
/// between; as JSON, one object whose keys are the titles.
pub fn print(format: Format, sections: &[(&str, Value, Option<&Table>)]) {
    match format {
        Format::Json => {
            let object: Map<String, Value> = sections
                .iter()
                .map(|(name, value, table)| {
                    let v = table.map(|t| t.to_json()).unwrap_or_else(|| value.clone());
                    (name.to_string(), v)
                })
                .collect();
            println!("{}", Value::Object(object));
        }
        Format::Table => {
            for (i, (name, value, table)) in sections.iter().enumerate() {
                match table {
                    Some(t) => {
                        if i > 0 {
                            println!();
                        }
                        print!("{}", t.render());
                    }
                    None => println!("{}: {}", name.replace('_', " "), cell(value)),
                }
            }
        }
    }
}
