//! Approval workflows against a real process: a maintenance request walked to its
//! rating over HTTP, and an approved adjustment whose process is killed between the
//! approval and the ledger: after a restart the ledger moved exactly once.

use std::time::Duration;

use onecard_tests::{Server, TempDir, metric};
use serde_json::json;

use crate::support::operator;

#[test]
fn a_maintenance_request_is_applied_for_handled_and_rated_over_http() {
    let dir = TempDir::new("workflow-http");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let desk = operator(&server, &admin, "clerk.wu", "clerk");
    let wang = operator(&server, &admin, "clerk.wang", "clerk");
    let finance = operator(&server, &admin, "finance.li", "finance");

    let (status, definitions) = desk.get("/api/workflows");
    assert_eq!(status, 200);
    assert!(definitions.as_array().expect("a list").iter().any(|d| d["name"] == "maintenance"));
    let form = json!({ "form": {
        "category": "access_gate", "reporter": "韩梅梅", "student_number": "2023002",
        "phone": "13900000000", "dormitory": "西区 5 栋", "description": "门禁刷卡无反应",
    }});
    let (status, bad) =
        desk.post("/api/workflows/maintenance", &json!({ "form": { "category": "x" } }));
    assert_eq!((status, &bad["error"]["code"]), (422, &json!("invalid_form")));
    let (status, unknown) = desk.post("/api/workflows/nope", &form);
    assert_eq!((status, &unknown["error"]["code"]), (404, &json!("workflow_not_found")));
    let (status, applied) = desk.post("/api/workflows/maintenance", &form);
    assert_eq!(status, 200, "{applied}");
    let id = applied["id"].as_u64().expect("an id");

    let (_, inbox) = wang.get("/api/inbox");
    assert!(inbox.as_array().expect("a list").iter().any(|i| i["id"] == id));
    let (status, own) = desk.post(&format!("/api/applications/{id}/approve"), &json!({}));
    assert_eq!((status, &own["error"]["code"]), (403, &json!("four_eyes")));
    let (status, turn) = finance.post(&format!("/api/applications/{id}/approve"), &json!({}));
    assert_eq!((status, &turn["error"]["code"]), (403, &json!("not_your_turn")));
    assert_eq!(wang.post(&format!("/api/applications/{id}/approve"), &json!({})).0, 200);
    let (status, twice) = wang.post(&format!("/api/applications/{id}/approve"), &json!({}));
    assert_eq!((status, &twice["error"]["code"]), (403, &json!("four_eyes")));
    let zhang = operator(&server, &admin, "clerk.zhang", "clerk");
    let (status, wrong) =
        wang.post(&format!("/api/applications/{id}/hand_over"), &json!({ "to": "finance.li" }));
    assert_eq!((status, &wrong["error"]["code"]), (422, &json!("invalid_form")), "not a clerk");
    let (status, handed) = wang.post(
        &format!("/api/applications/{id}/hand_over"),
        &json!({ "to": "clerk.zhang", "comment": "门禁归你" }),
    );
    assert_eq!(status, 200, "{handed}");
    assert_eq!(
        zhang.post(&format!("/api/applications/{id}/approve"), &json!({ "comment": "修好了" })).0,
        200
    );
    let (status, rated) = desk
        .post(&format!("/api/applications/{id}/approve"), &json!({ "rating": 5, "comment": "好" }));
    assert_eq!(status, 200, "{rated}");
    assert_eq!(rated["status"], "completed");
    let (status, finished) = zhang.post(&format!("/api/applications/{id}/comment"), &json!({}));
    assert_eq!((status, &finished["error"]["code"]), (409, &json!("application_finished")));
    let (status, unknown) = zhang.post(&format!("/api/applications/{id}/shrug"), &json!({}));
    assert_eq!(status, 404, "{unknown}");
    let overdue = metric(&server.metrics(), "onecard_workflow_overdue_applications");
    assert_eq!(overdue, Some(0.0), "nothing is overdue yet");
    let (status, _) = desk.get("/api/applications?overdue=true");
    assert_eq!(status, 403, "a clerk does not read the overdue list");
    // Returned for changes, the applicant resubmits it with a changed form.
    let (_, again) = desk.post("/api/workflows/maintenance", &form);
    let again = again["id"].as_u64().expect("an id");
    let (status, _) =
        wang.post(&format!("/api/applications/{again}/return"), &json!({ "comment": "房号?" }));
    assert_eq!(status, 200);
    let mut changed = form.clone();
    changed["form"]["dormitory"] = json!("西区 5 栋 101");
    let (status, refused) = wang.post(&format!("/api/applications/{again}/resubmit"), &changed);
    assert_eq!((status, &refused["error"]["code"]), (403, &json!("not_your_turn")));
    let (status, back) = desk.post(&format!("/api/applications/{again}/resubmit"), &changed);
    assert_eq!(status, 200, "{back}");
    assert_eq!(
        (&back["status"], &back["form"]["dormitory"]),
        (&json!("open"), &json!("西区 5 栋 101"))
    );
    let (_, mine) = desk.get("/api/applications?mine=true");
    assert_eq!(mine.as_array().expect("a list").len(), 2);
    let (_, audit) = admin.get("/api/audit");
    let text = audit.to_string();
    assert!(text.contains("workflow.act") && text.contains("workflow.submit"), "audited");
    assert!(server.stop().success());
}

