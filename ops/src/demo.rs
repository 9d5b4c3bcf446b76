//! The demo campus `onecard serve --demo` builds on an empty store: a mid-sized
//! university a newcomer can post purchases against within a minute.
//!
//! - 300 merchants: the card centre (its 31 kiosks and counters take top-ups), 200
//!   canteen windows in 8 canteens, 50 shops, 20 laundries and 29 utility meters;
//! - 1,000 terminals, each with its own random key;
//! - 50,000 cards (or as many as asked, up to 2,000,000): nine in ten students, the
//!   rest staff, each funded by a start-of-term subsidy (students also get a
//!   restricted purse for hot water and electricity); every 250th card is reported
//!   lost, every 2,500th frozen, and every 100th gets only 8.00 yuan, so refusals
//!   show up under load;
//! - operators for each role, with random passwords;
//! - a hall password for the first 10,000 cards, the same known one for each (to be
//!   changed at the first login, as an issued one is).
//!
//! Everything a load generator or a person needs is written under `<data>/demo/`:
//! `terminals.csv` (id, merchant, category, shard, key), `campus.json` (card numbers,
//! lost and frozen cards, the card centre's terminals), `operators.csv` (names,
//! roles and passwords) and `cardholders.csv` (the cards with a hall password, their
//! holders and that password); demo only, mode 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use onecard_engine::cards::{CardType, LimitOverrides, Purse};
use onecard_engine::directory::MerchantCategory;
use onecard_engine::{Ledger, OpenCard, SubsidyRow};
use onecard_protocol::TerminalKey;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::operators::{OperatorRecord, Operators, ROLES, hash_password, random_password};

/// The first demo card number; cards are numbered on from it.
pub const DEMO_CARD_FIRST: u64 = 20_260_000_001;
/// Cards in the demo campus unless told otherwise: nine in ten students, then staff.
pub const DEMO_CARDS_DEFAULT: u64 = 50_000;
/// The largest demo campus (a province's system, for memory and restart figures).
pub const DEMO_CARDS_MAX: u64 = 2_000_000;
/// Every n-th card, counting from the 50th, starts nearly empty, so refusals for
/// insufficient funds show up under load.
const LOW_BALANCE_EVERY: u64 = 100;
const LOW_BALANCE_FEN: i64 = 800;
/// Cards opened and funded per control batch.
const CHUNK: usize = 10_000;
/// Every n-th card is reported lost, every m-th frozen.
const LOST_EVERY: u64 = 250;
const FROZEN_EVERY: u64 = 2_500;
/// The demo cards given a hall password: the first this many.
pub const DEMO_HALL_CARDS_MAX: u64 = 10_000;
/// Every demo card's hall password, until its holder changes it.
pub const DEMO_HALL_PASSWORD: &str = "campus-2026";
/// Hall credentials per write.
const HALL_CHUNK: usize = 5_000;
/// Start-of-term subsidies, in fen.
const STUDENT_MEAL_FEN: i64 = 30_000;
const STUDENT_UTILITY_FEN: i64 = 5_000;
const STAFF_MEAL_FEN: i64 = 50_000;

const CANTEENS: [&str; 8] = [
    "第一食堂",
    "第二食堂",
    "第三食堂",
    "学苑餐厅",
    "清真餐厅",
    "教工餐厅",
    "北区食堂",
    "南区食堂",
];
const SHOPS: [&str; 10] = [
    "教育超市",
    "水果店",
    "文印中心",
    "咖啡厅",
    "书店",
    "便利店",
    "面包房",
    "奶茶店",
    "眼镜店",
    "理发店",
];
const CAMPUS_AREAS: [&str; 5] = ["东区", "西区", "南区", "北区", "中心区"];
const SURNAMES: [&str; 24] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗", "郑", "梁", "谢", "宋",
];
const GIVEN: [&str; 32] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超",
    "秀", "霞", "平", "刚", "桂", "英", "华", "玉", "萍", "红", "鹏", "辉", "晨", "宇", "欣", "怡",
];

/// What the demo built, written to `campus.json`.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// The first card number.
    pub card_first: u64,
    /// Cards opened (students first).
    pub cards: u64,
    /// Of which students.
    pub students: u64,
    /// Cards that start with only 8.00 yuan.
    pub low_balance_cards: Vec<u64>,
    /// Cards reported lost.
    pub lost_cards: Vec<u64>,
    /// Cards frozen.
    pub frozen_cards: Vec<u64>,
    /// Merchants created.
    pub merchants: usize,
    /// Terminals created.
    pub terminals: usize,
    /// Terminals of the card centre: the ones that take top-ups.
    pub card_centre_terminals: Vec<u32>,
    /// Where the terminal keys are.
    pub terminals_file: PathBuf,
}

/// The demo's files.
#[must_use]
pub fn demo_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("demo")
}

/// Whether the store is empty enough to build the demo in.
#[must_use]
pub fn is_empty(ledger: &Ledger) -> bool {
    ledger.merchants().is_empty() && ledger.card(DEMO_CARD_FIRST).is_none()
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))
}

