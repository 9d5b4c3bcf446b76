//! The business day and merchant settlement: the turn to the millisecond, the guarded
//! cutover, and a generated day settled and checked against the test's own sums.

use std::collections::{BTreeMap, HashMap, HashSet};

use onecard_engine::account::{AccountId, AccountKind};
use onecard_engine::cards::CardType;
use onecard_engine::date::Clock;
use onecard_engine::settlement::MealHours;
use onecard_engine::{BusinessDate, ControlError};
use onecard_protocol::{AnswerCode, MealPeriod, Request};

use crate::support::{Campus, config, refund, reversal, transfer};

/// 2026-09-01 23:59:59.999 in Beijing (UTC+8).
const LAST_MS_OF_SEPT_1: u64 = 1_788_278_399_999;
const HOUR_MS: u64 = 3_600_000;

fn date(yyyymmdd: u32) -> BusinessDate {
    BusinessDate::from_yyyymmdd(yyyymmdd).expect("a date")
}

/// A campus whose clock the test sets, starting at `at_ms`.
fn campus_at(name: &str, at_ms: u64) -> (Campus, Clock) {
    let clock = Clock::manual(at_ms);
    let campus = Campus::with_config(
        name,
        onecard_engine::LedgerConfig { clock: clock.clone(), ..config(2) },
    );
    (campus, clock)
}

/// A purchase that leaves the meal to the server, which places it by the time.
fn purchase_any_meal(card_number: u64, amount_fen: u32) -> Request {
    onecard_tests::purchase_at(card_number, amount_fen, MealPeriod::Unspecified)
}

#[test]
fn the_millisecond_after_the_turn_belongs_to_the_new_day() {
    let (mut campus, clock) = campus_at("turn", LAST_MS_OF_SEPT_1 - HOUR_MS);
    assert_eq!(campus.ledger().business_date(), date(20_260_901));
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 100_00);
    let canteen = campus.terminals.canteen_a;

    clock.set_ms(LAST_MS_OF_SEPT_1);
    let late = campus.buy(canteen, 1001, 12_00);
    let late_sequence = campus.last_sequence(canteen);
    clock.set_ms(LAST_MS_OF_SEPT_1 + 1);
    let early = campus.buy(canteen, 1001, 8_00);
    let ledger = campus.ledger();
    let day_of = |id| ledger.transfer(id).expect("committed").business_date;
    assert_eq!(day_of(late.transfer_id), date(20_260_901));
    assert_eq!(
        day_of(early.transfer_id),
        date(20_260_902),
        "no cutover has run, yet it is the 2nd"
    );

    // The 1st cannot be settled until its cutover closes it.
    assert!(matches!(ledger.settle(date(20_260_901)), Err(ControlError::DateNotClosed { .. })));
    let turned = ledger.cutover_due().expect("turns").expect("the day had turned");
    assert_eq!((turned.closed_through, turned.open), (date(20_260_901), date(20_260_902)));
    assert!(ledger.cutover_due().expect("reads").is_none(), "once");
    let again = ledger.cutover(date(20_260_901)).expect("repeat-safe");
    assert!(!again.changed);
    assert!(matches!(ledger.cutover(date(20_260_903)), Err(ControlError::DateNotOpen { .. })));

    // Yesterday's purchase reversed today counts today.
    let reversed = transfer(campus.send(canteen, reversal(late_sequence, 1001, 12_00)));
    assert_eq!(reversed.code, AnswerCode::Approved);
    assert_eq!(
        campus.ledger().transfer(reversed.transfer_id).expect("t").business_date,
        date(20_260_902)
    );

    let ledger = campus.ledger();
    let first = ledger.settle(date(20_260_901)).expect("settles");
    assert!(first.posted);
    let merchant = |settled: &onecard_engine::settlement::Settled| {
        let id = ledger.terminals().iter().find(|t| t.id == canteen).expect("t").merchant_id;
        settled.settlement.merchants.iter().find(|m| m.merchant_id == id).expect("row").clone()
    };
    let day_one = merchant(&first);
    assert_eq!((day_one.sales.purchases.count, day_one.sales.purchases.fen), (1, 12_00));
    assert_eq!(day_one.sales.reversals.count, 0);
    assert_eq!(day_one.sales.net_fen, 12_00);
    assert_eq!(day_one.commission_fen, 18, "1.5% of 12.00");
    let repeat = ledger.settle(date(20_260_901)).expect("repeat-safe");
    assert!(!repeat.posted);
    assert_eq!(repeat.settlement, first.settlement);

    // The 2nd closes early, by hand, and settles with the reversal in it.
    assert!(ledger.cutover(date(20_260_902)).expect("closes").changed);
    let second = ledger.settle(date(20_260_902)).expect("settles");
    let day_two = merchant(&second);
    assert_eq!((day_two.sales.purchases.count, day_two.sales.purchases.fen), (1, 8_00));
    assert_eq!((day_two.sales.reversals.count, day_two.sales.reversals.fen), (1, 12_00));
    assert_eq!(day_two.sales.net_fen, -4_00);
    assert_eq!(day_two.commission_fen, -6, "a negative day's commission mirrors a positive one");
    let balance = ledger.account_balance(AccountId::merchant(day_two.merchant_id)).expect("reads");
    assert_eq!(balance, 0, "after settlement the merchant holds only unsettled sales: none");

    // Dates survive a restart, and a restart does not reopen a closed date.
    campus.reopen();
    assert_eq!(campus.ledger().closed_through(), date(20_260_902));
    assert_eq!(campus.ledger().business_date(), date(20_260_903));
    assert!(!campus.ledger().settle(date(20_260_901)).expect("stored").posted);
    campus.assert_verified();
}

