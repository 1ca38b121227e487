//! Escaping for XML and HTML text and attribute values.

/// `s` safe inside XML or HTML text and in double- or single-quoted attribute values: the
/// five markup characters as entities, and the characters XML 1.0 forbids (control
/// characters but tab, newline and carriage return) as U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_and_forbidden_characters_are_escaped() {
        assert_eq!(escape(r#"a<b & "c" 'd'>"#), "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;");
        assert_eq!(escape("tab\tnl\n\u{1}\u{1b}"), "tab\tnl\n\u{FFFD}\u{FFFD}");
        assert_eq!(escape("ünïcödé ±"), "ünïcödé ±");
    }
}
