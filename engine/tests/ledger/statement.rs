//! A top-up channel's statement against our top-ups: every kind of discrepancy planted,
//! each classified right, and nothing posted.

use onecard_engine::BusinessDate;
use onecard_engine::cards::CardType;
use onecard_engine::date::Clock;
use onecard_engine::statement::{ClassifiedLine, LineClass, MalformedLine, StatementLine};
use onecard_protocol::message::{Reference, TopUp};
use onecard_protocol::{AnswerCode, Channel, Request};

use crate::support::{Campus, config, reversal, transfer};

/// 2026-09-01 23:59:59.999 in Beijing.
const LAST_MS_OF_SEPT_1: u64 = 1_788_278_399_999;

fn date(yyyymmdd: u32) -> BusinessDate {
    BusinessDate::from_yyyymmdd(yyyymmdd).expect("a date")
}

fn top_up(card_number: u64, amount_fen: u32, reference: &str) -> Request {
    Request::TopUp(TopUp {
        card_number,
        amount_fen,
        channel: Channel::App,
        reference: Reference::new(reference.as_bytes()).expect("short"),
    })
}

fn line(
    line: u64,
    reference: &str,
    amount_fen: i64,
    day: Option<u32>,
) -> Result<StatementLine, MalformedLine> {
    Ok(StatementLine { line, reference: reference.to_owned(), amount_fen, date: day.map(date) })
}

fn run(
    campus: &Campus,
    day: u32,
    lines: Vec<Result<StatementLine, MalformedLine>>,
) -> (onecard_engine::statement::ChannelReconciliation, Vec<ClassifiedLine>) {
    let mut seen = Vec::new();
    let report = campus
        .ledger()
        .reconcile_channel(date(day), Channel::App, lines.into_iter(), |classified| {
            seen.push(classified.clone());
            Ok::<(), std::convert::Infallible>(())
        })
        .expect("reconciles");
    (report, seen)
}

#[test]
fn every_kind_of_channel_discrepancy_is_classified_and_nothing_is_posted() {
    let clock = Clock::manual(LAST_MS_OF_SEPT_1 - 3_600_000);
    let mut campus = Campus::with_config(
        "channel",
        onecard_engine::LedgerConfig { clock: clock.clone(), ..config(2) },
    );
    campus.open_card(1001, CardType::Student);
    let counter = campus.terminals.counter;
    let approve = |campus: &mut Campus, request| {
        let answer = transfer(campus.send(counter, request));
        assert_eq!(answer.code, AnswerCode::Approved);
        answer
    };
    approve(&mut campus, top_up(1001, 50_00, "WX-1"));
    approve(&mut campus, top_up(1001, 20_00, "WX-2"));
    approve(&mut campus, top_up(1001, 30_00, "WX-3"));
    approve(&mut campus, top_up(1001, 10_00, "WX-4"));
    let reversed_sequence = campus.last_sequence(counter);
    approve(&mut campus, reversal(reversed_sequence, 1001, 10_00));
    clock.set_ms(LAST_MS_OF_SEPT_1 + 1);
    approve(&mut campus, top_up(1001, 5_00, "WX-NEXT"));
    campus.ledger().cutover_due().expect("turns");
    let transfers_before = campus.transfers_committed();

    let (report, seen) = run(
        &campus,
        20_260_901,
        vec![
            line(2, "WX-1", 50_00, Some(20_260_901)),
            line(3, "WX-2", 20_01, Some(20_260_901)),
            line(4, "WX-1", 50_00, Some(20_260_901)),
            line(5, "WX-9", 8_00, Some(20_260_901)),
            line(6, "WX-9", 8_00, Some(20_260_901)),
            Err(MalformedLine { line: 7, reason: "amount \"1,00\" is not yuan".to_owned() }),
            line(8, "WX-4", 10_00, Some(20_260_901)),
            line(9, "WX-NEXT", 5_00, Some(20_260_901)),
        ],
    );
    let classes: Vec<(Option<u64>, LineClass)> = seen.iter().map(|c| (c.line, c.class)).collect();
    assert_eq!(
        classes,
        [
            (Some(2), LineClass::Matched),
            (Some(3), LineClass::AmountDiffers),
            (Some(4), LineClass::Duplicate),
            (Some(5), LineClass::Surplus),
            (Some(6), LineClass::Duplicate),
            (Some(7), LineClass::Malformed),
            (Some(8), LineClass::ReversedHere),
            (Some(9), LineClass::OtherDate),
            (None, LineClass::Shortfall),
        ]
    );
    assert_eq!(seen[8].reference, "WX-3");
    assert_eq!((seen[1].channel_fen, seen[1].our_fen), (Some(20_01), Some(20_00)));
    assert!(!report.passed);
    assert_eq!(report.statement_lines, 8);
    assert_eq!(report.our_top_ups, 4);
    assert_eq!(report.discrepancy_count, 8);
    assert_eq!(campus.transfers_committed(), transfers_before, "reconciliation posts nothing");

    // An empty statement: every top-up is a shortfall.
    let (empty, seen) = run(&campus, 20_260_901, Vec::new());
    assert!(empty.empty_statement && !empty.passed);
    assert!(seen.iter().all(|c| c.class == LineClass::Shortfall));
    assert_eq!(seen.len(), 3, "the reversed top-up is not owed");

    // The 2nd's statement handed in for the 1st.
    let (wrong, _) = run(&campus, 20_260_901, vec![line(2, "WX-NEXT", 5_00, Some(20_260_902))]);
    assert!(wrong.wrong_date_statement);

    // The right statement for the 2nd matches, once the 2nd is closed.
    campus.ledger().cutover(date(20_260_902)).expect("closes");
    let (right, _) = run(&campus, 20_260_902, vec![line(2, "WX-NEXT", 5_00, Some(20_260_902))]);
    assert!(right.passed, "{right:#?}");
    campus.assert_verified();
}

#[test]
fn an_adjustment_posts_once_and_moves_a_card_in_memory_too() {
    use onecard_engine::account::{AccountId, AccountKind};
    use onecard_engine::adjustment::AdjustmentOrder;
    let mut campus = Campus::new("adjustment");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    let account = campus.ledger().card(1001).expect("card").account_number;
    let suspense = AccountId::single(AccountKind::Suspense);
    let credit_card = AdjustmentOrder {
        id: 7,
        debit: suspense,
        credit: AccountId::card(account),
        amount_fen: 2_50,
    };
    let ledger = campus.ledger();
    let first = ledger.post_adjustment(credit_card).expect("posts");
    let before = campus.transfers_committed();
    assert_eq!(ledger.post_adjustment(credit_card).expect("repeat-safe"), first);
    assert_eq!(campus.transfers_committed(), before, "the same id posts once");
    assert_eq!(campus.balance(1001), 12_50, "the card can spend it at once");
    let too_much = AdjustmentOrder {
        id: 8,
        debit: AccountId::card(account),
        credit: suspense,
        amount_fen: 12_51,
    };
    assert!(matches!(
        campus.ledger().post_adjustment(too_much),
        Err(onecard_engine::ControlError::InvalidAmount(_))
    ));
    let same = AdjustmentOrder { id: 9, debit: suspense, credit: suspense, amount_fen: 1 };
    assert!(campus.ledger().post_adjustment(same).is_err());
    campus.reopen();
    assert_eq!(campus.balance(1001), 12_50);
    assert_eq!(campus.ledger().adjustment_transfer(7).expect("reads"), Some(first));
    campus.assert_verified();
}