#[test]
fn a_restart_after_the_turn_closes_the_old_day() {
    let (mut campus, clock) = campus_at("restart-turn", LAST_MS_OF_SEPT_1 - HOUR_MS);
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    clock.set_ms(LAST_MS_OF_SEPT_1 + 2 * 24 * HOUR_MS);
    campus.reopen();
    assert_eq!(campus.ledger().closed_through(), date(20_260_902));
    let settled = campus.ledger().settle(date(20_260_901)).expect("settles");
    assert_eq!(settled.settlement.totals().purchases.count, 0);
}

/// A tiny deterministic generator, so a failure replays.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the test expects of one merchant, terminal or meal: counted from the answers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    purchases: (u64, i64),
    cards: HashSet<u64>,
    refunds: (u64, i64),
    reversals: (u64, i64),
}

impl Expected {
    fn net(&self) -> i64 {
        self.purchases.1 - self.refunds.1 - self.reversals.1
    }
}

/// Commission at 15/1000, rounded half away from zero, in integers.
fn commission_at_1_5_percent(net: i64) -> i64 {
    let scaled = i128::from(net) * 15;
    let (quotient, remainder) = (scaled / 1000, scaled % 1000);
    let rounded = if remainder.abs() * 2 >= 1000 { quotient + scaled.signum() } else { quotient };
    i64::try_from(rounded).expect("fits")
}

struct Sale {
    terminal: u32,
    sequence: u64,
    card: u64,
    amount: u32,
    transfer_id: u64,
    refunded: u32,
    reversed: bool,
}

