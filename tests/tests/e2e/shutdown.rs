//! Shutdown under load: SIGTERM while terminals are buying. Everything a terminal
//! was told "approved" is in the ledger after a restart, and nothing else is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use onecard_protocol::AnswerCode;
use onecard_tests::Server;
use tokio::sync::Mutex;

use crate::support::{Campus, FUNDED_FEN, balance_fen, one_attempt, outcome, purchase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_purchase_and_adds_none() {
    let campus = Campus::build("shutdown-load", 8, &[]).await;
    // Eight terminals over both canteens, each buying in a loop on its own cards.
    let terminals = campus.windows(6, 40);
    let acknowledged: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let mut tasks = Vec::new();
    for (index, spec) in terminals.iter().enumerate() {
        let client = spec.connect_with(&campus.server, one_attempt()).await;
        let card = campus.cards[index];
        let acknowledged = Arc::clone(&acknowledged);
        tasks.push(tokio::spawn(async move {
            let client = Arc::new(client);
            loop {
                // Keep a few in flight, as a busy window does.
                let calls: Vec<_> = (0..4)
                    .map(|_| {
                        let client = Arc::clone(&client);
                        tokio::spawn(async move { client.call(purchase(card, 1)).await })
                    })
                    .collect();
                let mut stop = false;
                for call in calls {
                    match call.await.expect("task") {
                        Ok(answer) => {
                            let (code, transfer_id) = outcome(&answer);
                            if code == AnswerCode::Approved {
                                acknowledged
                                    .lock()
                                    .await
                                    .entry(card)
                                    .or_default()
                                    .push(transfer_id);
                            } else {
                                stop = true;
                            }
                        }
                        Err(_) => stop = true,
                    }
                }
                if stop {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let Campus { server, dir, cards, .. } = campus;
    server.signal("TERM");
    for task in tasks {
        task.await.expect("a terminal task");
    }
    assert!(server.wait(Duration::from_secs(30)).success(), "a clean exit");

    let server = Server::start(dir.path());
    let admin = server.admin();
    let acknowledged = acknowledged.lock().await;
    let total: usize = acknowledged.values().map(Vec::len).sum();
    assert!(total > 50, "the load ran: {total} purchases");
    for card in &cards {
        let told = acknowledged.get(card).map_or(0, Vec::len);
        let expected = FUNDED_FEN - i64::try_from(told).expect("fits");
        assert_eq!(
            balance_fen(&admin, *card),
            expected,
            "card {card}: {told} purchases acknowledged"
        );
        for id in acknowledged.get(card).into_iter().flatten() {
            let (status, transfer) = admin.get(&format!("/api/transfers/{id}"));
            assert_eq!(status, 200, "acknowledged transfer {id} is in the ledger");
            assert_eq!(transfer["card_number"], *card);
        }
    }
    assert!(server.stop().success());
    let report = onecard_tests::verify(dir.path());
    assert!(!report.is_empty(), "verify reports what it proved");
    drop(dir);
}