#[test]
fn an_adjustment_approved_as_the_process_dies_posts_once_after_restart() {
    let dir = TempDir::new("workflow-crash");
    let server =
        Server::start_with_env(dir.path(), &[], &[("ONECARD_CRASH_BEFORE_WORKFLOW_EFFECT", "1")]);
    let admin = server.admin();
    let maker = operator(&server, &admin, "finance.li", "finance");
    let checker = operator(&server, &admin, "finance.zhao", "finance");
    let form = json!({ "form": {
        "debit": "channel_clearing:1", "credit": "suspense:0", "amount_fen": 300,
        "reason": "长款 WX-404",
    }});
    let (status, applied) = maker.post("/api/workflows/adjustment", &form);
    assert_eq!(status, 200, "{applied}");
    let id = applied["id"].as_u64().expect("an id");
    // The approval is stored; the process dies before the ledger posts.
    let url = format!("http://{}/api/applications/{id}/approve", server.admin_addr());
    let token = checker.token().expect("a token").to_owned();
    let died =
        ureq::post(&url).header("Authorization", &format!("Bearer {token}")).send_json(json!({}));
    assert!(died.is_err(), "the server died answering");
    let status = server.wait(Duration::from_secs(10));
    assert!(!status.success(), "it aborted");

    let server = Server::start(dir.path());
    let admin = server.admin();
    let (_, suspense) = admin.get("/api/accounts/suspense:0");
    assert_eq!(suspense["balance_yuan"], "3.00", "recovery posted the approved adjustment");
    let (_, application) = admin.get(&format!("/api/applications/{id}"));
    assert_eq!(application["effect"]["state"], "done", "{application}");
    assert!(server.stop().success());
    // And once only: a second restart posts nothing more.
    let server = Server::start(dir.path());
    let (_, suspense) = server.admin().get("/api/accounts/suspense:0");
    assert_eq!(suspense["balance_yuan"], "3.00");
    assert!(server.stop().success());
    let report = onecard_tests::verify(dir.path());
    assert!(report.contains("every invariant holds"), "{report}");
}