#[test]
fn a_generated_day_settles_to_the_fen_of_an_independent_count() {
    // 2026-09-01 06:00 in Beijing; the day runs to 23:00 across every meal.
    let start = LAST_MS_OF_SEPT_1 + 1 - 18 * HOUR_MS;
    let (mut campus, clock) = campus_at("generated-day", start);
    let hours = MealHours::default();
    let cards: Vec<u64> = (2001..2041).collect();
    for card in &cards {
        campus.open_card(*card, CardType::Staff);
        campus.top_up(*card, 2_000_00);
    }
    let t = campus.terminals;
    let sellers = [t.canteen_a, t.canteen_a2, t.canteen_b, t.shop, t.utility];
    let merchant_of: HashMap<u32, u32> =
        campus.ledger().terminals().iter().map(|term| (term.id, term.merchant_id)).collect();
    let mut by_merchant: BTreeMap<u32, Expected> = BTreeMap::new();
    let mut by_terminal: BTreeMap<u32, Expected> = BTreeMap::new();
    let mut by_meal: BTreeMap<(u32, MealPeriod), Expected> = BTreeMap::new();
    let mut sales: Vec<Sale> = Vec::new();
    let mut dice = Dice(0x5eed_cafe_f00d);
    let mut now = start;
    for _ in 0..700 {
        now += 60_000 + dice.below(30_000);
        clock.set_ms(now);
        let minute = u16::try_from((now / 60_000 + 8 * 60) % (24 * 60)).expect("a minute");
        let meal = hours.meal_at(minute);
        let roll = dice.below(10);
        let (terminal, kind, card, fen) = if roll < 7 || sales.is_empty() {
            let terminal = sellers[usize::try_from(dice.below(5)).expect("small")];
            let card = cards[usize::try_from(dice.below(40)).expect("small")];
            let amount = u32::try_from(1 + dice.below(30_00)).expect("small");
            let answer = transfer(campus.send(terminal, purchase_any_meal(card, amount)));
            if answer.code != AnswerCode::Approved {
                continue;
            }
            let sequence = campus.last_sequence(terminal);
            sales.push(Sale {
                terminal,
                sequence,
                card,
                amount,
                transfer_id: answer.transfer_id,
                refunded: 0,
                reversed: false,
            });
            (terminal, 0, card, i64::from(amount))
        } else if roll < 9 {
            let pick = usize::try_from(dice.below(sales.len() as u64)).expect("index");
            let sale = &sales[pick];
            if sale.reversed || sale.refunded == sale.amount {
                continue;
            }
            let amount = 1 + u32::try_from(dice.below(u64::from(sale.amount - sale.refunded)))
                .expect("small");
            let (terminal, card, id) = (sale.terminal, sale.card, sale.transfer_id);
            let answer = transfer(campus.send(terminal, refund(card, id, amount)));
            assert_eq!(answer.code, AnswerCode::Approved, "refund of {id}");
            sales[pick].refunded += amount;
            (terminal, 1, card, i64::from(amount))
        } else {
            // A reversal of the terminal's latest sale, as a terminal that lost the answer.
            let sale = sales.last_mut().expect("a sale");
            if sale.reversed || sale.refunded > 0 {
                continue;
            }
            let (terminal, card, amount) = (sale.terminal, sale.card, sale.amount);
            let answer = transfer(campus.send(terminal, reversal(sale.sequence, card, amount)));
            assert_eq!(answer.code, AnswerCode::Approved);
            sale.reversed = true;
            (terminal, 2, card, i64::from(amount))
        };
        let merchant = merchant_of[&terminal];
        for expected in [
            by_merchant.entry(merchant).or_default(),
            by_terminal.entry(terminal).or_default(),
            by_meal.entry((merchant, meal)).or_default(),
        ] {
            match kind {
                0 => {
                    expected.purchases.0 += 1;
                    expected.purchases.1 += fen;
                    expected.cards.insert(card);
                }
                1 => {
                    expected.refunds.0 += 1;
                    expected.refunds.1 += fen;
                }
                _ => {
                    expected.reversals.0 += 1;
                    expected.reversals.1 += fen;
                }
            }
        }
    }
    assert!(now <= LAST_MS_OF_SEPT_1, "the generated day stays on the 1st");
    let ledger = campus.ledger();
    ledger.cutover(date(20_260_901)).expect("closes the day");
    let settled = ledger.settle(date(20_260_901)).expect("settles");
    let settlement = &settled.settlement;

    let mut commission_total = 0;
    let mut payable_total = 0;
    for (merchant_id, expected) in &by_merchant {
        let row = settlement.merchants.iter().find(|m| m.merchant_id == *merchant_id).expect("row");
        let sales = &row.sales;
        assert_eq!(
            (sales.purchases.count, sales.purchases.fen),
            expected.purchases,
            "merchant {merchant_id}"
        );
        assert_eq!(sales.cardholders, expected.cards.len() as u64);
        assert_eq!((sales.refunds.count, sales.refunds.fen), expected.refunds);
        assert_eq!((sales.reversals.count, sales.reversals.fen), expected.reversals);
        assert_eq!(sales.net_fen, expected.net());
        assert_eq!(row.commission_fen, commission_at_1_5_percent(expected.net()));
        assert_eq!(row.net_payable_fen, expected.net() - row.commission_fen);
        commission_total += row.commission_fen;
        payable_total += row.net_payable_fen;
        for terminal in &row.terminals {
            let expected = &by_terminal[&terminal.terminal_id];
            assert_eq!(terminal.sales.purchases.fen, expected.purchases.1);
            assert_eq!(terminal.sales.cardholders, expected.cards.len() as u64);
            assert_eq!(terminal.sales.net_fen, expected.net(), "terminal {}", terminal.terminal_id);
        }
        for meal in &row.meals {
            let period =
                [MealPeriod::Breakfast, MealPeriod::Lunch, MealPeriod::Dinner, MealPeriod::Night]
                    .into_iter()
                    .find(|p| onecard_engine::settlement::meal_name(*p) == meal.meal)
                    .expect("a meal");
            let expected = by_meal.get(&(*merchant_id, period)).cloned().unwrap_or_default();
            assert_eq!(
                meal.sales.purchases.count, expected.purchases.0,
                "{} {}",
                merchant_id, meal.meal
            );
            assert_eq!(meal.sales.net_fen, expected.net());
        }
    }
    let meals_seen: HashSet<MealPeriod> = by_meal.keys().map(|(_, meal)| *meal).collect();
    assert!(meals_seen.len() >= 3, "the day crossed meals: {meals_seen:?}");
    assert_eq!(settlement.totals().commission_fen, commission_total);

    // After settlement each merchant holds exactly its unsettled sales: none.
    for merchant_id in by_merchant.keys() {
        assert_eq!(ledger.account_balance(AccountId::merchant(*merchant_id)).expect("reads"), 0);
    }
    let income =
        ledger.account_balance(AccountId::single(AccountKind::CommissionIncome)).expect("r");
    let payout =
        ledger.account_balance(AccountId::single(AccountKind::SettlementPayout)).expect("r");
    assert_eq!((income, payout), (commission_total, payable_total));
    campus.assert_verified();

    // The day reconciles: the pool's flow adds up, and each merchant holds nothing.
    let reconciliation = ledger.reconcile(date(20_260_901)).expect("reconciles");
    assert!(reconciliation.passed, "{reconciliation:#?}");
    let flow = reconciliation.card_flow;
    let purchased: i64 = by_merchant.values().map(|e| e.purchases.1).sum();
    let refunded: i64 = by_merchant.values().map(|e| e.refunds.1).sum();
    let reversed: i64 = by_merchant.values().map(|e| e.reversals.1).sum();
    assert_eq!(flow.purchases_fen, -purchased);
    assert_eq!((flow.refunds_fen, flow.reversals_fen), (refunded, reversed));
    assert_eq!(flow.top_ups_fen, 40 * 2_000_00);
    assert_eq!(flow.closing_fen, reconciliation.card_pool_fen, "nothing moved after the day");
}

