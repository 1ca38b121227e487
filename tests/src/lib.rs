//! Helpers shared by the cross-crate tests in `tests/tests/`.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Every `.rs` file under `dir` (relative to the root), sorted.
pub fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(p: &std::path::Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(p) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

/// The `--set KEY=VALUE` flags of a scenario file's `# mitigation:` line (in its opening
/// comment), as users run them: `["control.amqp_durable_queues=true"]`. Empty if none.
pub fn mitigation(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.strip_prefix("# mitigation:"))
        .unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "--set").map(|w| w[1].to_string()).collect()
}

/// An XML element as [`parse_xml`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    /// In document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The text directly inside, unescaped.
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every descendant (and itself) named `name`, in document order.
    pub fn all<'a>(&'a self, name: &str) -> Vec<&'a Element> {
        let mut out = Vec::new();
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            out.extend(c.all(name));
        }
        out
    }
}

fn unescape(s: &str, at: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').ok_or(format!("unterminated entity near byte {at}"))?;
        let name = &rest[i + 1..i + end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            n if n.starts_with("#x") => {
                u32::from_str_radix(&n[2..], 16).ok().and_then(char::from_u32).ok_or("bad &#x;")?
            }
            n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32).ok_or("bad &#;")?,
            n => return Err(format!("unknown entity &{n}; near byte {at}")),
        };
        out.push(c);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A minimal well-formedness check and reader for the XML this project writes (JUnit, SVG):
/// an optional XML declaration, comments, one root element; tags matched, attributes
/// quoted and unique, entities known, no `<` or stray `&` in text. No DTD, CDATA or
/// processing instructions beyond the declaration.
pub fn parse_xml(text: &str) -> Result<Element, String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if text[i..].starts_with("<?xml") {
        i += text[i..].find("?>").ok_or("unterminated XML declaration")? + 2;
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        if stack.is_empty() {
            skip_ws(&mut i);
            if i >= bytes.len() {
                break;
            }
            if root.is_some() && !text[i..].starts_with("<!--") {
                return Err(format!("content after the root element at byte {i}"));
            }
        }
        if i >= bytes.len() {
            return Err(format!("unclosed element <{}>", stack.last().map_or("", |e| e.name.as_str())));
        }
        if text[i..].starts_with("<!--") {
            i += text[i..].find("-->").ok_or("unterminated comment")? + 3;
        } else if text[i..].starts_with("</") {
            let end = i + text[i..].find('>').ok_or("unterminated end tag")?;
            let name = text[i + 2..end].trim();
            let e = stack.pop().ok_or(format!("</{name}> without an open element at byte {i}"))?;
            if e.name != name {
                return Err(format!("<{}> closed by </{name}> at byte {i}", e.name));
            }
            i = end + 1;
            match stack.last_mut() {
                Some(parent) => parent.children.push(e),
                None => root = Some(e),
            }
        } else if bytes[i] == b'<' {
            let start = i;
            i += 1;
            let name_end = i + text[i..].find(|c: char| c.is_whitespace() || c == '>' || c == '/').ok_or("bad tag")?;
            let name = text[i..name_end].to_string();
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || "-_:.".contains(c)) {
                return Err(format!("bad element name `{name}` at byte {start}"));
            }
            i = name_end;
            let mut e = Element { name, attrs: Vec::new(), children: Vec::new(), text: String::new() };
            loop {
                skip_ws(&mut i);
                if text[i..].starts_with("/>") {
                    i += 2;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => root = Some(e),
                    }
                    break;
                }
                if text[i..].starts_with('>') {
                    i += 1;
                    stack.push(e);
                    break;
                }
                let eq = i + text[i..].find('=').ok_or(format!("attribute without a value at byte {i}"))?;
                let key = text[i..eq].trim().to_string();
                let quote = *bytes.get(eq + 1).ok_or("truncated attribute")?;
                if quote != b'"' && quote != b'\'' {
                    return Err(format!("unquoted attribute {key} at byte {eq}"));
                }
                let close = eq + 2 + text[eq + 2..].find(quote as char).ok_or("unterminated attribute")?;
                let raw = &text[eq + 2..close];
                if raw.contains('<') {
                    return Err(format!("`<` in attribute {key} at byte {eq}"));
                }
                if e.attrs.iter().any(|(k, _)| *k == key) {
                    return Err(format!("duplicate attribute {key} at byte {eq}"));
                }
                e.attrs.push((key, unescape(raw, eq)?));
                i = close + 1;
            }
        } else {
            let end = text[i..].find('<').map_or(bytes.len(), |n| i + n);
            let t = unescape(&text[i..end], i)?;
            match stack.last_mut() {
                Some(e) => e.text.push_str(&t),
                None if t.trim().is_empty() => {}
                None => return Err(format!("text outside the root element at byte {i}")),
            }
            i = end;
        }
    }
    root.ok_or_else(|| "no root element".to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_xml;

    #[test]
    fn well_formed_xml_parses_and_broken_xml_does_not() {
        let e = parse_xml("<?xml version=\"1.0\"?>\n<a x=\"1 &amp; 2\"><b/><c>t&lt;</c><!-- x --></a>\n").unwrap();
        assert_eq!((e.name.as_str(), e.attr("x")), ("a", Some("1 & 2")));
        assert_eq!(e.all("c")[0].text, "t<");
        for bad in
            ["<a><b></a></b>", "<a>", "<a x=1/>", "<a>&bogus;</a>", "<a/><b/>", "<a x='1' x='2'/>", "<a>x & y</a>"]
        {
            assert!(parse_xml(bad).is_err(), "{bad} parsed");
        }
    }
}

