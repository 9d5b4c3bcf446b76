//! The load generator against a real server: a short run whose report adds up and
//! whose ledger check passes. A correctness test, not a timing one.

use calamine::{Reader as _, Xlsx};
use onecard_loadtest::scenario::Scenario;
use onecard_loadtest::{RunConfig, run};
use onecard_tests::{Server, TempDir};
use serde_json::json;
use sha2::{Digest, Sha256};

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

    // Finance closes the day and settles it: the settlement's gross is what the
    // terminals were told, and its files check out.
    let admin = server.admin();
    let (_, balances) = admin.get("/api/balances");
    let today = balances["business_date"].as_str().expect("a date").to_owned();
    let (status, cutover) = admin.post("/api/cutover", &json!({ "date": today }));
    assert_eq!(status, 200, "{cutover}");
    assert_eq!(cutover["closed_through"], today.as_str());
    let (status, again) = admin.post("/api/cutover", &json!({ "date": today }));
    assert_eq!((status, &again["changed"]), (200, &json!(false)), "repeat-safe");
    // The server settles a closed date by itself within a second; whether this call or
    // the server's day task posted it, it is posted once.
    let (status, settled) = admin.post(&format!("/api/settlements/{today}"), &json!({}));
    assert_eq!(status, 200, "{settled}");
    assert!(settled["posted"].is_boolean());
    let gross = parse_fen(&settled["totals"]["gross_yuan"]);
    assert_eq!(gross, check.told_net_sales_fen, "the settlement is what the terminals were told");
    let (_, repeat) = admin.post(&format!("/api/settlements/{today}"), &json!({}));
    assert_eq!(repeat["posted"], false);
    assert_eq!(repeat["totals"], settled["totals"]);
    let (_, payout) = admin.get("/api/accounts/settlement_payout:0");
    assert_eq!(payout["balance_yuan"], settled["totals"]["net_payable_yuan"], "paid once");

    let (status, csv_bytes) = admin.get_bytes(&format!("/api/settlements/{today}/file"));
    assert_eq!(status, 200);
    let written = dir.path().join("settlements").join(&today);
    let on_disk = std::fs::read_dir(&written)
        .expect("files written")
        .filter(|entry| {
            entry.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("settlement-"))
        })
        .count();
    assert_eq!(on_disk, 4, "merchants, terminals, meals and the workbook");
    let name = format!("settlement-{}-merchants.csv", today.replace('-', ""));
    assert_eq!(std::fs::read(written.join(name)).expect("the file"), csv_bytes, "same bytes");
    let body = csv_bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).expect("a BOM");
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(body);
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("parses");
    let (trailer, merchants) = rows.split_last().expect("a trailer");
    assert_eq!(&trailer[0], "TRAILER");
    assert_eq!(trailer[1].parse::<usize>().expect("a count"), merchants.len());
    assert_eq!(parse_fen(&json!(trailer[2])), gross);
    let trailer_at = body[..body.len() - 2].iter().rposition(|b| *b == b'\n').expect("lines") + 1;
    assert_eq!(hex::encode(Sha256::digest(&body[..trailer_at])), &trailer[5], "the body's hash");

    let (status, xlsx) = admin.get_bytes(&format!("/api/settlements/{today}/file?kind=xlsx"));
    assert_eq!(status, 200);
    let mut workbook: Xlsx<_> = Xlsx::new(std::io::Cursor::new(xlsx)).expect("opens");
    let sheet = workbook.worksheet_range("merchants").expect("a sheet");
    assert_eq!(sheet.rows().count(), merchants.len() + 2, "header, merchants, totals");
    let (status, reconciliation) = admin.get(&format!("/api/reconciliations/{today}"));
    assert_eq!(status, 200, "{reconciliation}");
    assert_eq!(reconciliation["passed"], true, "{reconciliation}");
    assert!(reconciliation["card_flow"]["purchases_yuan"].is_string(), "money as yuan strings");
    let (status, error) = admin.get(&format!("/api/settlements/{today}/file?kind=pdf"));
    assert_eq!((status, &error["error"]["code"]), (400, &json!("bad_query")));
    assert!(server.stop().success());
}

fn parse_fen(value: &serde_json::Value) -> i64 {
    let text = value.as_str().expect("yuan as a string");
    let (whole, fraction) = text.split_once('.').expect("two decimals");
    let sign = if whole.starts_with('-') { -1 } else { 1 };
    let whole: i64 = whole.trim_start_matches('-').parse().expect("yuan");
    sign * (whole * 100 + fraction.parse::<i64>().expect("fen"))
}