fn random_key() -> anyhow::Result<TerminalKey> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a terminal key: {e}"))?;
    Ok(TerminalKey::new(bytes))
}

/// A merchant to create, with how many terminals it gets.
struct MerchantPlan {
    name: String,
    category: MerchantCategory,
    rate: Decimal,
    terminals: u32,
}

fn merchant_plan() -> Vec<MerchantPlan> {
    let plan = |name: String, category, rate_per_mille: i64, terminals| MerchantPlan {
        name,
        category,
        rate: Decimal::new(rate_per_mille, 3),
        terminals,
    };
    let mut merchants =
        vec![plan("校园卡服务中心".to_owned(), MerchantCategory::CardCentre, 0, 31)];
    for canteen in CANTEENS {
        for window in 1..=25 {
            merchants.push(plan(
                format!("{canteen} {window:02}号窗口"),
                MerchantCategory::Canteen,
                15,
                4,
            ));
        }
    }
    for shop in SHOPS {
        for area in CAMPUS_AREAS {
            merchants.push(plan(format!("{shop}（{area}）"), MerchantCategory::Shop, 30, 2));
        }
    }
    for building in 1..=20 {
        merchants.push(plan(format!("洗衣房 {building}号楼"), MerchantCategory::Laundry, 20, 2));
    }
    for building in 1..=29 {
        merchants.push(plan(format!("水电 {building}号楼"), MerchantCategory::Utility, 0, 1));
    }
    merchants
}

fn holder(index: u64, students: u64) -> (String, String, CardType, u32) {
    let surname = SURNAMES[usize::try_from(index % 24).unwrap_or(0)];
    let given_a = GIVEN[usize::try_from(index / 24 % 32).unwrap_or(0)];
    let given_b = GIVEN[usize::try_from(index / 768 % 32).unwrap_or(0)];
    let name = if index.is_multiple_of(3) {
        format!("{surname}{given_a}")
    } else {
        format!("{surname}{given_a}{given_b}")
    };
    if index < students {
        let cohort = 23 + index % 4;
        let expiry = 20_270_731 + 10_000 * u32::try_from(index % 4).unwrap_or(0);
        (format!("20{cohort}{:07}", index + 1), name, CardType::Student, expiry)
    } else {
        (format!("T{:06}", index - students + 1), name, CardType::Staff, 20_301_231)
    }
}

