//! The business day from the command line: `onecard cutover` and `onecard settle` on a
//! stopped server's store, each repeat-safe, the files the same bytes every time.

use std::path::Path;
use std::process::{Command, Output};

use onecard_protocol::AnswerCode;
use onecard_tests::onecard_binary;
use serde_json::json;

use crate::support::{Campus, operator, outcome, purchase};

fn onecard(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(onecard_binary())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_and_settle_from_the_command_line_are_repeat_safe() {
    let campus = Campus::build("settle-cli", 3, &[]).await;
    let client = campus.canteen.connect(&campus.server).await;
    for (card, fen) in campus.cards.iter().zip([12_00, 7_50, 3_01]) {
        let answer = client.call(purchase(*card, fen)).await.expect("answered");
        assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    }
    client.sign_off().await.expect("signs off");
    let (_, balances) = campus.admin.get("/api/balances");
    let today = balances["business_date"].as_str().expect("a date").to_owned();
    let Campus { server, dir, .. } = campus;
    assert!(server.stop().success());
    let data = dir.path();

    let early = onecard(data, &["settle", "--date", &today]);
    assert!(!early.status.success(), "an open date cannot be settled");
    assert!(text(&early).contains("not closed"), "{}", text(&early));

    let turned = onecard(data, &["cutover", "--date", &today]);
    assert!(turned.status.success(), "{}", text(&turned));
    assert!(text(&turned).starts_with("turned"), "{}", text(&turned));
    let again = onecard(data, &["cutover", "--date", &today]);
    assert!(again.status.success());
    assert!(text(&again).starts_with("already closed"), "{}", text(&again));

    let settled = onecard(data, &["settle", "--date", &today]);
    assert!(settled.status.success(), "{}", text(&settled));
    assert!(text(&settled).contains("gross 22.51"), "{}", text(&settled));
    let folder = data.join("settlements").join(&today);
    let read_all = || {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&folder)
            .expect("the date's folder")
            .map(|entry| {
                let entry = entry.expect("an entry");
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read(entry.path()).expect("reads"),
                )
            })
            .collect();
        files.sort();
        files
    };
    let first = read_all();
    assert_eq!(first.len(), 4);
    let repeat = onecard(data, &["settle", "--date", &today]);
    assert!(repeat.status.success());
    assert!(text(&repeat).contains("already settled"), "{}", text(&repeat));
    assert_eq!(read_all(), first, "the same files, byte for byte");

    let reconciled = onecard(data, &["reconcile", "--date", &today]);
    assert!(reconciled.status.success(), "{}", text(&reconciled));
    for check in ["trial_balance", "card_pool", "card_flow", "merchants", "terminal_sequences"] {
        assert!(text(&reconciled).contains(&format!("{check:<20} ok")), "{}", text(&reconciled));
    }
    assert!(text(&reconciled).contains("purchases -22.51"), "{}", text(&reconciled));

    let bad = onecard(data, &["settle", "--date", "2026-02-30"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not a date"), "{}", text(&bad));
    let verified = onecard(data, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_statement_is_imported_over_http_and_every_line_classified() {
    // Three cards, each funded through the app channel under `fund-<card>`.
    let campus = Campus::build("channel-http", 3, &[]).await;
    let admin = &campus.admin;
    let (_, balances) = admin.get("/api/balances");
    let today = balances["business_date"].as_str().expect("a date").to_owned();
    let path = format!("/api/reconciliations/{today}/channels/app");
    let [first, second, third] = [campus.cards[0], campus.cards[1], campus.cards[2]];
    let statement = format!(
        "\u{feff}reference,amount_yuan,date\r\nfund-{first},100.00,{today} 08:00:00\r\n\
         fund-{second},100.01,{today}\r\nfund-{first},100.00,{today}\r\nWX-404,3.00,{today}\r\n\
         fund-x,1;00,{today}\r\n"
    );
    let (status, early) = admin.post_raw(&path, "text/csv", statement.as_bytes());
    assert_eq!((status, &early["error"]["code"]), (409, &json!("date_not_closed")), "{early}");

    let (status, _) = admin.post("/api/cutover", &json!({ "date": today }));
    assert_eq!(status, 200);
    let (status, report) = admin.post_raw(&path, "text/csv", statement.as_bytes());
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["statement_lines"], 5);
    let count = |class: &str| report["classes"][class]["count"].as_u64().expect("a count");
    assert_eq!(
        [count("matched"), count("amount_differs"), count("duplicate"), count("surplus")],
        [1, 1, 1, 1]
    );
    assert_eq!((count("malformed"), count("shortfall")), (1, 1));
    assert_eq!(report["classes"]["shortfall"]["our_yuan"], "100.00");
    let shortfall = report["discrepancies"]
        .as_array()
        .expect("discrepancies")
        .iter()
        .find(|d| d["class"] == "shortfall")
        .expect("the third card's top-up");
    assert_eq!(shortfall["reference"], format!("fund-{third}"));
    let malformed = report["discrepancies"]
        .as_array()
        .expect("discrepancies")
        .iter()
        .find(|d| d["class"] == "malformed")
        .expect("the bad line");
    assert_eq!(malformed["line"], 6, "named by its line number");

    let (status, csv_report) = admin.get_text(&format!("{path}?format=csv"));
    assert_eq!(status, 200);
    assert_eq!(csv_report.lines().count(), 1 + 5 + 1, "a header, five lines, one shortfall");
    let (status, stored) = admin.get(&path);
    assert_eq!((status, &stored["passed"]), (200, &json!(false)));

    let (status, error) = admin.post_raw(&path, "text/csv", b"ref,amount\r\n");
    assert_eq!((status, &error["error"]["code"]), (422, &json!("bad_statement")), "{error}");
    let (status, error) = admin.post_raw(&format!("{path}?adapter=nope"), "text/csv", b"");
    assert_eq!((status, &error["error"]["code"]), (422, &json!("bad_adapter")), "{error}");
    let missing = format!("/api/reconciliations/{today}/channels/paypal");
    let (status, error) = admin.post_raw(&missing, "text/csv", b"");
    assert_eq!((status, &error["error"]["code"]), (404, &json!("channel_not_found")));
    // Nothing was posted: the card pool is what the three top-ups made it.
    let (_, after) = admin.get("/api/balances");
    assert_eq!(after["card_pool_yuan"], balances["card_pool_yuan"]);

    // The surplus is resolved by an adjustment, under four eyes: a finance maker
    // proposes, the same maker cannot approve, a second operator posts it once.
    let maker = operator(&campus.server, admin, "finance.li", "finance");
    let checker = operator(&campus.server, admin, "finance.zhao", "finance");
    let proposal = json!({
        "debit": "channel_clearing:1",
        "credit": "suspense:0",
        "amount_yuan": "3.00",
        "reason": "长款 WX-404: the app channel took 3.00 no card received",
        "reference": format!("channel:app:{today}:line 5"),
    });
    let (status, proposed) = maker.post("/api/adjustments", &proposal);
    assert_eq!(status, 200, "{proposed}");
    assert_eq!(proposed["state"], "pending");
    let id = proposed["id"].as_u64().expect("an id");
    let (_, suspense_before) = admin.get("/api/accounts/suspense:0");
    let (status, refused) = maker.post(&format!("/api/adjustments/{id}/approve"), &json!({}));
    assert_eq!((status, &refused["error"]["code"]), (403, &json!("same_operator")));
    let (_, unchanged) = admin.get("/api/accounts/suspense:0");
    assert_eq!(unchanged, suspense_before, "nothing posted without a second operator");
    let (status, posted) = checker.post(&format!("/api/adjustments/{id}/approve"), &json!({}));
    assert_eq!(status, 200, "{posted}");
    assert_eq!((&posted["state"], &posted["checker"]), (&json!("posted"), &json!("finance.zhao")));
    let (status, again) = checker.post(&format!("/api/adjustments/{id}/approve"), &json!({}));
    assert_eq!((status, &again["error"]["code"]), (409, &json!("not_pending")));
    let (_, suspense) = admin.get("/api/accounts/suspense:0");
    assert_eq!(suspense["balance_yuan"], "3.00", "posted once");
    let (status, bad) = maker.post(
        "/api/adjustments",
        &json!({ "debit": "suspense:0", "credit": "suspense:0", "amount_yuan": "1.00", "reason": "x" }),
    );
    assert_eq!((status, &bad["error"]["code"]), (422, &json!("same_account")));
    let clerk = operator(&campus.server, admin, "clerk.wu", "clerk");
    let (status, _) = clerk.post("/api/adjustments", &proposal);
    assert_eq!(status, 403, "a clerk proposes no adjustments");
}
