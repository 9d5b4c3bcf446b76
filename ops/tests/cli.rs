//! The `onecard` command line: help, and clear errors for bad arguments.
//!
//! Having an integration test here also makes `cargo test --workspace` build the
//! `onecard` binary, which the end-to-end tests in tests/ run.

use std::process::Command;

fn onecard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onecard"))
}

#[test]
fn help_lists_the_serve_command_and_its_environment_overrides() {
    let output = onecard().args(["serve", "--help"]).output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--data-dir"), "{help}");
    assert!(help.contains("ONECARD_DATA_DIR"), "{help}");
    assert!(help.contains("ONECARD_TERMINAL_LISTEN"), "{help}");
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_clear_error_not_a_panic() {
    let output = onecard()
        .args(["serve", "--data-dir", "/proc/onecard-cannot-be-here"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("opening the ledger in /proc/onecard-cannot-be-here"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_listen_address_is_refused_by_the_parser() {
    let output =
        onecard().args(["serve", "--terminal-listen", "not-an-address"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_by_name() {
    let path = std::env::temp_dir().join(format!("onecard-cli-config-{}.toml", std::process::id()));
    std::fs::write(&path, "data_dir = \"./x\"\nshards_count = 4\n").expect("write");
    let output = onecard().arg("serve").arg("--config").arg(&path).output().expect("runs");
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shards_count"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_names_every_key_with_its_environment_variable() {
    let output = onecard().args(["serve", "--help"]).output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for env in ["ONECARD_CONFIG", "ONECARD_ADMIN_LISTEN", "ONECARD_TOKEN_TTL_SECS", "ONECARD_DEMO"]
    {
        assert!(help.contains(env), "{env} in {help}");
    }
}
