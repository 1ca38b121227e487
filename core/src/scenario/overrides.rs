//! `--set KEY=VALUE`: dotted-key overrides applied to the scenario's TOML document before
//! it is deserialised, so every check (unknown fields, types, cross-references) sees the
//! overridden file and names the field as usual.
//!
//! Keys are dotted paths: `control.amqp_durable_queues`, `topology.workers.scheduler`,
//! `faults[0].duration` (or `faults.0.duration`), `workload.flavors."m1.small"`. Values are
//! TOML when they parse as TOML (`true`, `2`, `0.5`, `["Compute", "Ram"]`, `{ cpu = 8.0 }`)
//! and strings otherwise (`180s`, `pack`), so nobody has to quote a duration in a shell.

use std::fmt;
use std::str::FromStr;

use toml_edit::{DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// One `--set KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
}

impl FromStr for Override {
    type Err = String;
    fn from_str(text: &str) -> Result<Override, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| format!("--set wants KEY=VALUE, got `{text}`"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("--set wants KEY=VALUE, got `{text}`: the key is empty"));
        }
        segments(key)?;
        Ok(Override { key: key.to_string(), value: value.trim().to_string() })
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl Override {
    /// The key as the scenario's errors name fields: `faults.0.duration`.
    pub fn field(&self) -> String {
        segments(&self.key).map(|s| s.join(".")).unwrap_or_else(|_| self.key.clone())
    }
}

/// `a.b[0]."c.d"` as `["a", "b", "0", "c.d"]`.
fn segments(key: &str) -> Result<Vec<String>, String> {
    let bad = |why: &str| format!("--set key `{key}`: {why}");
    let mut out = Vec::new();
    let mut chars = key.chars().peekable();
    let mut current = String::new();
    // Whether the segment just closed by `"` or `]` needs a `.` or `[` next.
    let mut closed = false;
    while let Some(c) = chars.next() {
        match c {
            '.' | '[' if current.is_empty() && !closed => return Err(bad("an empty part")),
            '.' => {
                if !closed {
                    out.push(std::mem::take(&mut current));
                }
                closed = false;
            }
            '[' => {
                if !closed {
                    out.push(std::mem::take(&mut current));
                }
                let index: String = chars.by_ref().take_while(|c| *c != ']').collect();
                if index.parse::<usize>().is_err() {
                    return Err(bad(&format!("`[{index}]` is not an index like [0]")));
                }
                out.push(index);
                closed = true;
            }
            '"' if current.is_empty() && !closed => {
                let quoted: String = chars.by_ref().take_while(|c| *c != '"').collect();
                out.push(quoted);
                closed = true;
            }
            _ if closed => return Err(bad("write `.` or `[` after `]` or a quoted part")),
            _ => current.push(c),
        }
    }
    if !closed {
        if current.is_empty() {
            return Err(bad("an empty part"));
        }
        out.push(current);
    }
    Ok(out)
}

/// TOML when it parses as a TOML value, a string otherwise.
fn parse_value(text: &str) -> Value {
    text.parse::<Value>().unwrap_or_else(|_| Value::from(text))
}

/// Applies `overrides` in order (a later one wins) to scenario text. Returns the text
/// unchanged without overrides or when it is not TOML (parsing then reports the syntax
/// error as usual). An error is `(field, message)`: an index past an array's end, or a key
/// under something that is not a table.
pub fn apply_overrides(text: &str, overrides: &[Override]) -> Result<String, (String, String)> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    let Ok(mut doc) = text.parse::<DocumentMut>() else { return Ok(text.to_string()) };
    for o in overrides {
        let segs = segments(&o.key).map_err(|m| (o.key.clone(), m))?;
        set_in(doc.as_table_mut(), false, &segs, 0, parse_value(&o.value))
            .map_err(|m| (o.field(), format!("--set {o}: {m}")))?;
    }
    Ok(doc.to_string())
}

fn set_in(t: &mut dyn TableLike, inline: bool, segs: &[String], depth: usize, value: Value) -> Result<(), String> {
    let key = segs[depth].as_str();
    if depth + 1 == segs.len() {
        let mut value = value;
        if let Some(Item::Value(old)) = t.get(key) {
            // Keep the old value's spacing and comment, so the line stays as written.
            *value.decor_mut() = old.decor().clone();
        }
        t.insert(key, Item::Value(value));
        return Ok(());
    }
    if t.get(key).is_none() {
        if let Ok(i) = segs[depth + 1].parse::<usize>() {
            return Err(format!("`{}` has 0 entries: [{i}] is past its end", segs[..=depth].join(".")));
        }
        let fresh = if inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        };
        t.insert(key, fresh);
    }
    match t.get_mut(key) {
        Some(item) => set_item(item, segs, depth + 1, value),
        None => Err(format!("cannot create `{}`", segs[..=depth].join("."))),
    }
}

fn index(segs: &[String], depth: usize, len: usize) -> Result<usize, String> {
    let at = segs[..depth].join(".");
    let i: usize = segs[depth].parse().map_err(|_| format!("`{at}` is a list: index it, like {at}[0]"))?;
    if i >= len {
        return Err(format!("`{at}` has {len} entries: [{i}] is past its end"));
    }
    Ok(i)
}

fn set_item(item: &mut Item, segs: &[String], depth: usize, value: Value) -> Result<(), String> {
    let here = || segs[..depth].join(".");
    let last = depth + 1 == segs.len();
    match item {
        Item::Table(t) => set_in(t, false, segs, depth, value),
        Item::Value(Value::InlineTable(t)) => set_in(t, true, segs, depth, value),
        Item::ArrayOfTables(a) => {
            let i = index(segs, depth, a.len())?;
            if last {
                return Err(format!("`{}` is a table: set one of its keys", segs.join(".")));
            }
            match a.get_mut(i) {
                Some(t) => set_in(t, false, segs, depth + 1, value),
                None => Err(format!("`{}` has no entry [{i}]", here())),
            }
        }
        Item::Value(Value::Array(arr)) => {
            let i = index(segs, depth, arr.len())?;
            if last {
                arr.replace(i, value);
                return Ok(());
            }
            match arr.get_mut(i) {
                Some(Value::InlineTable(t)) => set_in(t, true, segs, depth + 1, value),
                _ => Err(format!("`{}.{i}` is a value, not a table", here())),
            }
        }
        _ => Err(format!("`{}` is a value, not a table", here())),
    }
}
