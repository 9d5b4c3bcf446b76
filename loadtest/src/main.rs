//! onecard-loadtest: an open-loop peak-meal terminal simulator.
//!
//! The simulator drives a running `onecard serve` through the protocol crate's
//! `TerminalClient`. It is built once the engine can take purchases; until then this
//! binary says so and exits non-zero, so no script mistakes it for a run.

fn main() -> std::process::ExitCode {
    eprintln!("onecard-loadtest: the simulator is not built yet; the engine cannot take purchases");
    std::process::ExitCode::FAILURE
}
