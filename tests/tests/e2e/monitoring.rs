//! The SREs' monitoring files, checked against a real scrape: the alert rules load and
//! pass their unit tests in promtool, a live `/metrics` passes `promtool check
//! metrics`, and every onecard series the rules and the dashboard name is one a
//! single server or a node of a cell exports (a renamed metric would otherwise
//! silence its alert).
//!
//! promtool comes from Debian's `prometheus` package (the README's setup and
//! `.ci/run` install it).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use onecard_tests::{Server, TempDir};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/monitoring")
}

/// Runs promtool with `args` (and `stdin`), and returns its output; fails the test if
/// promtool is missing or refuses.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("promtool: {error} (install Debian's `prometheus` package, as the README says)")
        });
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("feeds promtool");
    drop(input);
    let output = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The `onecard_*` metric names in `text`, without histogram suffixes.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("onecard_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_name_only_metrics_a_live_server_exports() {
    let rules = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(rules.contains("SUCCESS"), "{rules}");
    promtool(&["test", "rules", "alerts_test.yml"], None);

    let dir = TempDir::new("monitoring");
    let server = Server::start(dir.path());
    // Series labelled by route appear with the first request: the first scrape is one.
    let _ = server.metrics();
    let scrape = server.metrics();
    promtool(&["check", "metrics"], Some(&scrape));
    let mut exported = names_in(&scrape);
    // The cell's series come from the leader of a cell (of two: a follower to lag).
    let cell = onecard_tests::cell::Cell::start("monitoring-cell", 2, 1);
    let node = cell.wait_leader(std::time::Duration::from_secs(60));
    let admin = cell.members().iter().find(|m| m.id == node).expect("the leader").admin;
    let (status, cell_scrape) = onecard_tests::Api::new(admin).get_text("/metrics");
    assert_eq!(status, 200, "{cell_scrape}");
    promtool(&["check", "metrics"], Some(&cell_scrape));
    let cell_names = names_in(&cell_scrape);
    assert!(cell_names.contains("onecard_cell_leader"), "{cell_names:?}");
    exported.extend(cell_names);
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring_dir().join(file)).expect("reads");
        let named = names_in(&text);
        assert!(named.len() > 10, "{file} names the metrics: {named:?}");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} names series the server does not export: {unknown:?}");
    }
    assert!(server.stop().success());
}
