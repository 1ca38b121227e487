//! `shrink <scenario> --seed N [--out FILE]`: runs the seed, and while it fails with the same
//! invariant (the same group a sweep would put it in) removes faults, requests, hosts and
//! nodes (`stackbed_core::scenario::shrink`); writes the smallest scenario found and prints
//! its replay command and the sizes before and after. Candidates run one after another in
//! this process; each is a whole simulated run.

use std::path::{Path, PathBuf};

use stackbed_core::scenario::shrink::{self, Sizes, Verdict};
use stackbed_core::scenario::{apply_overrides, Runner, Scenario};

use crate::Overrides;

#[derive(clap::Args)]
pub struct ShrinkArgs {
    /// The scenario file (TOML) that fails on `--seed`.
    scenario: PathBuf,
    #[arg(long)]
    seed: u64,
    /// Where the smallest scenario goes (default: reports/<scenario name>/shrunk-seed-N.toml).
    #[arg(long)]
    out: Option<PathBuf>,
    /// At most this many candidate runs.
    #[arg(long, default_value_t = 400)]
    max_runs: usize,
    /// Applied before shrinking, and written into the smaller scenario.
    #[command(flatten)]
    overrides: Overrides,
}

/// The failure group of one run of `text` (as if it were the file at `path`), None when it
/// passes; Err when it does not load or cannot run.
fn failure(path: &Path, text: &str, seed: u64, rev: &str) -> Result<Option<String>, String> {
    let scenario = Scenario::load_text(path, text, &[]).map(std::sync::Arc::new).map_err(|e| e.to_string())?;
    let opts = crate::options(&scenario, path, seed, rev);
    let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::world::run(&opts)))
        .map_err(|_| "the run panicked".to_string())??;
    Ok(crate::sweep::failure_group(&report))
}

pub fn shrink(args: ShrinkArgs) -> Result<bool, String> {
    let path = &args.scenario;
    let original = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // The overrides go into the text, so the smaller file needs no --set to fail.
    let scenario = crate::load_with(path, &args.overrides)?;
    let text = apply_overrides(&original, &args.overrides.set)
        .map_err(|(field, message)| format!("{}: field `{field}`: {message}", path.display()))?;
    let rev = crate::revision();
    let seed = args.seed;
    let group = failure(path, &text, seed, &rev)?.ok_or_else(|| {
        format!("{} passes on seed {seed}: nothing to shrink (shrink wants a seed that fails)", path.display())
    })?;
    let before = Sizes::of(&scenario, seed);
    eprintln!("shrinking {} seed {seed}: fails `{group}` ({before})", path.display());
    let shrunk = shrink::shrink(&text, seed, args.max_runs, |candidate| match failure(path, candidate, seed, &rev) {
        Ok(Some(g)) if g == group => Verdict::Same,
        Ok(Some(g)) => Verdict::Other(format!("fails `{g}` instead")),
        Ok(None) => Verdict::Other("passes".into()),
        Err(e) => Verdict::Other(e),
    });
    let small = Scenario::load_text(path, &shrunk.text, &[]).map_err(|e| e.to_string())?;
    let after = Sizes::of(&small, seed);
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("reports").join(&scenario.scenario.name).join(format!("shrunk-seed-{seed}.toml"))
    });
    let body = portable(&shrunk.text, &small, path);
    let replay = format!("cargo {} run {} --seed {seed}", crate::world::NAME, out.display());
    let header = format!(
        "# Shrunk by `stackbed shrink {}{} --seed {seed}` at {rev}: still fails `{group}` on seed {seed}.\n\
         # before: {before}\n# after:  {after}\n#   {replay}\n\n",
        path.display(),
        crate::set_args(&scenario),
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&out, header + &body).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("fails: {group} (seed {seed})");
    println!("before: {before}");
    println!("after:  {after}");
    let budget = if shrunk.budget_spent { " (the --max-runs budget ran out: it may shrink further)" } else { "" };
    println!("runs: {}{budget}", shrunk.runs);
    for k in &shrunk.kept {
        println!("  {k}");
    }
    println!("wrote: {}", out.display());
    println!("replay: {replay}");
    Ok(true)
}

/// `text` with a trace file named by an absolute path, so the scenario runs from anywhere.
fn portable(text: &str, s: &Scenario, original: &Path) -> String {
    let Runner::Trace { file, .. } = &s.workload.runner else { return text.to_string() };
    let dir = original.parent().unwrap_or(Path::new("."));
    let abs = std::fs::canonicalize(dir.join(file)).unwrap_or_else(|_| dir.join(file));
    let set = stackbed_core::scenario::Override {
        key: "workload.runner.file".into(),
        value: format!("\"{}\"", abs.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")),
    };
    apply_overrides(text, &[set]).unwrap_or_else(|_| text.to_string())
}
