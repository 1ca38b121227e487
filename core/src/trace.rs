//! VM request traces: the shape of public cloud VM traces (Azure's, Alibaba's), one request
//! per CSV row. Columns, with a header line naming them:
//!
//! | column | meaning |
//! |---|---|
//! | `arrival_s` | seconds from the start of the run when the request arrives |
//! | `vcpus` | virtual CPUs |
//! | `memory_mb` | RAM in MB |
//! | `disk_gb` | root disk in GB |
//! | `lifetime_s` | seconds the VM lives after its request; it is deleted then (0: never) |
//!
//! Rows may come in any order; they are replayed by arrival. Bad rows are errors that name
//! the line and the column.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::Flavor;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    pub arrival_s: f64,
    pub vcpus: u64,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub lifetime_s: f64,
}

impl TraceRow {
    /// The flavor name requests of this shape use (`trace-2c-4096m-40g`).
    pub fn flavor_name(&self) -> String {
        format!("trace-{}c-{}m-{}g", self.vcpus, self.memory_mb, self.disk_gb)
    }

    pub fn flavor(&self) -> Flavor {
        Flavor {
            name: self.flavor_name(),
            vcpus: self.vcpus,
            ram_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            ephemeral_gb: 0,
            swap: 0,
            extra_specs: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column `{column}`: {message}")]
pub struct TraceError {
    pub line: usize,
    pub column: String,
    pub message: String,
}

pub const COLUMNS: [&str; 5] = ["arrival_s", "vcpus", "memory_mb", "disk_gb", "lifetime_s"];

/// Parses a trace, sorted by arrival (stable: equal arrivals keep file order).
pub fn parse(text: &str) -> Result<Vec<TraceRow>, TraceError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((hline, header)) = lines.next() else {
        return Err(TraceError { line: 1, column: "-".into(), message: "the trace is empty".into() });
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut index = [0usize; 5];
    for (i, col) in COLUMNS.iter().enumerate() {
        index[i] = names.iter().position(|n| n == col).ok_or_else(|| TraceError {
            line: hline + 1,
            column: col.to_string(),
            message: format!("the header lacks `{col}` (need {})", COLUMNS.join(",")),
        })?;
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |i: usize| -> Result<&str, TraceError> {
            cells.get(index[i]).copied().ok_or_else(|| TraceError {
                line: n + 1,
                column: COLUMNS[i].into(),
                message: format!("missing value ({} cells, header has {})", cells.len(), names.len()),
            })
        };
        let float = |i: usize| -> Result<f64, TraceError> {
            let c = cell(i)?;
            match c.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(TraceError {
                    line: n + 1,
                    column: COLUMNS[i].into(),
                    message: format!("`{c}` is not a non-negative number"),
                }),
            }
        };
        let int = |i: usize| -> Result<u64, TraceError> {
            let c = cell(i)?;
            match c.parse::<u64>() {
                Ok(v) if v > 0 || i == 3 => Ok(v),
                _ => Err(TraceError {
                    line: n + 1,
                    column: COLUMNS[i].into(),
                    message: format!("`{c}` is not a positive whole number"),
                }),
            }
        };
        rows.push(TraceRow {
            arrival_s: float(0)?,
            vcpus: int(1)?,
            memory_mb: int(2)?,
            disk_gb: int(3)?,
            lifetime_s: float(4)?,
        });
    }
    rows.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_names_flavors() {
        let rows =
            parse("arrival_s,vcpus,memory_mb,disk_gb,lifetime_s\n5,2,4096,40,60\n# c\n1.5,1,2048,20,0\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].arrival_s, 1.5);
        assert_eq!(rows[1].flavor_name(), "trace-2c-4096m-40g");
    }

    #[test]
    fn columns_may_be_reordered() {
        let rows = parse("vcpus,arrival_s,lifetime_s,disk_gb,memory_mb\n4,0,10,80,8192\n").unwrap();
        assert_eq!(rows[0].memory_mb, 8192);
        assert_eq!(rows[0].vcpus, 4);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("arrival_s,vcpus,memory_mb,disk_gb,lifetime_s\n0,2,4096,40,60\n0,x,4096,40,60\n").unwrap_err();
        assert_eq!((e.line, e.column.as_str()), (3, "vcpus"));
        let e = parse("arrival_s,vcpus,memory_mb\n").unwrap_err();
        assert_eq!(e.column, "disk_gb");
        let e = parse("arrival_s,vcpus,memory_mb,disk_gb,lifetime_s\n0,2,4096\n").unwrap_err();
        assert_eq!((e.line, e.column.as_str()), (2, "disk_gb"));
        assert!(parse("").is_err());
        let e = parse("arrival_s,vcpus,memory_mb,disk_gb,lifetime_s\n-1,2,4096,40,60\n").unwrap_err();
        assert_eq!(e.column, "arrival_s");
    }
}
