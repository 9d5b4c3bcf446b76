//! `onecard serve --demo`: the demo campus a newcomer starts with the README's first
//! command.

use onecard_protocol::{AnswerCode, ClientConfig, TerminalClient, TerminalKey};
use onecard_tests::{Server, TempDir, metric};

use crate::support::{outcome, purchase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_campus_serves_its_terminals_and_operators_at_once() {
    let dir = TempDir::new("demo");
    let server = Server::start_with(dir.path(), &["--demo"]);
    let demo = dir.path().join("demo");
    let campus: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("campus.json")).expect("campus.json"))
            .expect("json");
    assert_eq!(campus["cards"], 50_000);
    assert_eq!(campus["merchants"], 300);
    assert_eq!(campus["terminals"], 1_000);
    let terminals = std::fs::read_to_string(demo.join("terminals.csv")).expect("terminals.csv");
    assert_eq!(terminals.lines().count(), 1_001, "a header and 1,000 terminals");
    // The first canteen terminal (after the card centre's 31).
    let line = terminals.lines().find(|l| l.contains(",canteen,")).expect("a canteen terminal");
    let fields: Vec<&str> = line.split(',').collect();
    let id: u32 = fields[0].parse().expect("an id");
    let key = TerminalKey::from_hex(fields[4]).expect("a key");
    let client =
        TerminalClient::connect(server.terminal_addr(), id, &key, 0, ClientConfig::default())
            .await
            .expect("a demo terminal signs on");
    let first = campus["card_first"].as_u64().expect("card_first");
    let answer = client.call(purchase(first, 1_200)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved, "{answer:?}");
    let lost = campus["lost_cards"][0].as_u64().expect("a lost card");
    let answer = client.call(purchase(lost, 100)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::CardLost);

    // The demo operators log in as they are.
    let operators = std::fs::read_to_string(demo.join("operators.csv")).expect("operators.csv");
    let clerk: Vec<&str> = operators
        .lines()
        .find(|l| l.starts_with("demo-clerk,"))
        .expect("a clerk")
        .split(',')
        .collect();
    let mut api = server.api();
    api.login(clerk[0], clerk[2]).expect("the demo clerk logs in");
    let (status, card) = api.get(&format!("/api/cards/{first}"));
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["balance_yuan"], "288.00", "300.00 of meal subsidy less 12.00");
    assert_eq!(card["restricted_yuan"], "50.00");
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, "onecard_cards"), Some(50_000.0));
    assert!(server.stop().success());

    // A restart serves the same campus; --demo does not build it twice.
    let server = Server::start_with(dir.path(), &["--demo"]);
    assert_eq!(metric(&server.metrics(), "onecard_cards"), Some(50_000.0));
    assert!(server.stop().success());
}
