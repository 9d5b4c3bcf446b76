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
    let (_, mine) = desk.get("/api/applications?mine=true");
    assert_eq!(mine.as_array().expect("a list").len(), 1);
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
}