/// Sends the headers of a 5 MiB upload to `path` and nothing more; returns the answer,
/// which must come before any of the body is read.
fn declare_oversize(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: onecard\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/csv\r\nContent-Length: 5242880\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("writes");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Submits `form` to `workflow` as `applicant`; returns the application's id.
fn apply(applicant: &onecard_tests::Api, workflow: &str, form: serde_json::Value) -> u64 {
    let (status, applied) =
        applicant.post(&format!("/api/workflows/{workflow}"), &json!({ "form": form }));
    assert_eq!(status, 200, "{applied}");
    applied["id"].as_u64().expect("an id")
}

/// Approves application `id` as `approver`; returns the application.
fn approve(approver: &onecard_tests::Api, id: u64) -> serde_json::Value {
    let (status, body) = approver.post(&format!("/api/applications/{id}/approve"), &json!({}));
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsidies_closures_openings_extensions_and_discrepancies_walk_end_to_end() {
    let campus = crate::support::Campus::build("workflow-batches-http", 2, &[]).await;
    let (server, admin) = (&campus.server, &campus.admin);
    let finance = operator(server, admin, "finance.li", "finance");
    let checker = operator(server, admin, "finance.zhao", "finance");
    let head = operator(server, admin, "head.chen", "department_head");
    let clerk = operator(server, admin, "clerk.wu", "clerk");
    let [first, second] = [campus.cards[0], campus.cards[1]];

    // 补助: head then centre; the unknown card's row is reported, the other posts.
    let id = apply(
        &finance,
        "subsidy_batch",
        json!({ "reason": "秋季补助", "rows": [
            { "card_number": first, "amount_fen": 50_00 },
            { "card_number": 42, "amount_fen": 1_00 },
        ]}),
    );
    let (status, early) = admin.post(&format!("/api/applications/{id}/approve"), &json!({}));
    assert_eq!((status, &early["error"]["code"]), (403, &json!("not_your_turn")), "the head first");
    approve(&head, id);
    let done = approve(admin, id);
    assert_eq!(done["effect"]["state"], "done", "{done}");
    let oks: Vec<bool> =
        done["effect"]["rows"].as_array().expect("rows").iter().map(|r| r["ok"] == true).collect();
    assert_eq!(oks, [true, false]);
    assert_eq!(crate::support::balance_fen(admin, first), crate::support::FUNDED_FEN + 50_00);

    // A batch larger than the API's usual 64 KiB body: 2,000 rows of one fen.
    let rows: Vec<serde_json::Value> =
        (0..2_000).map(|_| json!({ "card_number": first, "amount_fen": 1 })).collect();
    let big = json!({ "reason": "大批量", "rows": rows });
    assert!(serde_json::to_vec(&json!({ "form": &big })).expect("json").len() > 64 * 1024);
    let id = apply(&finance, "subsidy_batch", big);
    approve(&head, id);
    assert_eq!(approve(admin, id)["effect"]["state"], "done");
    assert_eq!(
        crate::support::balance_fen(admin, first),
        crate::support::FUNDED_FEN + 50_00 + 2_000
    );

    // The same as finance keeps it: a CSV list. A line that cannot be read refuses
    // the upload and names the line; an oversize upload is refused before it is read.
    let path = "/api/workflows/subsidy_batch/csv?reason=%E8%A1%A5%E5%8A%A9";
    let bad = "card_number,amount_yuan,purse,reason\r\n1,2.00,main,ok\r\n2,2.0.0,main,bad\r\n";
    let (status, refused) = finance.post_raw(path, "text/csv", bad.as_bytes());
    assert_eq!((status, &refused["error"]["code"]), (422, &json!("invalid_form")));
    assert!(refused["error"]["message"].as_str().expect("a message").contains("line 3"));
    let answer = declare_oversize(server.admin_addr(), path, finance.token().expect("a token"));
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("body_too_large"), "{answer}");
    let list = format!(
        "\u{feff}card_number,amount_yuan,purse,reason\r\n{first},1.00,main,困难补助\r\n42,1.00,,无此卡\r\n"
    );
    let (status, applied) = finance.post_raw(path, "text/csv", list.as_bytes());
    assert_eq!(status, 200, "{applied}");
    let id = applied["id"].as_u64().expect("an id");
    approve(&head, id);
    let done = approve(admin, id);
    let oks: Vec<bool> =
        done["effect"]["rows"].as_array().expect("rows").iter().map(|r| r["ok"] == true).collect();
    assert_eq!(oks, [true, false], "the unknown card is reported, the rest posts");

    // 销户退款 below the threshold: finance alone.
    let id = apply(&clerk, "card_closure", json!({ "cards": [second], "reason": "graduation" }));
    let done = approve(&finance, id);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, card) = admin.get(&format!("/api/cards/{second}"));
    assert_eq!(card["state"], "closed");

    // 批量开卡 and 延期: the centre approves.
    let id = apply(
        &clerk,
        "card_opening",
        json!({ "source": "人事处", "rows": [
            { "card_number": 8_800_001, "holder_id": "T001", "holder_name": "新教师", "card_type": "staff", "expiry_date": 20_310_731 },
        ]}),
    );
    assert_eq!(approve(admin, id)["effect"]["rows"][0]["outcome"], "opened");
    let (status, _) = admin.get("/api/cards/8800001");
    assert_eq!(status, 200, "the card is open");
    let id =
        apply(&clerk, "card_extension", json!({ "cards": [first], "expiry_date": 20_320_731 }));
    assert_eq!(approve(admin, id)["effect"]["rows"][0]["outcome"], "extended");

    // 对账差异处理: a second finance operator posts it.
    let id = apply(
        &finance,
        "discrepancy",
        json!({
            "debit": "channel_clearing:1", "credit": "suspense:0", "amount_fen": 3_00,
            "reason": "长款 WX-404", "reference": "channel:app:2026-11-23:line 5",
        }),
    );
    assert_eq!(approve(&checker, id)["effect"]["state"], "done");
    let (_, suspense) = admin.get("/api/accounts/suspense:0");
    assert_eq!(suspense["balance_yuan"], "3.00");

    // 商户费率变更 and 商户入驻: both take effect from the next business day.
    let (_, merchants) = admin.get("/api/merchants");
    let canteen = merchants
        .as_array()
        .expect("a list")
        .iter()
        .find(|m| m["category"] == "canteen")
        .expect("a canteen")["id"]
        .as_u64()
        .expect("an id");
    let id = apply(
        &finance,
        "commission_change",
        json!({
            "merchant_id": canteen, "commission_rate": "0.02", "reason": "新学年",
        }),
    );
    approve(&checker, id);
    assert_eq!(approve(&head, id)["effect"]["state"], "done");
    let (_, merchant) = admin.get(&format!("/api/merchants/{canteen}"));
    assert_eq!(merchant["commission_rate"], "0.015", "today keeps today's rate");
    assert_eq!(merchant["scheduled_rates"][0]["rate"], "0.02", "{merchant}");
    let id = apply(
        &finance,
        "merchant_onboarding",
        json!({
            "name": "三食堂", "category": "canteen", "commission_rate": "0.01",
        }),
    );
    approve(&checker, id);
    approve(&head, id);
    let find = |name: &str| {
        let (_, merchants) = admin.get("/api/merchants");
        merchants.as_array().expect("a list").iter().find(|m| m["name"] == name).cloned()
    };
    assert_eq!(find("三食堂").expect("onboarded")["enabled"], false, "not before tomorrow");
    let (_, balances) = admin.get("/api/balances");
    let today = balances["business_date"].as_str().expect("a date").to_owned();
    let (status, _) = admin.post("/api/cutover", &json!({ "date": today }));
    assert_eq!(status, 200);
    assert_eq!(find("三食堂").expect("onboarded")["enabled"], true, "opened by the cutover");
}