/// Builds the demo campus in an empty ledger and writes its files.
///
/// # Errors
/// If the ledger refuses a step or a file cannot be written.
pub fn build(
    ledger: &Ledger,
    operators: &Operators,
    data_dir: &Path,
    cards: u64,
) -> anyhow::Result<DemoSummary> {
    anyhow::ensure!(
        (1..=DEMO_CARDS_MAX).contains(&cards),
        "a demo campus has 1 to {DEMO_CARDS_MAX} cards"
    );
    let started = std::time::Instant::now();
    let dir = demo_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut terminals_csv = String::from("terminal_id,merchant_id,category,shard,key_hex\n");
    let mut card_centre_terminals = Vec::new();
    let mut terminal_count = 0;
    let plan = merchant_plan();
    for merchant in &plan {
        let record = ledger.create_merchant(&merchant.name, merchant.category, merchant.rate)?;
        for _ in 0..merchant.terminals {
            let key = random_key()?;
            let terminal = ledger.create_terminal(record.id, &key)?;
            terminal_count += 1;
            let category = crate::api::snake(record.category);
            terminals_csv.push_str(&format!(
                "{},{},{category},{},{}\n",
                terminal.id,
                record.id,
                record.shard,
                key.to_hex()
            ));
            if record.category == MerchantCategory::CardCentre {
                card_centre_terminals.push(terminal.id);
            }
        }
    }
    let terminals_file = dir.join("terminals.csv");
    write_private(&terminals_file, terminals_csv.as_bytes())?;

    let total = cards;
    let students = cards / 10 * 9;
    let indexes: Vec<u64> = (0..total).collect();
    for chunk in indexes.chunks(CHUNK) {
        let opens = chunk
            .iter()
            .map(|index| {
                let (holder_id, holder_name, card_type, expiry_date) = holder(*index, students);
                OpenCard {
                    card_number: DEMO_CARD_FIRST + index,
                    holder_id,
                    holder_name,
                    card_type,
                    expiry_date,
                    deposit_fen: 0,
                    pin: None,
                    overrides: LimitOverrides::default(),
                }
            })
            .collect();
        ledger.open_cards(opens)?;
        let mut rows = Vec::with_capacity(chunk.len() * 2);
        for index in chunk {
            let card_number = DEMO_CARD_FIRST + index;
            if index % LOW_BALANCE_EVERY == LOW_BALANCE_EVERY / 2 {
                rows.push(SubsidyRow {
                    card_number,
                    amount_fen: LOW_BALANCE_FEN,
                    purse: Purse::Main,
                });
            } else if *index < students {
                rows.push(SubsidyRow {
                    card_number,
                    amount_fen: STUDENT_MEAL_FEN,
                    purse: Purse::Main,
                });
                rows.push(SubsidyRow {
                    card_number,
                    amount_fen: STUDENT_UTILITY_FEN,
                    purse: Purse::Restricted,
                });
            } else {
                rows.push(SubsidyRow {
                    card_number,
                    amount_fen: STAFF_MEAL_FEN,
                    purse: Purse::Main,
                });
            }
        }
        for half in rows.chunks(onecard_engine::limits::SUBSIDY_BATCH_ROWS_MAX) {
            let outcomes = ledger.post_subsidies(half)?;
            if let Some(Err(error)) = outcomes.into_iter().find(Result::is_err) {
                anyhow::bail!("a demo subsidy was refused: {error}");
            }
        }
    }
    let lost_cards: Vec<u64> =
        (1..=total / LOST_EVERY).map(|n| DEMO_CARD_FIRST + n * LOST_EVERY - 1).collect();
    for card in &lost_cards {
        ledger.report_lost(*card)?;
    }
    let frozen_cards: Vec<u64> =
        (1..=total / FROZEN_EVERY).map(|n| DEMO_CARD_FIRST + n * FROZEN_EVERY - 2).collect();
    for card in &frozen_cards {
        ledger.freeze(*card)?;
    }

    let mut operators_csv = String::from("name,role,password\n");
    for role in ROLES {
        let name = format!("demo-{}", role.as_str());
        let password = random_password()?;
        operators.create(&OperatorRecord::new(
            name.clone(),
            role,
            hash_password(&password)?,
            false,
            "demo".to_owned(),
        ))?;
        operators_csv.push_str(&format!("{name},{},{password}\n", role.as_str()));
    }
    write_private(&dir.join("operators.csv"), operators_csv.as_bytes())?;

    let hall_cards: Vec<u64> =
        (0..total.min(DEMO_HALL_CARDS_MAX)).map(|i| DEMO_CARD_FIRST + i).collect();
    let credential = onecard_engine::HallCredential {
        password_hash: hash_password(DEMO_HALL_PASSWORD)?,
        must_change: true,
        failures: 0,
        locked_until_ms: 0,
        set_at_ms: onecard_engine::date::now_ms(),
    };
    let mut cardholders_csv = String::from("card_number,holder_id,holder_name,hall_password\n");
    for chunk in hall_cards.chunks(HALL_CHUNK) {
        let credentials: Vec<_> = chunk.iter().map(|card| (*card, credential.clone())).collect();
        ledger.set_hall_credentials(&credentials)?;
        for card in chunk {
            if let Some(view) = ledger.card(*card) {
                cardholders_csv.push_str(&format!(
                    "{card},{},{},{DEMO_HALL_PASSWORD}\n",
                    view.holder_id, view.holder_name
                ));
            }
        }
    }
    write_private(&dir.join("cardholders.csv"), cardholders_csv.as_bytes())?;

    let summary = DemoSummary {
        card_first: DEMO_CARD_FIRST,
        cards: total,
        students,
        low_balance_cards: (0..total)
            .filter(|index| index % LOW_BALANCE_EVERY == LOW_BALANCE_EVERY / 2)
            .map(|index| DEMO_CARD_FIRST + index)
            .collect(),
        lost_cards,
        frozen_cards,
        merchants: plan.len(),
        terminals: terminal_count,
        card_centre_terminals,
        terminals_file,
    };
    let json = serde_json::to_vec_pretty(&summary).context("encoding campus.json")?;
    write_private(&dir.join("campus.json"), &json)?;
    tracing::info!(
        cards = summary.cards,
        merchants = summary.merchants,
        terminals = summary.terminals,
        elapsed_ms = started.elapsed().as_millis(),
        dir = %dir.display(),
        "demo campus built"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_300_merchants_and_1000_terminals() {
        let plan = merchant_plan();
        assert_eq!(plan.len(), 300);
        assert_eq!(plan.iter().map(|m| m.terminals).sum::<u32>(), 1_000);
        assert_eq!(plan.iter().filter(|m| m.category == MerchantCategory::CardCentre).count(), 1);
    }

    #[test]
    fn holders_are_students_then_staff() {
        let (id, name, card_type, expiry) = holder(0, 45_000);
        assert_eq!(
            (id.as_str(), card_type, expiry),
            ("20230000001", CardType::Student, 20_270_731)
        );
        assert!(!name.is_empty());
        assert_eq!(holder(45_000, 45_000).2, CardType::Staff);
        assert_eq!(holder(45_000, 45_000).0, "T000001");
    }

    #[test]
    fn lost_and_frozen_cards_do_not_overlap() {
        for n in 1..=DEMO_CARDS_MAX / FROZEN_EVERY {
            let frozen = n * FROZEN_EVERY - 2;
            assert_ne!((frozen + 1) % LOST_EVERY, 0);
        }
    }
}
