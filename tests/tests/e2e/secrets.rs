//! Secrets: terminal keys are sealed at rest with the master key, and no answer, log
//! line or stored byte carries a terminal key, the master key or a password hash; a
//! store opened with the wrong master key is refused by name; a rotation of the master
//! key seals every secret anew and keeps the old key; each operator role
//! reaches its own endpoints and no other's, and every refusal is counted.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use onecard_protocol::{AnswerCode, TerminalKey};
use onecard_tests::{Api, Server, TempDir, metric, onecard_binary, run_onecard};
use serde_json::{Value, json};

use crate::support::{
    Campus, TerminalSpec, merchant, one_attempt, open_card, operator, outcome, purchase, top_up,
};

/// Whether `needle` (or its hex, either case) occurs anywhere in the files under `dir`,
/// the master key file aside; the first file that holds it.
fn found_in_files(dir: &Path, needles: &[Vec<u8>]) -> Option<String> {
    let entries = std::fs::read_dir(dir).expect("reads the directory");
    for entry in entries.map(|entry| entry.expect("an entry")) {
        let path = entry.path();
        if path.file_name().is_some_and(|name| name == "master.key") {
            continue;
        }
        if path.is_dir() {
            if let Some(found) = found_in_files(&path, needles) {
                return Some(found);
            }
            continue;
        }
        let bytes = std::fs::read(&path).expect("reads the file");
        if needles.iter().any(|needle| bytes.windows(needle.len()).any(|w| w == needle.as_slice()))
        {
            return Some(path.display().to_string());
        }
    }
    None
}