#[test]
fn at_a_term_end_serve_applies_for_the_expiry_and_it_runs_once_approved() {
    use onecard_engine::BusinessDate;
    use onecard_engine::date::now_ms;
    // The term ended yesterday: the demo's students' restricted purses hold 50.00.
    let yesterday = BusinessDate::at(now_ms(), 480, 0).previous().to_string();
    let dir = TempDir::new("workflow-term-end");
    let server = Server::start_with(
        dir.path(),
        &["--demo", "--demo-cards", "200", "--term-ends", &yesterday],
    );
    let operators =
        std::fs::read_to_string(dir.path().join("demo/operators.csv")).expect("operators.csv");
    let login = |name: &str| {
        let line = operators.lines().find(|l| l.starts_with(&format!("{name},"))).expect("a line");
        let password = line.split(',').nth(2).expect("a password");
        let mut api = server.api();
        api.login(name, password).expect("logs in");
        api
    };
    let (finance, head) = (login("demo-finance"), login("demo-department_head"));
    // serve applies by itself, within a second or two of starting.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let id = loop {
        let (_, inbox) = finance.get("/api/inbox");
        if let Some(found) =
            inbox.as_array().and_then(|a| a.iter().find(|i| i["workflow"] == "subsidy_expiry"))
        {
            assert_eq!(found["applicant"], "onecard");
            assert_eq!(found["form"]["term_end"], yesterday.as_str());
            break found["id"].as_u64().expect("an id");
        }
        assert!(std::time::Instant::now() < deadline, "serve applied for the expiry");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, first_card) = finance.get("/api/cards/20260000001");
    let before = first_card["restricted_yuan"].clone();
    let approve = |api: &onecard_tests::Api| {
        let (status, body) = api.post(&format!("/api/applications/{id}/approve"), &json!({}));
        assert_eq!(status, 200, "{body}");
        body
    };
    approve(&finance);
    let done = approve(&head);
    assert_eq!(done["effect"]["state"], "done", "{done}");
    assert!(done["effect"]["note"].as_str().expect("a note").contains("restricted purses emptied"));
    let (_, card) = finance.get("/api/cards/20260000001");
    assert_eq!(card["restricted_yuan"], "0.00", "was {before}");
    assert!(server.stop().success());
    // A restart does not apply for the same term end twice.
    let server = Server::start_with(dir.path(), &["--term-ends", &yesterday]);
    std::thread::sleep(Duration::from_secs(2));
    let line = operators.lines().find(|l| l.starts_with("demo-auditor,")).expect("an auditor");
    let mut auditor = server.api();
    auditor.login("demo-auditor", line.split(',').nth(2).expect("a password")).expect("logs in");
    let (_, all) = auditor.get("/api/applications");
    let expiries = all
        .as_array()
        .expect("a list")
        .iter()
        .filter(|i| i["workflow"] == "subsidy_expiry")
        .count();
    assert_eq!(expiries, 1, "one application per term end");
    assert!(server.stop().success());
}
