//! The admin API of a real server: authentication, roles, lockout, the audit log, the
//! card centre's card lifecycle, and bad input.

use std::time::Duration;

use onecard_tests::{Api, Server, TempDir, metric};
use serde_json::{Value, json};

use crate::support::{open_card, operator};

/// Sends the headers of a 10 MB JSON body and nothing more; returns the answer.
fn oversize_post(server: &Server, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.admin_addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "POST /api/cards HTTP/1.1\r\nHost: onecard\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 10485760\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Writes `parts` on one connection, pausing 300 ms between them, and reads until the
/// server closes it.
fn raw_exchange(server: &Server, parts: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.admin_addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        stream.write_all(part.as_bytes()).expect("write");
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The audit records, newest first.
fn audit(admin: &Api) -> Vec<Value> {
    let (status, body) = admin.get("/api/audit?limit=500");
    assert_eq!(status, 200, "{body}");
    body.as_array().expect("a list").clone()
}

#[test]
fn no_token_an_expired_token_a_wrong_role_and_a_locked_operator_are_refused_and_audited() {
    let dir = TempDir::new("api-auth");
    let server =
        Server::start_with(dir.path(), &["--token-ttl-secs", "5", "--login-failures-max", "3"]);
    let admin = server.admin();
    let clerk = operator(&server, &admin, "clerk.wang", "clerk");
    let auditor = operator(&server, &admin, "auditor.li", "auditor");

    // Health needs nothing; everything else needs a token.
    assert_eq!(server.api().get("/healthz").0, 200);
    assert_eq!(server.api().get("/readyz").0, 200);
    let (status, body) = server.api().get("/api/merchants");
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
    let mut forged = server.api();
    forged.set_token(Some("00".repeat(32).as_str()));
    assert_eq!(forged.get("/api/merchants").0, 401);

    // A clerk may open cards but not create merchants or read the audit log.
    open_card(&clerk, 5_000_001);
    let (status, body) = clerk.post(
        "/api/merchants",
        &json!({ "name": "x", "category": "shop", "commission_rate": "0.01" }),
    );
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert_eq!(clerk.get("/api/audit").0, 403);
    // An auditor reads and cannot change.
    assert_eq!(auditor.get("/api/audit").0, 200);
    assert_eq!(auditor.get("/api/cards/5000001").0, 200);
    assert_eq!(auditor.post("/api/cards/5000001/report-lost", &json!({})).0, 403);

    // Three wrong passwords lock the operator; the right one is then refused too.
    let mut guesser = server.api();
    for _ in 0..3 {
        let refused = guesser.login("clerk.wang", "wrong-password").expect_err("wrong");
        assert_eq!(refused.status, 401);
    }
    let refused = guesser.login("clerk.wang", "clerk.wang-own-password").expect_err("locked");
    assert_eq!(
        (refused.status, code(&refused.body)),
        (423, "operator_locked"),
        "{:?}",
        refused.body
    );
    // An admin unlocks (logged in afresh: on a busy machine the first token may have
    // lived out its five seconds by now).
    assert_eq!(server.admin().post("/api/operators/clerk.wang/unlock", &json!({})).0, 200);
    guesser.login("clerk.wang", "clerk.wang-own-password").expect("unlocked");

    // Tokens expire.
    std::thread::sleep(Duration::from_millis(5_500));
    let (status, body) = clerk.get("/api/cards/5000001");
    assert_eq!((status, code(&body)), (401, "token_expired"), "{body}");

    // Every refusal is in the audit log, with who and from where.
    let mut admin = server.admin();
    let records = audit(&admin);
    let has = |action: &str, actor: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r["action"] == action && r["actor"] == actor && r["outcome"] == outcome)
    };
    assert!(has("auth.token", "-", "refused"), "no-token attempt audited");
    assert!(has("auth.permission", "clerk.wang", "refused"), "wrong role audited");
    assert!(has("auth.login", "clerk.wang", "refused"), "bad password and lock audited");
    assert!(has("card.open", "clerk.wang", "ok"), "the change audited");
    assert!(has("operator.unlock", "admin", "ok"));
    assert!(records.iter().all(|r| r["from"] == "127.0.0.1"), "from where");
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("own-password") && !text.contains("argon2"), "no secrets audited");
    let metrics = server.metrics();
    assert!(
        metric(&metrics, r#"onecard_http_auth_refused_total{reason="forbidden"}"#).unwrap_or(0.0)
            >= 3.0
    );
    assert!(
        metric(&metrics, r#"onecard_http_auth_refused_total{reason="token_expired"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    admin.set_token(None);
    assert!(server.stop().success());
}

#[test]
fn the_card_centre_runs_a_card_through_its_life() {
    let dir = TempDir::new("api-cards");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let (status, card) = admin.post(
        "/api/cards",
        &json!({
            "card_number": 6_100_001u64, "holder_id": "2026000123", "holder_name": "张三",
            "card_type": "staff", "expiry_date": "2027-07-31", "deposit_yuan": "20.00",
            "pin": "123456", "limits": { "daily_yuan_max": "80.50" }
        }),
    );
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["state"], "active");
    assert_eq!(card["deposit_yuan"], "20.00");
    assert_eq!(card["limits"]["daily_yuan_max"], "80.50");
    assert_eq!(card["has_pin"], true);
    assert!(card.get("pin").is_none());

    let post = |path: &str, body: Value| admin.post(&format!("/api/cards/6100001/{path}"), &body);
    assert_eq!(post("report-lost", json!({})).1["state"], "lost");
    let (status, body) = post("report-lost", json!({}));
    assert_eq!((status, code(&body)), (409, "card_state"), "{body}");
    assert_eq!(post("unlock", json!({})).1["state"], "active");
    assert_eq!(post("freeze", json!({})).1["state"], "frozen");
    assert_eq!(post("unfreeze", json!({})).1["state"], "active");
    assert_eq!(
        post("extend", json!({ "expiry_date": "2028-07-31" })).1["expiry_date"],
        "2028-07-31"
    );
    let (status, body) = post("extend", json!({ "expiry_date": "2026-01-01" }));
    assert_eq!((status, code(&body)), (422, "invalid_date"), "{body}");
    assert_eq!(
        post("limits", json!({ "transaction_yuan_max": "30" })).1["limits"]["transaction_yuan_max"],
        "30.00"
    );
    assert_eq!(post("pin", json!({ "pin": "654321" })).0, 200);
    let (status, body) = post("pin", json!({ "pin": "12ab" }));
    assert_eq!((status, code(&body)), (422, "invalid_pin"), "{body}");
    let (status, reissued) =
        post("reissue", json!({ "new_card_number": 6_100_002u64, "fee_yuan": "15.00" }));
    assert_eq!(status, 200, "{reissued}");
    assert_eq!(reissued["card_number"], 6_100_002u64);
    assert_eq!(admin.get("/api/cards/6100001").1["state"], "replaced");
    let (status, body) = admin.get("/api/cards/6100009");
    assert_eq!((status, code(&body)), (404, "card_not_found"));

    // Deposit and card fee reached their accounts.
    let (_, balances) = admin.get("/api/balances");
    let account = |name: &str| {
        balances["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|a| a["account"] == name)
            .cloned()
    };
    assert_eq!(account("deposit:0").expect("deposit")["balance_yuan"], "20.00", "{balances}");
    assert_eq!(account("card_fee_income:0").expect("fees")["balance_yuan"], "15.00");
    assert_eq!(admin.get("/api/accounts/deposit:0").1["balance_yuan"], "20.00");
    assert_eq!(admin.get("/api/accounts/nonsense").0, 400);
    assert!(server.stop().success());
}

#[test]
fn bad_json_unknown_fields_wrong_types_and_oversize_bodies_are_4xx_with_a_code() {
    let dir = TempDir::new("api-bad-input");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let cases: [(&[u8], u16, &str); 7] = [
        (b"{not json", 400, "bad_json"),
        (b"{\"card_number\": 1, \"surprise\": true}", 422, "invalid_body"),
        (b"{\"card_number\": \"one\", \"holder_id\": \"a\", \"holder_name\": \"b\", \"card_type\": \"student\", \"expiry_date\": \"2030-01-01\"}", 422, "invalid_body"),
        (b"{\"card_number\": 5, \"holder_id\": \"a\", \"holder_name\": \"b\", \"card_type\": \"wizard\", \"expiry_date\": \"2030-01-01\"}", 422, "invalid_body"),
        (b"{\"card_number\": 5, \"holder_id\": \"a\", \"holder_name\": \"b\", \"card_type\": \"student\", \"expiry_date\": \"2030-02-30\"}", 422, "invalid_body"),
        (b"{\"card_number\": 5, \"holder_id\": \"a\", \"holder_name\": \"b\", \"card_type\": \"student\", \"expiry_date\": \"2030-01-01\", \"deposit_yuan\": \"1.001\"}", 422, "invalid_body"),
        // Too large to scale to fen (the fuzzer's find): refused, not a panic.
        (b"{\"card_number\": 5, \"holder_id\": \"a\", \"holder_name\": \"b\", \"card_type\": \"student\", \"expiry_date\": \"2030-01-01\", \"deposit_yuan\": \"2222222222222222222222211000.00\"}", 422, "invalid_body"),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = admin.post_raw("/api/cards", "application/json", body);
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{}: {answer}",
            String::from_utf8_lossy(body)
        );
    }
    let (status, answer) = admin.post_raw("/api/cards", "text/plain", b"{}");
    assert_eq!((status, code(&answer)), (415, "json_required"), "{answer}");
    // A body declared far above the limit is refused before a byte of it is read.
    let answer = oversize_post(&server, admin.token().expect("a token"));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    // A body that does not declare its length is cut off at the limit as it is read.
    let token = admin.token().expect("a token");
    let chunk = "x".repeat(32 * 1024);
    let chunks = format!("{:x}\r\n{chunk}\r\n", chunk.len()).repeat(3);
    let answer = raw_exchange(
        &server,
        &[&format!(
            "POST /api/cards HTTP/1.1\r\nHost: onecard\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{chunks}0\r\n\r\n"
        )],
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    // A body sent to an endpoint that takes none, arriving after its headers: it is
    // read before the answer, so the connection stays open for the next request on
    // it (a client's pooled connection), and both are answered.
    open_card(&admin, 8_800_000_777);
    let post = format!(
        "POST /api/cards/8800000777/freeze HTTP/1.1\r\nHost: onecard\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\n\r\n"
    );
    let get = format!(
        "{{}}GET /api/cards/8800000777 HTTP/1.1\r\nHost: onecard\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(&server, &[&post, &get]);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let (status, answer) = admin.get("/api/cards/not-a-number");
    assert_eq!((status, code(&answer)), (400, "bad_path"), "{answer}");
    let (status, answer) = admin.get("/api/cards/1/statement?limit=lots");
    assert_eq!((status, code(&answer)), (400, "bad_query"), "{answer}");
    let (status, answer) = admin.get("/api/nowhere");
    assert_eq!((status, code(&answer)), (404, "not_found"), "{answer}");
    let (status, answer) = admin.post(
        "/api/merchants",
        &json!({ "name": "x", "category": "shop", "commission_rate": "1.5" }),
    );
    assert_eq!((status, code(&answer)), (422, "invalid_rate"), "{answer}");
    // No 500 anywhere.
    let metrics = server.metrics();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("onecard_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
    assert!(server.stop().success());
}