#[test]
fn reconciliation_names_a_tampered_merchant_balance_and_the_broken_trial_balance() {
    let (mut campus, clock) = campus_at("tamper", LAST_MS_OF_SEPT_1 - 6 * HOUR_MS);
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 100_00);
    let canteen = campus.terminals.canteen_b;
    assert_eq!(campus.buy(canteen, 1001, 25_00).code, AnswerCode::Approved);
    clock.set_ms(LAST_MS_OF_SEPT_1 + 1);
    assert_eq!(campus.buy(canteen, 1001, 5_00).code, AnswerCode::Approved);
    let ledger = campus.ledger();
    assert!(matches!(ledger.reconcile(date(20_260_902)), Err(ControlError::DateNotClosed { .. })));
    ledger.cutover_due().expect("turns");
    let clean = ledger.reconcile(date(20_260_901)).expect("reconciles");
    assert!(clean.passed, "unsettled sales are what the merchant holds: {clean:#?}");
    assert_eq!(clean.card_flow.closing_fen, 75_00);
    assert_eq!(clean.card_pool_fen, 70_00, "the 2nd's purchase came after");

    // One fen appears in a merchant's account that no transfer put there.
    let merchant = ledger.terminals().iter().find(|t| t.id == canteen).expect("t").merchant_id;
    let store = ledger.store();
    let balances = store.cf(onecard_engine::store::CF_BALANCES);
    let key = AccountId::merchant(merchant).to_u64().to_be_bytes();
    store.db().merge_cf(balances, key, 1i64.to_le_bytes()).expect("writes");
    let tampered = ledger.reconcile(date(20_260_901)).expect("reconciles");
    assert!(!tampered.passed);
    let check = |name: &str| tampered.checks.iter().find(|c| c.name == name).expect("a check");
    let merchants = check("merchants");
    assert_eq!(merchants.discrepancy_count, 1);
    let found = &merchants.discrepancies[0];
    assert_eq!(found.subject, AccountId::merchant(merchant).to_string());
    assert_eq!((found.expected_fen, found.found_fen), (30_00, 30_01));
    assert!(!check("trial_balance").passed);
    assert!(check("card_pool").passed && check("card_flow").passed);
}

