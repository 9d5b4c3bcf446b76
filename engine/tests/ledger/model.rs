//! Model-based test: random sequences of card-centre and terminal operations run
//! against the engine and against a simple in-memory reference model. Every answer
//! code, every balance and every retry's answer must match; `verify` must pass at the
//! end and again after reopening the store.

use std::collections::{HashMap, VecDeque};

use onecard_engine::Submission;
use onecard_engine::cards::CardType;
use onecard_engine::ledger::ControlError;
use onecard_protocol::{Answer, AnswerCode, CardState, MacAlgorithm, Request};
use proptest::prelude::*;

use crate::support::*;

const SLOTS: usize = 6;
const WINDOW: usize = onecard_engine::limits::RETRY_WINDOW_REQUESTS;
// Student defaults.
const DAILY_MAX: i64 = 500_00;
const BALANCE_MAX: i64 = 1_000_00;

#[derive(Debug, Clone)]
enum Op {
    Open(usize),
    TopUp { terminal: usize, slot: usize, amount: u32 },
    Purchase { terminal: usize, slot: usize, amount: u32 },
    Inquiry { terminal: usize, slot: usize },
    Refund { terminal: usize, sale: usize, amount: u32 },
    Reverse { terminal: usize, back: usize },
    ReverseUnseen { terminal: usize, slot: usize, amount: u32 },
    Retry { terminal: usize, back: usize },
    Lost(usize),
    Unlock(usize),
    Reissue(usize),
    Close(usize),
    Burst { slot: usize, amounts: Vec<u32> },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let terminal = 0..6usize;
    prop_oneof![
        3 => slot.clone().prop_map(Op::Open),
        6 => (terminal.clone(), slot.clone(), 1..=120_00u32).prop_map(|(terminal, slot, amount)| Op::TopUp { terminal, slot, amount }),
        14 => (terminal.clone(), slot.clone(), 1..=40_00u32).prop_map(|(terminal, slot, amount)| Op::Purchase { terminal, slot, amount }),
        2 => (terminal.clone(), slot.clone()).prop_map(|(terminal, slot)| Op::Inquiry { terminal, slot }),
        3 => (terminal.clone(), 0..64usize, 1..=20_00u32).prop_map(|(terminal, sale, amount)| Op::Refund { terminal, sale, amount }),
        3 => (terminal.clone(), 0..80usize).prop_map(|(terminal, back)| Op::Reverse { terminal, back }),
        1 => (terminal.clone(), slot.clone(), 1..=10_00u32).prop_map(|(terminal, slot, amount)| Op::ReverseUnseen { terminal, slot, amount }),
        3 => (terminal, 0..80usize).prop_map(|(terminal, back)| Op::Retry { terminal, back }),
        1 => slot.clone().prop_map(Op::Lost),
        1 => slot.clone().prop_map(Op::Unlock),
        1 => slot.clone().prop_map(Op::Reissue),
        1 => slot.clone().prop_map(Op::Close),
        2 => (slot, proptest::collection::vec(1..=30_00u32, 2..12)).prop_map(|(slot, amounts)| Op::Burst { slot, amounts }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct Card {
    number: u64,
    state: CardState,
    balance: i64,
    spent: i64,
}

#[derive(Debug, Clone)]
struct Sale {
    terminal: u32,
    slot: usize,
    card_number: u64,
    transfer_id: u64,
    amount: i64,
    refunded: i64,
    reversed: bool,
}

#[derive(Debug, Clone)]
enum What {
    Purchase { slot: Option<usize>, card_number: u64, amount: u32, sale: Option<usize> },
    TopUp { slot: Option<usize>, card_number: u64, amount: u32 },
    Other,
    Tombstone,
}

#[derive(Debug, Clone)]
struct Retained {
    sequence: u64,
    what: What,
    request: Request,
    answer: Answer,
    reversed: bool,
}

#[derive(Debug)]
struct Terminal {
    id: u32,
    merchant: u32,
    shard: u8,
    counter: bool,
    sequence: u64,
    window: VecDeque<Retained>,
    floor: u64,
}

impl Terminal {
    fn push(&mut self, retained: Retained) {
        self.window.push_back(retained);
        while self.window.len() > WINDOW {
            let old = self.window.pop_front().expect("non-empty");
            self.floor = self.floor.max(old.sequence);
        }
    }

    fn find(&mut self, sequence: u64) -> Option<&mut Retained> {
        self.window.iter_mut().rev().find(|r| r.sequence == sequence)
    }
}

struct Model {
    cards: Vec<Option<Card>>,
    numbers: HashMap<u64, usize>,
    replaced: HashMap<u64, usize>,
    sales: Vec<Sale>,
    terminals: Vec<Terminal>,
    next_number: u64,
}

impl Model {
    fn card_mut(&mut self, card_number: u64) -> Option<&mut Card> {
        let slot = *self.numbers.get(&card_number)?;
        self.cards[slot].as_mut()
    }

    /// Why a card number cannot be used, if it cannot.
    fn unusable(&self, card_number: u64) -> Option<AnswerCode> {
        if self.replaced.contains_key(&card_number) {
            return Some(AnswerCode::CardReplaced);
        }
        let Some(slot) = self.numbers.get(&card_number) else {
            return Some(AnswerCode::UnknownCard);
        };
        match self.cards[*slot].as_ref().map(|c| c.state) {
            Some(CardState::Active) => None,
            Some(CardState::Lost) => Some(AnswerCode::CardLost),
            Some(CardState::Frozen) => Some(AnswerCode::CardFrozen),
            Some(CardState::Closed) => Some(AnswerCode::CardClosed),
            _ => Some(AnswerCode::UnknownCard),
        }
    }

    fn slot_number(&self, slot: usize) -> u64 {
        // An unopened slot sends a number no card has.
        self.cards[slot].as_ref().map_or(900_000 + slot as u64, |card| card.number)
    }
}

fn code_of(answer: &Answer) -> AnswerCode {
    answer.code()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut campus = Campus::new("model");
    let t = campus.terminals;
    let mut model = Model {
        cards: vec![None; SLOTS],
        numbers: HashMap::new(),
        replaced: HashMap::new(),
        sales: Vec::new(),
        terminals: [t.counter, t.canteen_a, t.canteen_b, t.canteen_a2, t.shop, t.utility]
            .into_iter()
            .map(|id| {
                let terminal = campus.ledger().terminal(id).expect("terminal");
                Terminal {
                    id,
                    merchant: terminal.merchant_id,
                    shard: terminal.shard,
                    counter: id == t.counter,
                    sequence: 0,
                    window: VecDeque::new(),
                    floor: 0,
                }
            })
            .collect(),
        next_number: 10_000,
    };
    for op in ops {
        step(&mut campus, &mut model, op)?;
        for card in model.cards.iter().flatten() {
            let seen = campus.ledger().card(card.number).expect("card");
            prop_assert_eq!(seen.balance_fen, card.balance, "balance of {}", card.number);
            prop_assert_eq!(seen.spent_today_fen, card.spent, "spent of {}", card.number);
        }
    }
    campus.assert_verified();
    campus.reopen();
    for card in model.cards.iter().flatten() {
        prop_assert_eq!(campus.ledger().card(card.number).expect("card").balance_fen, card.balance);
    }
    campus.assert_verified();
    Ok(())
}

fn send(campus: &Campus, terminal: u32, sequence: u64, request: Request) -> Answer {
    campus.ledger().submit_wait(Submission {
        terminal_id: terminal,
        sequence,
        mac_algorithm: MacAlgorithm::HmacSha256,
        request,
    })
}

#[allow(clippy::too_many_lines)]
fn step(campus: &mut Campus, model: &mut Model, op: Op) -> Result<(), TestCaseError> {
    match op {
        Op::Open(slot) => {
            if model.cards[slot].is_none() {
                model.next_number += 1;
                let number = model.next_number;
                campus.open_card(number, CardType::Student);
                model.cards[slot] =
                    Some(Card { number, state: CardState::Active, balance: 0, spent: 0 });
                model.numbers.insert(number, slot);
            }
        }
        Op::TopUp { terminal, slot, amount } => {
            let card_number = model.slot_number(slot);
            let request = top_up(card_number, amount);
            let expected = if !model.terminals[terminal].counter {
                AnswerCode::ChannelNotAllowed
            } else if let Some(code) = model.unusable(card_number) {
                code
            } else {
                let card = model.card_mut(card_number).expect("usable");
                if card.balance + i64::from(amount) > BALANCE_MAX {
                    AnswerCode::BalanceLimit
                } else {
                    card.balance += i64::from(amount);
                    AnswerCode::Approved
                }
            };
            let what =
                What::TopUp { slot: model.numbers.get(&card_number).copied(), card_number, amount };
            fresh(campus, model, terminal, request, what, expected)?;
        }
        Op::Purchase { terminal, slot, amount } => {
            let card_number = model.slot_number(slot);
            let request = purchase(card_number, amount);
            let fen = i64::from(amount);
            let expected = if let Some(code) = model.unusable(card_number) {
                code
            } else {
                let card = model.card_mut(card_number).expect("usable");
                if card.spent + fen > DAILY_MAX {
                    AnswerCode::DailyLimit
                } else if fen > card.balance {
                    AnswerCode::InsufficientFunds
                } else {
                    card.balance -= fen;
                    card.spent += fen;
                    AnswerCode::Approved
                }
            };
            let slot_of = model.numbers.get(&card_number).copied();
            let what = What::Purchase { slot: slot_of, card_number, amount, sale: None };
            let answer = fresh(campus, model, terminal, request, what, expected)?;
            if expected == AnswerCode::Approved {
                let sale = model.sales.len();
                model.sales.push(Sale {
                    terminal: model.terminals[terminal].id,
                    slot: slot_of.expect("approved"),
                    card_number,
                    transfer_id: transfer(answer).transfer_id,
                    amount: fen,
                    refunded: 0,
                    reversed: false,
                });
                let last = model.terminals[terminal].window.back_mut().expect("pushed");
                if let What::Purchase { sale: s, .. } = &mut last.what {
                    *s = Some(sale);
                }
            }
        }
        Op::Inquiry { terminal, slot } => {
            let card_number = model.slot_number(slot);
            let expected = if model.numbers.contains_key(&card_number)
                || model.replaced.contains_key(&card_number)
            {
                AnswerCode::Approved
            } else {
                AnswerCode::UnknownCard
            };
            fresh(campus, model, terminal, inquiry(card_number), What::Other, expected)?;
        }
        Op::Refund { terminal, sale, amount } => {
            if model.sales.is_empty() {
                return Ok(());
            }
            let index = sale % model.sales.len();
            let s = model.sales[index].clone();
            let request = refund(s.card_number, s.transfer_id, amount);
            let me = &model.terminals[terminal];
            let sale_terminal = model.terminals.iter().find(|t| t.id == s.terminal).expect("t");
            let fen = i64::from(amount);
            let expected = if me.shard != sale_terminal.shard {
                AnswerCode::UnknownTransfer
            } else if me.merchant != sale_terminal.merchant {
                AnswerCode::WrongMerchant
            } else if s.reversed {
                AnswerCode::AlreadyReversed
            } else if s.refunded + fen > s.amount {
                AnswerCode::RefundExceedsPurchase
            } else if model.cards[s.slot].as_ref().is_some_and(|c| c.state == CardState::Closed) {
                AnswerCode::CardClosed
            } else {
                model.sales[index].refunded += fen;
                model.cards[s.slot].as_mut().expect("open").balance += fen;
                AnswerCode::Approved
            };
            fresh(campus, model, terminal, request, What::Other, expected)?;
        }
        Op::Reverse { terminal, back } => {
            let me = &model.terminals[terminal];
            if me.sequence == 0 {
                return Ok(());
            }
            let original_sequence = me.sequence.saturating_sub(back as u64).max(1);
            let target = model.terminals[terminal].find(original_sequence).cloned();
            let (request, expected) = match &target {
                None if original_sequence <= model.terminals[terminal].floor => {
                    (reversal(original_sequence, 1, 1), AnswerCode::StaleSequence)
                }
                None => {
                    // A gap the terminal never sent: a tombstone.
                    (reversal(original_sequence, 1, 1), AnswerCode::Approved)
                }
                Some(r) => match &r.what {
                    What::Tombstone => {
                        (reversal(original_sequence, 1, 1), AnswerCode::AlreadyReversed)
                    }
                    What::Other => (
                        reversal(original_sequence, 1, 1),
                        if r.reversed {
                            AnswerCode::AlreadyReversed
                        } else {
                            AnswerCode::ReversalMismatch
                        },
                    ),
                    What::Purchase { card_number, amount, sale, slot } => {
                        let request = reversal(original_sequence, *card_number, *amount);
                        let code = if r.reversed {
                            AnswerCode::AlreadyReversed
                        } else if code_of(&r.answer) != AnswerCode::Approved {
                            AnswerCode::Approved
                        } else {
                            let sale = sale.expect("approved purchases are sales");
                            if model.sales[sale].refunded > 0 {
                                AnswerCode::ReversalMismatch
                            } else {
                                model.sales[sale].reversed = true;
                                let card = model.cards[slot.expect("sale")].as_mut().expect("open");
                                card.balance += i64::from(*amount);
                                card.spent -= i64::from(*amount);
                                AnswerCode::Approved
                            }
                        };
                        (request, code)
                    }
                    What::TopUp { card_number, amount, slot, .. } => {
                        let request = reversal(original_sequence, *card_number, *amount);
                        let code = if r.reversed {
                            AnswerCode::AlreadyReversed
                        } else if code_of(&r.answer) != AnswerCode::Approved {
                            AnswerCode::Approved
                        } else {
                            let card = model.cards[slot.expect("approved")].as_mut().expect("open");
                            if card.balance < i64::from(*amount) {
                                AnswerCode::InsufficientFunds
                            } else {
                                card.balance -= i64::from(*amount);
                                AnswerCode::Approved
                            }
                        };
                        (request, code)
                    }
                },
            };
            let approved_undo = expected == AnswerCode::Approved
                && target.as_ref().is_some_and(|r| {
                    code_of(&r.answer) == AnswerCode::Approved
                        && !matches!(r.what, What::Tombstone | What::Other)
                });
            let tombstone = expected == AnswerCode::Approved && target.is_none();
            let me = &mut model.terminals[terminal];
            if tombstone {
                // The engine leaves the tombstone before the reversal's own answer.
                me.push(Retained {
                    sequence: original_sequence,
                    what: What::Tombstone,
                    request: purchase(0, 0),
                    answer: refusal_answer(),
                    reversed: false,
                });
            }
            fresh(campus, model, terminal, request, What::Other, expected)?;
            if approved_undo
                && let Some(original) = model.terminals[terminal].find(original_sequence)
            {
                original.reversed = true;
            }
        }
        Op::ReverseUnseen { terminal, slot, amount } => {
            let card_number = model.slot_number(slot);
            let me = &mut model.terminals[terminal];
            let unseen = me.sequence + 1;
            me.sequence += 1;
            me.push(Retained {
                sequence: unseen,
                what: What::Tombstone,
                request: purchase(0, 0),
                answer: refusal_answer(),
                reversed: false,
            });
            fresh(
                campus,
                model,
                terminal,
                reversal(unseen, card_number, amount),
                What::Other,
                AnswerCode::Approved,
            )?;
            let id = model.terminals[terminal].id;
            let late = send(campus, id, unseen, purchase(card_number, amount));
            prop_assert_eq!(late.code(), AnswerCode::AlreadyReversed);
        }
        Op::Retry { terminal, back } => {
            let me = &mut model.terminals[terminal];
            if me.sequence == 0 {
                return Ok(());
            }
            let sequence = me.sequence.saturating_sub(back as u64).max(1);
            let id = me.id;
            let retained = me.find(sequence).cloned();
            let floor_or_gap = retained.is_none();
            let request = retained.as_ref().map_or_else(|| purchase(1, 1), |r| r.request.clone());
            let answer = send(campus, id, sequence, request);
            match retained {
                None => {
                    prop_assert!(floor_or_gap);
                    prop_assert_eq!(answer.code(), AnswerCode::StaleSequence);
                }
                Some(r) if matches!(r.what, What::Tombstone) => {
                    prop_assert_eq!(answer.code(), AnswerCode::AlreadyReversed);
                }
                Some(r) => prop_assert_eq!(answer, duplicate_of(r.answer)),
            }
        }
        Op::Lost(slot) => control(
            campus,
            model,
            slot,
            |ledger, n| ledger.report_lost(n),
            &[CardState::Active, CardState::Frozen],
            CardState::Lost,
        )?,
        Op::Unlock(slot) => control(
            campus,
            model,
            slot,
            |ledger, n| ledger.unlock(n),
            &[CardState::Lost],
            CardState::Active,
        )?,
        Op::Close(slot) => {
            let allowed = [CardState::Active, CardState::Lost, CardState::Frozen];
            control(
                campus,
                model,
                slot,
                |ledger, n| ledger.close_card(n),
                &allowed,
                CardState::Closed,
            )?;
            if let Some(card) = model.cards[slot].as_mut().filter(|c| c.state == CardState::Closed)
            {
                card.balance = 0;
            }
        }
        Op::Reissue(slot) => {
            let Some(card) = model.cards[slot].clone() else { return Ok(()) };
            model.next_number += 1;
            let new_number = model.next_number;
            let result = campus.ledger().reissue(card.number, new_number, 0);
            if card.state == CardState::Closed {
                prop_assert!(matches!(result, Err(ControlError::NotAllowed { .. })), "{result:?}");
            } else {
                prop_assert!(result.is_ok(), "{result:?}");
                model.replaced.insert(card.number, slot);
                model.numbers.insert(new_number, slot);
                let card = model.cards[slot].as_mut().expect("open");
                card.number = new_number;
                card.state = CardState::Active;
            }
        }
        Op::Burst { slot, amounts } => burst(campus, model, slot, &amounts)?,
        Op::Reopen => campus.reopen(),
    }
    Ok(())
}

fn refusal_answer() -> Answer {
    Answer::SignOff(onecard_protocol::message::SignOffAnswer { code: AnswerCode::AlreadyReversed })
}

fn duplicate_of(answer: Answer) -> Answer {
    match answer {
        Answer::Purchase(mut a) => {
            a.duplicate = true;
            Answer::Purchase(a)
        }
        Answer::TopUp(mut a) => {
            a.duplicate = true;
            Answer::TopUp(a)
        }
        Answer::Refund(mut a) => {
            a.duplicate = true;
            Answer::Refund(a)
        }
        Answer::Reversal(mut a) => {
            a.duplicate = true;
            Answer::Reversal(a)
        }
        other => other,
    }
}

/// Sends `request` under the terminal's next sequence, checks its code, and retains
/// the answer in the model's window.
fn fresh(
    campus: &Campus,
    model: &mut Model,
    terminal: usize,
    request: Request,
    what: What,
    expected: AnswerCode,
) -> Result<Answer, TestCaseError> {
    let me = &mut model.terminals[terminal];
    me.sequence += 1;
    let sequence = me.sequence;
    let answer = send(campus, me.id, sequence, request.clone());
    prop_assert_eq!(
        answer.code(),
        expected,
        "{:?} at terminal {} seq {}",
        request,
        me.id,
        sequence
    );
    me.push(Retained { sequence, what, request, answer: answer.clone(), reversed: false });
    Ok(answer)
}

fn control(
    campus: &Campus,
    model: &mut Model,
    slot: usize,
    action: impl Fn(
        &onecard_engine::Ledger,
        u64,
    ) -> Result<onecard_engine::ledger::CardView, ControlError>,
    from: &[CardState],
    to: CardState,
) -> Result<(), TestCaseError> {
    let Some(card) = model.cards[slot].as_mut() else { return Ok(()) };
    let result = action(campus.ledger(), card.number);
    if from.contains(&card.state) {
        prop_assert!(result.is_ok(), "{result:?}");
        card.state = to;
    } else {
        prop_assert!(matches!(result, Err(ControlError::NotAllowed { .. })), "{result:?}");
    }
    Ok(())
}

/// Purchases of one card submitted to every shard at once: whichever the engine
/// approves, together they must fit the balance and the daily limit, and the rest must
/// be refused for exactly those reasons.
fn burst(
    campus: &Campus,
    model: &mut Model,
    slot: usize,
    amounts: &[u32],
) -> Result<(), TestCaseError> {
    let Some(card) = model.cards[slot].clone() else { return Ok(()) };
    if card.state != CardState::Active {
        return Ok(());
    }
    // Canteen A (shard 0) and canteen B (shard 1) take turns.
    let mut pending = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let terminal = if i % 2 == 0 { 1 } else { 2 };
        let me = &mut model.terminals[terminal];
        me.sequence += 1;
        let request = purchase(card.number, *amount);
        let receiver = campus.ledger().submit(Submission {
            terminal_id: me.id,
            sequence: me.sequence,
            mac_algorithm: MacAlgorithm::HmacSha256,
            request: request.clone(),
        });
        pending.push((terminal, me.sequence, *amount, request, receiver));
    }
    let mut approved = 0i64;
    for (terminal, sequence, amount, request, receiver) in pending {
        let answer = receiver.blocking_recv().expect("answered");
        let code = answer.code();
        let mut sale = None;
        match code {
            AnswerCode::Approved => {
                approved += i64::from(amount);
                sale = Some(model.sales.len());
                model.sales.push(Sale {
                    terminal: model.terminals[terminal].id,
                    slot,
                    card_number: card.number,
                    transfer_id: transfer(answer.clone()).transfer_id,
                    amount: i64::from(amount),
                    refunded: 0,
                    reversed: false,
                });
            }
            AnswerCode::InsufficientFunds | AnswerCode::DailyLimit => {}
            other => prop_assert!(false, "a burst purchase was answered {other}"),
        }
        let what = What::Purchase { slot: Some(slot), card_number: card.number, amount, sale };
        model.terminals[terminal].push(Retained {
            sequence,
            what,
            request,
            answer,
            reversed: false,
        });
    }
    prop_assert!(approved <= card.balance, "approved {approved} of {}", card.balance);
    prop_assert!(card.spent + approved <= DAILY_MAX);
    let card = model.cards[slot].as_mut().expect("open");
    card.balance -= approved;
    card.spent += approved;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_answers_as_the_reference_model_does(ops in proptest::collection::vec(op(), 20..120)) {
        run(ops)?;
    }
}
