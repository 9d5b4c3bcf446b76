//! A backup taken under load: terminals keep buying while `POST /api/backups` runs and
//! after it. The restored ledger is the ledger of one moment: for every terminal, the
//! purchases it holds are a prefix of those the terminal was told about; each card's
//! balance is exactly what those purchases leave; `onecard verify` passes; and the
//! offsite copy restores the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use onecard_protocol::AnswerCode;
use onecard_tests::{Server, TempDir, metric, purchase, run_onecard};

use crate::support::{Campus, FUNDED_FEN, balance_fen, one_attempt, outcome};

/// One acknowledged purchase.
#[derive(Debug, Clone, Copy)]
struct Acked {
    transfer_id: u64,
    card: u64,
    amount_fen: i64,
    at: Instant,
}

fn backup_cli(args: &[&str], data_dir: &std::path::Path, offsite: &std::path::Path) -> String {
    let (data_dir, offsite) = (data_dir.to_str().expect("utf-8"), offsite.to_str().expect("utf-8"));
    let settings = ["--data-dir", data_dir, "--backup-offsite-dir", offsite];
    run_onecard(&[&["backup"], args, &settings[..]].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_one_moment_here_and_offsite() {
    let offsite = TempDir::new("backup-offsite");
    let offsite_arg = offsite.path().to_str().expect("utf-8").to_owned();
    let campus = Campus::build(
        "backup-load",
        6,
        &["--backup-offsite-dir", &offsite_arg, "--backup-at", "off"],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (index, spec) in campus.windows(2, 80).iter().enumerate() {
        let client = spec.connect_with(&campus.server, one_attempt()).await;
        let cards = campus.cards.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = index;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let card = cards[n % cards.len()];
                let amount_fen = 1 + u32::try_from(n % 3).expect("small");
                let answer = client.call(purchase(card, amount_fen)).await.expect("answered");
                let (code, transfer_id) = outcome(&answer);
                assert_eq!(code, AnswerCode::Approved, "{answer:?}");
                acked.push(Acked {
                    transfer_id,
                    card,
                    amount_fen: i64::from(amount_fen),
                    at: Instant::now(),
                });
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = Instant::now();
    let (status, info) = campus.admin.post("/api/backups", &serde_json::json!({}));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["id"], 1);
    assert_eq!(info["offsite"], true);
    // Keep writing after it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<Vec<Acked>> = Vec::new();
    for task in tasks {
        acked.push(task.await.expect("a terminal task"));
    }
    let text = campus.server.metrics();
    assert_eq!(metric(&text, r#"onecard_backups_total{outcome="ok"}"#), Some(1.0));
    assert!(metric(&text, "onecard_backup_last_success_timestamp_seconds").unwrap_or(0.0) > 0.0);
    let (status, listed) = campus.admin.get("/api/backups");
    assert_eq!(status, 200);
    assert_eq!(listed["backups"].as_array().map(Vec::len), Some(1));
    let Campus { server, dir, cards, .. } = campus;
    assert!(server.stop().success());

    let listing = backup_cli(&["list"], dir.path(), offsite.path());
    assert!(listing.starts_with("1\t") && listing.contains("offsite"), "{listing}");
    let verified = backup_cli(&["verify", "--offsite"], dir.path(), offsite.path());
    assert!(verified.contains("every invariant holds"), "{verified}");
    for (label, extra) in [("restored", &[][..]), ("restored-offsite", &["--offsite"][..])] {
        let restored = TempDir::new(label);
        let target = restored.path().join("data");
        let mut args = vec!["restore", "--to", target.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        backup_cli(&args, dir.path(), offsite.path());
        assert!(!target.join("master.key").exists(), "no backup holds the master key");
        // As the runbook says: the master key comes across from where it is kept.
        std::fs::copy(dir.path().join("master.key"), target.join("master.key")).expect("copies");
        let server = Server::start(&target);
        let admin = server.admin();
        let mut spent: BTreeMap<u64, i64> = BTreeMap::new();
        let (mut held, mut told) = (0, 0);
        for terminal in &acked {
            // A prefix: once one is missing, every later one is missing too.
            let mut missing = false;
            for purchase in terminal {
                told += 1;
                let (status, _) = admin.get(&format!("/api/transfers/{}", purchase.transfer_id));
                let present = status == 200;
                assert!(!(present && missing), "transfer {} after a gap", purchase.transfer_id);
                if present {
                    held += 1;
                    *spent.entry(purchase.card).or_default() += purchase.amount_fen;
                } else {
                    missing = true;
                    assert!(
                        purchase.at > before,
                        "transfer {} was acknowledged before the backup began",
                        purchase.transfer_id
                    );
                }
            }
        }
        for card in &cards {
            let expected = FUNDED_FEN - spent.get(card).copied().unwrap_or(0);
            assert_eq!(balance_fen(&admin, *card), expected, "{label}: card {card}");
        }
        assert!(held > 0 && held < told, "{label}: {held} of {told} purchases in the backup");
        assert!(server.stop().success());
        let report = onecard_tests::verify(&target);
        assert!(report.contains("every invariant holds"), "{report}");
    }
    drop(dir);
}

#[test]
fn serve_takes_its_daily_backup_by_itself_and_once_a_day() {
    let dir = TempDir::new("backup-daily");
    let backups = |server: &Server| {
        let (status, listed) = server.admin().get("/api/backups");
        assert_eq!(status, 200, "{listed}");
        listed["backups"].as_array().map_or(0, Vec::len)
    };
    // Midnight has passed today, and no backup was taken since: due at once.
    let server = Server::start_with(dir.path(), &["--backup-at", "00:00"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while backups(&server) == 0 {
        assert!(Instant::now() < deadline, "no daily backup within a minute");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = server.metrics();
    assert_eq!(metric(&text, r#"onecard_backups_total{outcome="ok"}"#), Some(1.0));
    assert!(server.stop().success());
    // Restarted the same day: the backup it finds is today's; none is taken again,
    // and the metric says when the last one was.
    let server = Server::start_with(dir.path(), &["--backup-at", "00:00"]);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(backups(&server), 1);
    let text = server.metrics();
    assert_eq!(metric(&text, r#"onecard_backups_total{outcome="ok"}"#), Some(0.0));
    assert!(metric(&text, "onecard_backup_last_success_timestamp_seconds").unwrap_or(0.0) > 0.0);
    assert!(server.stop().success());
}
