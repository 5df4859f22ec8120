//! The `nova` binary: parse the command line, set up logging, run one command,
//! and turn its outcome into an exit code. Everything else lives in the library.

/// mimalloc: malloc and free were a sixth of the runtime threads' CPU with
/// glibc's allocator (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nova::app::main()
}
