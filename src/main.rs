//! The `nova` binary: parse the command line, set up logging, run one command,
//! and turn its outcome into an exit code. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    nova::app::main()
}