#[test]
fn a_late_correction_to_a_settled_day_goes_into_the_next_days_settlement() {
    use onecard_engine::adjustment::AdjustmentOrder;
    let (mut campus, clock) = campus_at("late-correction", LAST_MS_OF_SEPT_1 - HOUR_MS);
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 100_00);
    let canteen = campus.terminals.canteen_a;
    assert_eq!(campus.buy(canteen, 1001, 10_00).code, AnswerCode::Approved);
    clock.set_ms(LAST_MS_OF_SEPT_1 + 1);
    let ledger = campus.ledger();
    ledger.cutover_due().expect("turns");
    let merchant = ledger.terminals().iter().find(|t| t.id == canteen).expect("t").merchant_id;
    let first = ledger.settle(date(20_260_901)).expect("settles");
    // The 1st is final: a correction found afterwards is an adjustment on the 2nd.
    let correction = AdjustmentOrder {
        id: 1,
        debit: AccountId::single(AccountKind::Suspense),
        credit: AccountId::merchant(merchant),
        amount_fen: 1_00,
    };
    ledger.post_adjustment(correction).expect("posts");
    // And one from one merchant to another counts on both sides.
    let other =
        ledger.terminals().iter().find(|t| t.id == campus.terminals.shop).expect("t").merchant_id;
    let between = AdjustmentOrder {
        id: 2,
        debit: AccountId::merchant(other),
        credit: AccountId::merchant(merchant),
        amount_fen: 50,
    };
    ledger.post_adjustment(between).expect("posts");
    assert_eq!(ledger.settle(date(20_260_901)).expect("stored").settlement, first.settlement);
    ledger.cutover(date(20_260_902)).expect("closes");
    let second = ledger.settle(date(20_260_902)).expect("settles");
    let row = second.settlement.merchants.iter().find(|m| m.merchant_id == merchant).expect("row");
    assert_eq!((row.sales.adjustments.count, row.sales.adjustments.fen), (2, 1_50));
    assert_eq!(row.sales.net_fen, 1_50);
    let debited = second.settlement.merchants.iter().find(|m| m.merchant_id == other).expect("row");
    assert_eq!((debited.sales.adjustments.count, debited.sales.net_fen), (1, -50));
    assert_eq!(ledger.account_balance(AccountId::merchant(merchant)).expect("reads"), 0);
    assert!(ledger.reconcile(date(20_260_902)).expect("reconciles").passed);
}

#[test]
fn reconciliation_while_terminals_keep_buying_sees_one_instant() {
    use onecard_engine::Submission;
    use onecard_protocol::MacAlgorithm;
    let (mut campus, clock) = campus_at("reconcile-live", LAST_MS_OF_SEPT_1 - HOUR_MS);
    for card in 1001..1011 {
        campus.open_card(card, CardType::Staff);
        campus.top_up(card, 500_00);
    }
    let canteens = [campus.terminals.canteen_a, campus.terminals.canteen_b];
    for (n, terminal) in (0..40).zip(canteens.iter().cycle()) {
        assert_eq!(campus.buy(*terminal, 1001 + n % 10, 1_00).code, AnswerCode::Approved);
    }
    clock.set_ms(LAST_MS_OF_SEPT_1 + 1);
    campus.ledger().cutover_due().expect("turns");
    let first_sequence: Vec<u64> = canteens.iter().map(|t| campus.last_sequence(*t) + 1).collect();
    let ledger = campus.ledger();
    std::thread::scope(|scope| {
        let buyer = scope.spawn(|| {
            for n in 0..2_000u64 {
                let slot = usize::from(n % 2 == 1);
                let answer = ledger.submit_wait(Submission {
                    terminal_id: canteens[slot],
                    sequence: first_sequence[slot] + n / 2,
                    mac_algorithm: MacAlgorithm::HmacSha256,
                    request: crate::support::purchase(1001 + n % 10, 7),
                });
                assert_eq!(transfer(answer).code, AnswerCode::Approved);
            }
        });
        let mut runs = 0;
        while !buyer.is_finished() || runs == 0 {
            let reconciliation = ledger.reconcile(date(20_260_901)).expect("reconciles");
            assert!(reconciliation.passed, "run {runs}: {reconciliation:#?}");
            runs += 1;
        }
        buyer.join().expect("the buyer");
    });
}
