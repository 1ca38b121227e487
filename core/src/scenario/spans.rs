//! Where an error is: byte offsets to line and column, and between an offset in the file
//! and the dotted field (`topology.hosts.0.ram_mb`) written there.

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The dotted path of the innermost key whose span holds `offset`.
pub(super) fn field_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut path = Vec::new();
    walk_item(doc.as_item(), offset, &mut path);
    (!path.is_empty()).then(|| path.join("."))
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn walk_item(item: &toml_edit::Item, offset: usize, path: &mut Vec<String>) {
    match item {
        toml_edit::Item::Table(t) => {
            for (k, v) in t.iter() {
                let key_span = t.key(k).and_then(|key| key.span());
                if contains(key_span, offset) || contains(v.span(), offset) || table_contains(v, offset) {
                    path.push(k.to_string());
                    walk_item(v, offset, path);
                    return;
                }
            }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                if contains(t.span(), offset)
                    || t.iter()
                        .any(|(k, v)| contains(v.span(), offset) || contains(t.key(k).and_then(|x| x.span()), offset))
                {
                    path.push(i.to_string());
                    walk_item(&toml_edit::Item::Table(t.clone()), offset, path);
                    return;
                }
            }
        }
        toml_edit::Item::Value(v) => walk_value(v, offset, path),
        toml_edit::Item::None => {}
    }
}

fn table_contains(item: &toml_edit::Item, offset: usize) -> bool {
    match item {
        toml_edit::Item::Table(t) => t.iter().any(|(k, v)| {
            contains(v.span(), offset) || contains(t.key(k).and_then(|x| x.span()), offset) || table_contains(v, offset)
        }),
        toml_edit::Item::ArrayOfTables(a) => a.iter().any(|t| {
            contains(t.span(), offset)
                || t.iter()
                    .any(|(k, v)| contains(v.span(), offset) || contains(t.key(k).and_then(|x| x.span()), offset))
        }),
        _ => false,
    }
}

fn walk_value(v: &toml_edit::Value, offset: usize, path: &mut Vec<String>) {
    match v {
        toml_edit::Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                let key_span = t.key(k).and_then(|key| key.span());
                if contains(key_span, offset) || contains(v.span(), offset) {
                    path.push(k.to_string());
                    walk_value(v, offset, path);
                    return;
                }
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if contains(v.span(), offset) {
                    path.push(i.to_string());
                    walk_value(v, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// The byte offset where the dotted `field` is written, or its nearest written parent.
pub(super) fn span_of(text: &str, field: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for part in field.split('.') {
        let next = match (item, part.parse::<usize>()) {
            (toml_edit::Item::ArrayOfTables(a), Ok(i)) => a.get(i).map(|t| (t.span(), None)),
            (toml_edit::Item::Value(toml_edit::Value::Array(a)), Ok(i)) => a.get(i).map(|v| (v.span(), None)),
            _ => item.get(part).map(|v| {
                let key_span = item.as_table_like().and_then(|t| t.get_key_value(part)).and_then(|(k, _)| k.span());
                (v.span(), key_span)
            }),
        };
        let Some((span, key_span)) = next else { break };
        if let Some(s) = key_span.or(span) {
            best = Some(s.start);
        }
        item = match (item, part.parse::<usize>()) {
            (toml_edit::Item::ArrayOfTables(a), Ok(i)) => match a.get(i) {
                Some(_) => return best.or(Some(0)).map(|b| find_array_table(text, field, i).unwrap_or(b)),
                None => break,
            },
            _ => match item.get(part) {
                Some(v) => v,
                None => break,
            },
        };
    }
    best
}

/// `[[name]]` headers carry no span in toml_edit's tables; find the i-th header textually,
/// then the sub-key after it if the field names one.
fn find_array_table(text: &str, field: &str, index: usize) -> Option<usize> {
    let parts: Vec<&str> = field.split('.').collect();
    let pos = parts.iter().position(|p| p.parse::<usize>().is_ok())?;
    let header = format!("[[{}]]", parts[..pos].join("."));
    let start = text.match_indices(&header).nth(index)?.0;
    if let Some(key) = parts.get(pos + 1) {
        let rest = &text[start..];
        let end = rest[header.len()..].find("\n[").map_or(rest.len(), |e| e + header.len());
        if let Some(k) = rest[..end].find(&format!("\n{key}")) {
            return Some(start + k + 1);
        }
    }
    Some(start)
}
