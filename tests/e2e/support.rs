//! Helpers shared by the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// The `carrow` binary built for these tests.
pub fn carrow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carrow"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `carrow` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    carrow().args(args).output().expect("carrow runs")
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Generates a small population into `dir` through the CLI.
pub fn generate(dir: &Path, people: usize, seed: u64) {
    let out = run(&[
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--people",
        &people.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
}
