//! The load generator against a real server: a short run whose report adds up and
//! whose ledger check passes. A correctness test, not a timing one.

use onecard_loadtest::scenario::Scenario;
use onecard_loadtest::{RunConfig, run};
use onecard_tests::{Server, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lunch_peak_adds_up_and_the_ledger_holds_what_the_terminals_were_told() {
    let dir = TempDir::new("loadtest");
    let server = Server::start_with(dir.path(), &["--demo", "--demo-cards", "2000"]);
    let mut scenario = Scenario::load("lunch-peak").expect("built in");
    scenario.reshape(Some(4.0), Some(0.08));
    scenario.terminals = 24;
    scenario.top_up_terminals = 4;
    scenario.bad_fraction = 0.05;
    let out = dir.path().join("report");
    let report = run(RunConfig {
        terminal_addr: server.terminal_addr(),
        admin_addr: server.admin_addr(),
        data_dir: dir.path().to_owned(),
        scenario,
        out_dir: Some(out.clone()),
        plot: true,
        check: true,
        progress: false,
    })
    .await
    .expect("the run completes");

    assert!(report.scheduled > 100, "{}", report.text());
    assert_eq!(report.answered + report.failed, report.scheduled, "every request accounted for");
    let answers: u64 = report.codes.values().flat_map(|codes| codes.values()).sum();
    assert_eq!(answers, report.answered, "the codes add up to the answers");
    let latency_count = report.latency["all"].count;
    assert_eq!(latency_count, report.answered, "every answer has a latency");
    let code = |kind: &str, code: &str| {
        report.codes.get(kind).and_then(|c| c.get(code)).copied().unwrap_or(0)
    };
    assert!(code("purchase", "approved") > 0, "{}", report.text());
    if let Some(lost) = report.codes.get("lost_card") {
        assert_eq!(
            lost.keys().collect::<Vec<_>>(),
            ["card_lost"],
            "lost cards are refused as lost"
        );
    }
    if let Some(forged) = report.codes.get("bad_mac") {
        assert_eq!(forged.keys().collect::<Vec<_>>(), ["bad_mac"], "forged MACs are refused");
    }
    let check = report.check.as_ref().expect("the check ran");
    assert!(check.passed, "{}", report.text());
    assert!(check.told_net_sales_fen > 0);
    assert_eq!(check.told_net_sales_fen, check.ledger_net_sales_fen);
    assert!(check.verify_clean);
    assert!(report.passed());
    for file in [
        "report.txt",
        "report.json",
        "latency.hgrm",
        "latency-over-time.svg",
        "latency-percentiles.svg",
    ] {
        assert!(out.join(file).exists(), "{file} written");
    }
    assert!(server.stop().success());
}
