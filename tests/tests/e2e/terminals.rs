//! Terminals against a real server: every kind of transaction over TCP, checked
//! through the admin API and the metrics.

use onecard_protocol::message::{BalanceInquiry, Refund};
use onecard_protocol::{Answer, AnswerCode, Request};
use onecard_tests::metric;

use crate::support::{Campus, FUNDED_FEN, balance_fen, outcome, purchase, top_up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_top_up_refund_reversal_and_retry_move_the_balance_exactly() {
    let campus = Campus::build("terminal-flow", 2, &[]).await;
    let card = campus.cards[0];
    let canteen = campus.canteen.connect(&campus.server).await;

    // A purchase of 12.50.
    let answer = canteen.call(purchase(card, 1_250)).await.expect("answered");
    let (code, purchase_id) = outcome(&answer);
    assert_eq!(code, AnswerCode::Approved);
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 1_250);

    // Its retry under the same sequence: the original answer, nothing moves.
    let sequence = canteen.last_sequence();
    let retry =
        canteen.call_with_sequence(sequence, purchase(card, 1_250)).await.expect("answered");
    assert_eq!(outcome(&retry), (AnswerCode::Duplicate, purchase_id));
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 1_250);

    // A partial refund of 2.50 at the same merchant.
    let refund = Request::Refund(Refund {
        card_number: card,
        purchase_transfer_id: purchase_id,
        amount_fen: 250,
    });
    let answer = canteen.call(refund).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved, "{answer:?}");
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 1_000);

    // A second purchase, then its reversal: the money comes back.
    let answer = canteen.call(purchase(card, 800)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    let second = canteen.last_sequence();
    let answer = canteen.reverse(second, card, 800).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved, "{answer:?}");
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 1_000);
    let again = canteen.reverse(second, card, 800).await.expect("answered");
    assert_eq!(outcome(&again).0, AnswerCode::AlreadyReversed);

    // A top-up at the kiosk, and an inquiry that sees it.
    let kiosk = campus.kiosk.connect(&campus.server).await;
    let answer = kiosk.call(top_up(card, 5_000, "app-order-1")).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    let inquiry = canteen.call(Request::BalanceInquiry(BalanceInquiry { card_number: card })).await;
    match inquiry.expect("answered") {
        Answer::BalanceInquiry(answer) => assert_eq!(answer.balance_fen, FUNDED_FEN + 4_000),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN + 4_000);

    // A canteen may not take top-ups; more than the card holds is refused.
    let answer = canteen.call(top_up(card, 100, "x")).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::ChannelNotAllowed);
    let answer = canteen.call(purchase(card, 15_000)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::PinRequired, "above the no-PIN limit");
    let other = campus.cards[1];
    for expected in [AnswerCode::Approved, AnswerCode::Approved, AnswerCode::InsufficientFunds] {
        let answer = canteen.call(purchase(other, 4_500)).await.expect("answered");
        assert_eq!(outcome(&answer).0, expected);
    }

    // The statement shows each movement once.
    let (status, statement) = campus.admin.get(&format!("/api/cards/{card}/statement?limit=20"));
    assert_eq!(status, 200, "{statement}");
    let kinds: Vec<&str> = statement["transfers"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|t| t["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["top_up", "reversal", "purchase", "refund", "purchase", "top_up"],
        "{statement}"
    );

    // The transfer by id, and the merchant's balance.
    let (status, transfer) = campus.admin.get(&format!("/api/transfers/{purchase_id}"));
    assert_eq!(status, 200, "{transfer}");
    assert_eq!(transfer["amount_yuan"], "12.50");
    let (_, merchant) = campus.admin.get(&format!("/api/merchants/{}", campus.canteen.merchant_id));
    assert_eq!(merchant["balance_yuan"], "100.00", "12.50 + 90.00 sold, 2.50 refunded: {merchant}");

    // The counters moved.
    let metrics = campus.server.metrics();
    let approved =
        metric(&metrics, r#"onecard_terminal_requests_total{code="approved",kind="purchase"}"#);
    assert_eq!(approved, Some(4.0), "four purchases approved");
    assert_eq!(
        metric(&metrics, r#"onecard_terminal_requests_total{code="duplicate",kind="purchase"}"#),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, r#"onecard_transfers_total{kind="refund"}"#), Some(1.0));
    assert!(metric(&metrics, "onecard_commit_duration_seconds_count").unwrap_or(0.0) >= 5.0);
    assert!(metric(&metrics, "onecard_terminal_connections_open").unwrap_or(0.0) >= 2.0);
    let pool = i64::try_from(campus.cards.len()).expect("few") * FUNDED_FEN + 4_000 - 9_000;
    #[allow(clippy::cast_precision_loss)]
    let pool_value = pool as f64;
    assert_eq!(metric(&metrics, "onecard_card_pool_fen"), Some(pool_value));
    assert!(metrics.contains("process_resident_memory_bytes"), "process metrics");
    assert!(campus.server.stop().success());
    let _ = onecard_tests::verify(campus.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sign_on_learns_where_to_resume_and_heartbeats_record_the_terminal() {
    let campus = Campus::build("resume", 1, &[]).await;
    let card = campus.cards[0];
    let canteen = campus.canteen.connect(&campus.server).await;
    for _ in 0..3 {
        let answer = canteen.call(purchase(card, 100)).await.expect("answered");
        assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    }
    let used = canteen.last_sequence();
    drop(canteen);
    // A terminal that lost its counter signs on at 0; the client resyncs.
    let again = campus.canteen.connect(&campus.server).await;
    assert!(again.sign_on_answer().last_sequence >= used - 1, "{:?}", again.sign_on_answer());
    let answer = again.call(purchase(card, 100)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved, "a new sequence above the old ones");
    let heartbeat = onecard_protocol::message::Heartbeat { blacklist_version: 0 };
    let answer = again.call(Request::Heartbeat(heartbeat)).await.expect("answered");
    assert_eq!(answer.code(), AnswerCode::Approved);

    let (status, terminal) = campus.admin.get(&format!("/api/terminals/{}", campus.canteen.id));
    assert_eq!(status, 200, "{terminal}");
    assert_eq!(terminal["online"], true);
    assert_eq!(terminal["offline"], false);
    assert!(terminal["clock_skew_ms"].as_i64().expect("skew").abs() < 5_000, "{terminal}");
    assert!(terminal.get("key_hex").is_none());
    // The kiosk signed off after funding; the other canteen never came: both listed.
    let (_, attention) = campus.admin.get("/api/terminals/attention");
    let ids: Vec<u64> =
        attention.as_array().expect("a list").iter().filter_map(|t| t["id"].as_u64()).collect();
    assert!(ids.contains(&u64::from(campus.other_canteen.id)), "{attention}");
    assert!(!ids.contains(&u64::from(campus.canteen.id)), "{attention}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_ends_the_session_and_only_the_new_key_signs_on() {
    let campus = Campus::build("rotate", 1, &[]).await;
    let card = campus.cards[0];
    let canteen = campus.canteen.connect(&campus.server).await;
    assert_eq!(
        outcome(&canteen.call(purchase(card, 100)).await.expect("answered")).0,
        AnswerCode::Approved
    );
    let new_key = onecard_protocol::TerminalKey::new([77; 32]);
    let (status, body) = campus.admin.post(
        &format!("/api/terminals/{}/key", campus.canteen.id),
        &serde_json::json!({ "key_hex": new_key.to_hex() }),
    );
    assert_eq!(status, 200, "{body}");
    // The old session is closed at the next frame.
    let after = canteen.call(purchase(card, 100)).await;
    assert!(after.is_err(), "the old session ends: {after:?}");
    let quick = onecard_protocol::ClientConfig {
        answer_timeout: std::time::Duration::from_millis(500),
        attempts_max: 1,
        ..onecard_protocol::ClientConfig::default()
    };
    let addr = campus.server.terminal_addr();
    let old = onecard_protocol::TerminalClient::connect(
        addr,
        campus.canteen.id,
        &campus.canteen.key,
        0,
        quick,
    )
    .await;
    assert!(old.is_err(), "the old key no longer signs on");
    let mut rotated = campus.canteen.clone();
    rotated.key = new_key;
    let client = rotated.connect(&campus.server).await;
    assert_eq!(
        outcome(&client.call(purchase(card, 100)).await.expect("answered")).0,
        AnswerCode::Approved
    );
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 200);
}