/// A secret in every form it could be written in: raw, hex, HEX.
fn forms(raw: &[u8]) -> Vec<Vec<u8>> {
    let hex = hex::encode(raw);
    vec![raw.to_vec(), hex.clone().into_bytes(), hex.to_uppercase().into_bytes()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_keys_are_sealed_at_rest_and_no_answer_log_or_file_carries_a_secret() {
    let dir = TempDir::new("secrets-at-rest");
    let logs = TempDir::new("secrets-logs");
    let log = logs.path().join("serve.log");
    let server = Server::start_logging_to(dir.path(), &[], &[("RUST_LOG", "debug")], &log);
    let admin = server.admin();
    let centre = merchant(&admin, "校园卡服务中心", "card_centre");
    let canteen = merchant(&admin, "第二食堂 05号窗口", "canteen");
    let first_key = TerminalKey::new(*b"onecard-secret-terminal-key-0001");
    let rotated_key = TerminalKey::new(*b"onecard-secret-terminal-key-0002");
    let kiosk_key = TerminalKey::new(*b"onecard-secret-terminal-key-0003");
    let create = |merchant_id: u32, key: &TerminalKey| {
        let (status, body) = admin.post(
            "/api/terminals",
            &json!({ "merchant_id": merchant_id, "key_hex": key.to_hex() }),
        );
        assert_eq!(status, 200, "{body}");
        u32::try_from(body["id"].as_u64().expect("an id")).expect("fits")
    };
    let kiosk =
        TerminalSpec { id: create(centre, &kiosk_key), merchant_id: centre, key: kiosk_key };
    let window = create(canteen, &first_key);
    let (status, body) = admin
        .post(&format!("/api/terminals/{window}/key"), &json!({ "key_hex": rotated_key.to_hex() }));
    assert_eq!(status, 200, "{body}");
    let window = TerminalSpec { id: window, merchant_id: canteen, key: rotated_key.clone() };
    // The keys work: the rotated one signs on and buys.
    open_card(&admin, 7_100_001);
    let client = kiosk.connect_with(&server, one_attempt()).await;
    let answer = client.call(top_up(7_100_001, 50_00, "secrets-fund")).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    let client = window.connect_with(&server, one_attempt()).await;
    let answer = client.call(purchase(7_100_001, 12_00)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    drop(client);
    let _clerk = operator(&server, &admin, "clerk.zhao", "clerk");

    // No answer of the API carries a key or a password hash.
    let mut answers = String::new();
    for path in [
        "/api/terminals",
        &format!("/api/terminals/{}", window.id),
        "/api/terminals/attention",
        "/api/merchants",
        &format!("/api/merchants/{canteen}"),
        "/api/operators",
        "/api/audit?limit=500",
        "/api/cards/7100001",
        "/api/cards/7100001/statement",
        "/api/balances",
        "/api/verify",
        "/api/backups",
        "/readyz",
    ] {
        let (status, body) = admin.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        answers.push_str(&body.to_string());
    }
    answers.push_str(&server.metrics());
    let secrets: Vec<Vec<u8>> =
        [&first_key, &rotated_key, &window.key].iter().flat_map(|k| forms(k.as_bytes())).collect();
    for secret in secrets.iter().skip(1).step_by(3).chain(std::iter::once(&b"$argon2".to_vec())) {
        let secret = String::from_utf8_lossy(secret);
        assert!(!answers.contains(secret.as_ref()), "an answer carries {secret}");
    }
    assert!(server.stop().success());

    // Nothing stored, and nothing logged at debug level, holds a terminal key or the
    // master key; the master key file is the owner's alone.
    let master_file = dir.path().join("master.key");
    let master = std::fs::read_to_string(&master_file).expect("created at the first start");
    let master = hex::decode(master.trim()).expect("64 hex digits");
    assert_eq!(master.len(), 32);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&master_file).expect("exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut everything = secrets.clone();
    everything.extend(forms(kiosk.key.as_bytes()));
    everything.extend(forms(&master));
    assert_eq!(found_in_files(dir.path(), &everything), None, "a secret in the data directory");
    assert_eq!(found_in_files(logs.path(), &everything), None, "a secret in the log");
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert!(logged.contains("master key"), "the first start says it created the key");

    // The wrong master key: refused by name, and the key file left as it was.
    let wrong = hex::encode([0x42u8; 32]);
    let refused = Command::new(onecard_binary())
        .args(["serve", "--terminal-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ONECARD_MASTER_KEY", &wrong)
        .env("ONECARD_BACKUP_AT", "off")
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("does not open with this master key"), "{said}");
    assert!(!said.contains(&wrong), "the key is not echoed: {said}");
    assert_eq!(std::fs::read(&master_file).expect("still there").len(), 65);

    // The right one, from its file: the terminals sign on with their keys again.
    let server = Server::start(dir.path());
    let client = window.connect_with(&server, one_attempt()).await;
    let answer = client.call(purchase(7_100_001, 1_00)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
}

/// An endpoint, its body (if a POST), and the roles that may call it.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    body: Value,
    roles: &'static [&'static str],
}

const ALL: &[&str] = &["admin", "clerk", "finance", "auditor", "department_head"];
const ADMIN: &[&str] = &["admin"];
const CARD_DESK: &[&str] = &["admin", "clerk"];
const BOOKS: &[&str] = &["admin", "finance", "auditor"];
const AUDIT: &[&str] = &["admin", "auditor"];
const DAY: &[&str] = &["admin", "finance"];

fn endpoints() -> Vec<Endpoint> {
    let get = |path, roles| Endpoint { method: "GET", path, body: Value::Null, roles };
    let post = |path, body, roles| Endpoint { method: "POST", path, body, roles };
    let card = json!({ "card_number": 7_200_001, "holder_id": "S1", "holder_name": "李雷",
        "card_type": "student", "expiry_date": "2030-07-31" });
    let key = json!({ "key_hex": "ab".repeat(32) });
    vec![
        get("/api/operators", ADMIN),
        post("/api/operators/nobody/lock", json!({}), ADMIN),
        post("/api/cards", card, CARD_DESK),
        get("/api/cards/7100001", ALL),
        get("/api/cards/7100001/statement", ALL),
        post("/api/cards/999/freeze", json!({}), CARD_DESK),
        get("/api/merchants", ALL),
        get("/api/merchants/1", ALL),
        post("/api/merchants/999/disable", json!({}), ADMIN),
        post("/api/merchants/999/commission", json!({ "commission_rate": "0.02" }), DAY),
        get("/api/terminals", ALL),
        get("/api/terminals/attention", ALL),
        post("/api/terminals/999/key", key, ADMIN),
        get("/api/balances", BOOKS),
        get("/api/accounts/card:1", BOOKS),
        get("/api/transfers/1", BOOKS),
        get("/api/audit", AUDIT),
        get("/api/verify", AUDIT),
        get("/api/backups", ADMIN),
        get("/api/settlements/2026-09-01", BOOKS),
        get("/api/reconciliations/2026-09-01", BOOKS),
        get("/api/adjustments", BOOKS),
        get("/api/workflows", ALL),
    ]
}

fn forbidden_count(server: &Server) -> f64 {
    metric(&server.metrics(), r#"onecard_http_auth_refused_total{reason="forbidden"}"#)
        .unwrap_or(0.0)
}

#[test]
fn each_role_reaches_its_own_endpoints_and_is_refused_every_other_one() {
    let dir = TempDir::new("secrets-roles");
    let server = Server::start(dir.path());
    let admin = server.admin();
    open_card(&admin, 7_100_001);
    let callers: Vec<(&str, Api)> = ALL
        .iter()
        .map(|role| {
            let api = if *role == "admin" {
                server.admin()
            } else {
                operator(&server, &admin, &format!("matrix.{role}"), role)
            };
            (*role, api)
        })
        .collect();
    let before = forbidden_count(&server);
    let mut refused = 0u32;
    for endpoint in endpoints() {
        for (role, api) in &callers {
            let (status, body) = match endpoint.method {
                "GET" => api.get(endpoint.path),
                _ => api.post(endpoint.path, &endpoint.body),
            };
            let forbidden = status == 403 && body["error"]["code"] == "forbidden";
            let allowed = endpoint.roles.contains(role);
            assert_eq!(
                forbidden, !allowed,
                "{role} {} {}: {status} {body}",
                endpoint.method, endpoint.path
            );
            assert_ne!(status, 401, "{role} {}: the token holds", endpoint.path);
            refused += u32::from(forbidden);
        }
    }
    let expected: usize = endpoints().iter().map(|e| ALL.len() - e.roles.len()).sum();
    assert_eq!(refused as usize, expected);
    assert_eq!(forbidden_count(&server) - before, f64::from(refused), "every refusal counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_rotation_reseals_every_secret_and_keeps_the_old_key_for_old_backups() {
    let campus = Campus::build("secrets-rotate", 2, &[]).await;
    let Campus { server, dir, cards, canteen, .. } = campus;
    let window = canteen.connect(&server).await;
    let (code, _) = outcome(&window.call(purchase(cards[0], 1_00)).await.expect("answered"));
    assert_eq!(code, AnswerCode::Approved);
    drop(window);
    assert!(server.stop().success());

    let data_dir = dir.path().to_str().expect("UTF-8");
    let key_file = dir.path().join("master.key");
    let old_key = std::fs::read_to_string(&key_file).expect("serve wrote the key");
    let said = run_onecard(&["master-key", "rotate", "--data-dir", data_dir]);
    assert!(
        said.contains("master key rotated: 3 terminal keys and the journal chain key"),
        "{said}"
    );
    assert!(!said.contains(old_key.trim()), "never prints a key: {said}");
    let new_key = std::fs::read_to_string(&key_file).expect("the new key is in place");
    assert_ne!(new_key, old_key);
    let mode = std::fs::metadata(&key_file).expect("exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dir.path().join("master.key.new").exists(), "nothing left half done");
    let retired: Vec<_> = std::fs::read_dir(dir.path())
        .expect("lists")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.to_string_lossy().contains("master.key.retired-"))
        .collect();
    assert_eq!(retired.len(), 1, "the old key is kept for the backups that need it");
    assert_eq!(std::fs::read_to_string(&retired[0]).expect("reads"), old_key);
    assert!(said.contains(&retired[0].display().to_string()), "and says where: {said}");

    let report = onecard_tests::verify(dir.path());
    assert!(
        report.contains("the journal chain checked"),
        "history checks under the new key: {report}"
    );
    let with_old = Command::new(onecard_binary())
        .args(["verify", "--data-dir", data_dir])
        .env("ONECARD_MASTER_KEY", old_key.trim())
        .output()
        .expect("runs");
    assert!(!with_old.status.success());
    let refusal = String::from_utf8_lossy(&with_old.stderr);
    assert!(refusal.contains("does not open with this master key"), "{refusal}");

    let server = Server::start(dir.path());
    let window = canteen.connect(&server).await;
    let (code, _) = outcome(&window.call(purchase(cards[0], 2_00)).await.expect("answered"));
    assert_eq!(code, AnswerCode::Approved, "the terminals sign on under the new master key");
    drop(window);
    assert!(server.stop().success());
    assert!(onecard_tests::verify(dir.path()).contains("ledger verified"));
}
