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
