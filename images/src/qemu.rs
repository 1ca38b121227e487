//! The reference: QEMU's own tools (`qemu-img`, `qemu-io`, Debian package qemu-utils), run as
//! processes. Tests and `cargo real bench images` use them to check this crate's images and
//! to measure the same operations side by side.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `qemu-img args...`; an error names the command and its stderr. A missing qemu-img is
/// an error that says which package to install.
pub fn qemu_img(args: &[&str]) -> Result<Output, String> {
    run("qemu-img", args)
}

pub fn qemu_io(args: &[&str]) -> Result<Output, String> {
    run("qemu-io", args)
}

fn run(tool: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {tool} ({e}); install it with `apt-get install qemu-utils`"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or("<non-UTF-8 path>")
}

/// `qemu-img check`: Ok when the image has no errors and no leaks.
pub fn check(path: &Path) -> Result<(), String> {
    qemu_img(&["check", "-q", p(path)]).map(|_| ())
}

/// `qemu-img compare a b`: Ok when both images read the same (a shorter image reads as zeroes).
pub fn compare(a: &Path, b: &Path) -> Result<(), String> {
    qemu_img(&["compare", "-q", p(a), p(b)]).map(|_| ())
}

/// `qemu-img info --output=json`.
pub fn info(path: &Path) -> Result<serde_json::Value, String> {
    let out = qemu_img(&["info", "--output=json", p(path)])?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info output: {e}"))
}