/// Drawn data, not an empty canvas: a data series (the plots draw them 2 px wide; axes and
/// grid are 1 px) through several points, or an opaque filled shape other than the white
/// background (a bar, a fault, a heatmap cell).
pub fn svg_has_data(svg: &Element) -> bool {
    let line = svg
        .all("polyline")
        .iter()
        .any(|p| p.attr("stroke-width") == Some("2") && p.attr("points").unwrap_or("").split_whitespace().count() >= 3);
    let filled = svg.all("rect").iter().any(|r| {
        r.attr("opacity") == Some("1")
            && r.attr("fill").is_some_and(|f| f != "#FFFFFF" && f != "none")
            && r.attr("width").and_then(|w| w.parse::<f64>().ok()).unwrap_or(0.0) > 0.0
    });
    line || filled
}

/// Headless Chromium for the page tests: screenshots and the network log of a page opened
/// from a file.
pub mod chromium {
    use std::path::Path;

    /// Whether chromium can run here. Absent, the caller skips, unless
    /// STACKBED_REQUIRE_CHROMIUM is set (scripts/test.sh installs it and sets that): then
    /// this panics.
    pub fn available() -> bool {
        match std::process::Command::new("chromium").arg("--version").output() {
            Ok(out) => {
                assert!(out.status.success(), "chromium --version failed");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("STACKBED_REQUIRE_CHROMIUM").is_err(),
                    "STACKBED_REQUIRE_CHROMIUM is set but chromium is not installed"
                );
                eprintln!(
                    "SKIPPED: chromium is not installed (Debian: apt-get install chromium; scripts/test.sh does)"
                );
                false
            }
            Err(e) => panic!("chromium is there but cannot start: {e}"),
        }
    }

    /// Opens `html` (written to `dir/name.html`) in headless Chromium: the screenshot's size
    /// in bytes and the network log.
    pub fn shoot(dir: &Path, name: &str, html: &str) -> (u64, String) {
        let file = dir.join(format!("{name}.html"));
        std::fs::write(&file, html).unwrap();
        let (png, log) = (dir.join(format!("{name}.png")), dir.join(format!("{name}-net.json")));
        let status = std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", dir.join(format!("profile-{name}")).display()))
            .arg(format!("--log-net-log={}", log.display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg("--window-size=1280,4000")
            .arg(format!("file://{}", file.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "chromium failed on {name}");
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        (size, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Whether the page made a request: a request the page makes has the file's (opaque)
    /// origin as its initiator; the browser's own background requests have none.
    pub fn page_requested(net_log: &str) -> bool {
        net_log.contains("\"initiator\":\"null\"")
    }

    /// `page` without its `<svg>` elements: what the page would look like with blank plots.
    pub fn without_svgs(page: &str) -> String {
        let mut bare = page.to_string();
        while let (Some(a), Some(b)) = (bare.find("<svg"), bare.find("</svg>")) {
            bare.replace_range(a..b + 6, "");
        }
        bare
    }

    /// A page that does fetch: the control that shows the net log would see a request.
    pub const FETCHING: &str = "<html><body><img src=\"http://127.0.0.1:9/x.png\"></body></html>";
}

/// Whole simulated runs of shipped scenarios, as the tests of several files run them.
#[cfg(madsim)]
pub mod runs {
    use std::sync::Arc;

    use stackbed_core::scenario::Scenario;
    use stackbed_services::report::{Report, RunOptions};

    /// `scenarios/<name>` with `--set` overrides (`KEY=VALUE`) applied, as `cargo sim run
    /// --set` does.
    pub fn with_overrides<S: AsRef<str>>(name: &str, overrides: &[S]) -> Arc<Scenario> {
        let overrides: Vec<_> = overrides.iter().map(|f| f.as_ref().parse().unwrap()).collect();
        Arc::new(Scenario::load_with(&super::root().join("scenarios").join(name), &overrides).unwrap())
    }

    /// One seed of `s` in the simulator.
    pub fn run(s: &Arc<Scenario>, seed: u64) -> Report {
        let opts = RunOptions {
            scenario: s.clone(),
            scenario_file: s.scenario.name.clone(),
            seed,
            revision: "test".into(),
            replay: format!("cargo sim run {} --seed {seed}", s.scenario.name),
        };
        stackbed_sim::run(&opts).unwrap()
    }
}
