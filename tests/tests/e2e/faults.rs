//! A full disk under a real `onecard serve` (the `ONECARD_STORAGE_FAULT` hook): no
//! purchase is approved that did not reach the disk, every journal that tries to write
//! refuses work, `/readyz` and the metrics say so, and a restart comes back clean.

use onecard_engine::store::Store;
use onecard_protocol::AnswerCode;
use onecard_tests::{Server, metric, run_onecard_to_end};

use crate::support::{Campus, FUNDED_FEN, balance_fen, outcome, purchase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_work_says_so_and_a_restart_comes_back_clean() {
    // A card for each window, and one for the card centre: a card whose batch failed is
    // in doubt and refused without a write, so each shard and the control plane must
    // meet the full disk with a card of its own.
    let campus = Campus::build("fault-disk-full", 3, &[]).await;
    let Campus { server, dir, cards, canteen, other_canteen, .. } = campus;
    assert!(server.stop().success());
    // Shard 0's second write finds the disk full, and so does every write after it.
    let server =
        Server::start_with_env(dir.path(), &[], &[("ONECARD_STORAGE_FAULT", "disk_full@0+1")]);
    let admin = server.admin();
    let (status, _) = admin.get("/readyz");
    assert_eq!(status, 200);
    let windows = [canteen.connect(&server).await, other_canteen.connect(&server).await];
    let mut approved = [0i64; 2];
    let mut refused = 0;
    for round in 0..4 {
        for (index, window) in windows.iter().enumerate() {
            let (code, transfer_id) =
                outcome(&window.call(purchase(cards[index], 1_00)).await.expect("answered"));
            match code {
                AnswerCode::Approved => {
                    assert_eq!(refused, 0, "round {round}: approved after a refusal");
                    assert_ne!(transfer_id, 0);
                    approved[index] += 1;
                }
                AnswerCode::ServiceUnavailable => refused += 1,
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    assert!(refused >= 6, "{refused} refused, {approved:?} approved");
    let (status, ready) = admin.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert!(ready["shards"].as_array().expect("shards").iter().all(|s| s["poisoned"] == true));
    let text = server.metrics();
    assert_eq!(metric(&text, r#"onecard_shard_poisoned{shard="0"}"#), Some(1.0));
    assert_eq!(metric(&text, r#"onecard_shard_poisoned{shard="1"}"#), Some(1.0));
    assert_eq!(metric(&text, "onecard_cards_in_doubt"), Some(2.0), "each window's card");
    // A control write finds the disk full too, and says so with a typed code; a card a
    // failed batch moved is refused the same way, before any write.
    for card in [cards[2], cards[0]] {
        let (status, body) =
            admin.post(&format!("/api/cards/{card}/freeze"), &serde_json::json!({}));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("storage_unavailable")),
            "{body}"
        );
    }
    for index in 0..2 {
        let left = FUNDED_FEN - approved[index] * 1_00;
        assert_eq!(balance_fen(&admin, cards[index]), left, "reads still answer");
    }
    let (_, ready) = admin.get("/readyz");
    assert_eq!(ready["control_poisoned"], true);
    drop(windows);
    server.kill();

    // Space again: a restart without the fault is clean and takes work.
    let report = onecard_tests::verify(dir.path());
    assert!(!report.is_empty());
    let server = Server::start(dir.path());
    let admin = server.admin();
    let (status, ready) = admin.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    for index in 0..2 {
        let left = FUNDED_FEN - approved[index] * 1_00;
        assert_eq!(balance_fen(&admin, cards[index]), left, "nothing lost or added");
    }
    let window = canteen.connect(&server).await;
    let (code, _) = outcome(&window.call(purchase(cards[0], 1_00)).await.expect("answered"));
    assert_eq!(code, AnswerCode::Approved);
    assert!(server.stop().success());
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onecard_verify_names_a_flipped_byte_in_an_sst_file_and_exits_non_zero() {
    let campus = Campus::build("fault-corrupt-sst", 5, &[]).await;
    let Campus { server, dir, cards, canteen, .. } = campus;
    let window = canteen.connect(&server).await;
    for card in &cards {
        let (code, _) = outcome(&window.call(purchase(*card, 1_00)).await.expect("answered"));
        assert_eq!(code, AnswerCode::Approved);
    }
    drop(window);
    assert!(server.stop().success());
    // The stopped ledger's journals in SST files, as hours of running leave them.
    let journal = {
        let store = Store::open(dir.path(), 1).expect("opens");
        for family in store.family_names() {
            store.db().flush_cf(store.cf(family)).expect("flushes");
        }
        let files = store.db().live_files().expect("lists");
        let file = files
            .iter()
            .find(|f| f.column_family_name.starts_with("journal-") && f.num_entries > 5)
            .expect("a journal's file");
        (file.column_family_name.clone(), file.name.trim_start_matches('/').to_owned())
    };
    let (family, journal) = journal;
    let data_dir = dir.path().to_str().expect("UTF-8");
    let clean = run_onecard_to_end(&["verify", "--data-dir", data_dir]);
    let report = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{report}");
    assert!(report.contains("the journal chain checked"), "with serve's master key: {report}");
    // Without the master key the seals are counted, not checked, and it says so.
    let key_file = dir.path().join("master.key");
    let key_kept = dir.path().join("master.key.kept");
    std::fs::rename(&key_file, &key_kept).expect("moves the key aside");
    let keyless = run_onecard_to_end(&["verify", "--data-dir", data_dir]);
    let report = String::from_utf8_lossy(&keyless.stdout);
    assert!(keyless.status.success(), "{report}");
    assert!(report.contains("the journal chain not checked: no master key"), "{report}");
    assert!(!key_file.exists(), "verify never makes a master key");
    std::fs::rename(&key_kept, &key_file).expect("puts the key back");

    let path = dir.path().join(&journal);
    let mut bytes = std::fs::read(&path).expect("reads");
    bytes[40] ^= 0x01;
    std::fs::write(&path, bytes).expect("writes");
    let corrupt = run_onecard_to_end(&["verify", "--data-dir", data_dir]);
    let report = String::from_utf8_lossy(&corrupt.stdout);
    assert_eq!(corrupt.status.code(), Some(1), "{report}");
    assert!(report.contains(&format!("column family {family}: Corruption")), "{report}");
    assert!(report.contains(&journal), "names the file {journal}: {report}");
    assert!(String::from_utf8_lossy(&corrupt.stderr).contains("failed verification"));
}
