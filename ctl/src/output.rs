//! Output for people (aligned tables) and for scripts (JSON, YAML).

use serde_json::Value;

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// Renders rows (objects with the same keys, in `columns` order) as `output`.
pub fn render(output: Output, columns: &[&str], rows: &[Value]) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(rows).unwrap_or_default() + "\n",
        Output::Yaml => serde_yaml::to_string(rows).unwrap_or_default(),
        Output::Table => table(columns, rows),
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Aligned columns with an upper-case header.
pub fn table(columns: &[&str], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| -> String {
        let mut s = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        out += &line(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_and_marks_missing_values() {
        let rows = [
            json!({"name": "node1", "cpus": 2}),
            json!({"name": "n2", "cpus": null}),
        ];
        assert_eq!(
            table(&["name", "cpus"], &rows),
            "NAME   CPUS\nnode1  2\nn2     -\n"
        );
    }
}
