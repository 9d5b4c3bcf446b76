//! A campus for the ledger benchmarks: one card centre, canteens (and a few shops and
//! utilities), terminals spread over them, and cards opened and funded through the
//! ledger's own API, on a fresh store.
//!
//! Merchant ids go 1, 2, 3, … and the ledger puts merchant `id` on shard
//! `id % shards`, so the card centre is merchant 1 and the others alternate over the
//! shards. The first fifth of the other merchants are *hot*: they get the extra
//! terminals, and the harness sends them 80% of the purchases.

use std::collections::VecDeque;

use onecard_engine::cards::{CardType, LimitOverrides};
use onecard_engine::directory::MerchantCategory;
use onecard_engine::{ControlError, Ledger, OpenCard, Submission};
use onecard_protocol::message::{Reference, TopUp};
use onecard_protocol::{Answer, AnswerCode, Channel, MacAlgorithm, Request, TerminalKey};
use rust_decimal::Decimal;

/// Card numbers are `CARD_BASE + 1 ..= CARD_BASE + cards`.
pub const CARD_BASE: u64 = 8_800_000_000;

/// The last business date a benchmark card works.
pub const EXPIRY: u32 = 20_991_231;

/// Requests a terminal may have unanswered (the protocol's pipeline depth).
pub const PIPELINE_DEPTH: usize = 64;

/// A small, fast, deterministic generator (splitmix64); not for anything but load.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub const fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4765_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0); the modulo bias is negligible here.
    pub const fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// An index into a slice of `len` items (`0` when `len` is 0).
    pub fn index(&mut self, len: usize) -> usize {
        let n = u64::try_from(len).unwrap_or(u64::MAX);
        usize::try_from(self.below(n)).unwrap_or(0)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u32, high: u32) -> u32 {
        let span = u64::from(high.saturating_sub(low)) + 1;
        low + u32::try_from(self.below(span)).unwrap_or(0)
    }
}

pub use onecard_tests::TempDir;

/// What campus to build.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Cards to open.
    pub cards: u64,
    /// Merchants besides the card centre.
    pub merchants: u32,
    /// Terminals of the card centre (the only ones that take top-ups).
    pub centre_terminals: u32,
    /// Terminals of the other merchants: each has one, the hot ones share the rest.
    pub merchant_terminals: u32,
}

/// A merchant of the campus.
#[derive(Debug, Clone)]
pub struct Merchant {
    /// Its id.
    pub id: u32,
    /// The shard that owns it.
    pub shard: u8,
    /// What it sells.
    pub category: MerchantCategory,
    /// One of the fifth that takes most of the purchases.
    pub hot: bool,
    /// Its terminals' ids.
    pub terminals: Vec<u32>,
}

/// A campus on a ledger, and each terminal's next sequence.
#[derive(Debug, Clone)]
pub struct Campus {
    /// The card centre.
    pub centre: Merchant,
    /// The other merchants.
    pub merchants: Vec<Merchant>,
    /// Cards opened (numbers `CARD_BASE + 1 ..= CARD_BASE + cards`).
    pub cards: u64,
    /// Next sequence of terminal `id`, at index `id`.
    pub next_sequence: Vec<u64>,
}

/// The commission rate every benchmark merchant pays: 1.5%.
#[must_use]
pub fn commission_rate() -> Decimal {
    Decimal::new(15, 3)
}

/// A terminal's key: its id's low byte, repeated.
#[must_use]
pub fn terminal_key(terminal_id: u32) -> TerminalKey {
    TerminalKey::new([terminal_id.to_le_bytes()[0]; 32])
}

pub use onecard_tests::purchase;

/// A top-up of `amount_fen` at the card-centre counter.
#[must_use]
pub const fn top_up(card_number: u64, amount_fen: u32) -> Request {
    Request::TopUp(TopUp {
        card_number,
        amount_fen,
        channel: Channel::Counter,
        reference: Reference::EMPTY,
    })
}

impl Campus {
    /// Creates the card centre, the merchants and the terminals (no cards yet).
    ///
    /// # Errors
    /// [`ControlError`] from the ledger.
    pub fn build(ledger: &Ledger, spec: &Spec) -> Result<Self, ControlError> {
        let rate = commission_rate();
        let mut terminals = 0u32;
        let mut terminal = |merchant: u32| {
            terminals += 1;
            ledger.create_terminal(merchant, &terminal_key(terminals)).map(|t| t.id)
        };
        let record = ledger.create_merchant("卡务中心", MerchantCategory::CardCentre, rate)?;
        let mut centre = Merchant {
            id: record.id,
            shard: record.shard,
            category: MerchantCategory::CardCentre,
            hot: false,
            terminals: Vec::new(),
        };
        for _ in 0..spec.centre_terminals.max(1) {
            centre.terminals.push(terminal(centre.id)?);
        }
        let hot_count = (spec.merchants / 5).max(1);
        let mut merchants = Vec::new();
        for index in 0..spec.merchants {
            let category = match index % 20 {
                7 => MerchantCategory::Shop,
                13 if index % 40 == 13 => MerchantCategory::Utility,
                _ => MerchantCategory::Canteen,
            };
            let name = format!("merchant {index}");
            let record = ledger.create_merchant(&name, category, rate)?;
            merchants.push(Merchant {
                id: record.id,
                shard: record.shard,
                category,
                hot: index < hot_count,
                terminals: Vec::new(),
            });
        }
        // One terminal each, then the rest dealt round the hot merchants.
        let mut left = spec.merchant_terminals.max(spec.merchants);
        for merchant in &mut merchants {
            merchant.terminals.push(terminal(merchant.id)?);
            left -= 1;
        }
        let hot = usize::try_from(hot_count).unwrap_or(usize::MAX).min(merchants.len());
        let mut next = 0;
        while left > 0 && hot > 0 {
            let merchant = &mut merchants[next % hot];
            merchant.terminals.push(terminal(merchant.id)?);
            left -= 1;
            next += 1;
        }
        let slots = usize::try_from(terminals).unwrap_or(0) + 1;
        Ok(Self { centre, merchants, cards: 0, next_sequence: vec![1; slots] })
    }

    /// The number of card `index` (0-based).
    #[must_use]
    pub const fn card_number(index: u64) -> u64 {
        CARD_BASE + 1 + index
    }

    /// Opens `cards` staff cards, 10,000 to a synced control batch, with limits high
    /// enough that only the balance can refuse a purchase. `progress` is told after
    /// each batch.
    ///
    /// # Errors
    /// [`ControlError`] from the ledger.
    pub fn open_cards(
        &mut self,
        ledger: &Ledger,
        cards: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<(), ControlError> {
        let mut opened = 0;
        while opened < cards {
            let batch: Vec<OpenCard> =
                (opened..(opened + 10_000).min(cards)).map(Self::bench_card).collect();
            opened += batch.len() as u64;
            ledger.open_cards(batch)?;
            self.cards = opened;
            progress(opened);
        }
        Ok(())
    }

    /// What opening benchmark card `index` (0-based) asks for.
    #[must_use]
    pub fn bench_card(index: u64) -> OpenCard {
        let card_number = Self::card_number(index);
        OpenCard {
            card_number,
            holder_id: format!("B{card_number}"),
            holder_name: "Bench Holder".to_owned(),
            card_type: CardType::Staff,
            expiry_date: EXPIRY,
            deposit_fen: 0,
            pin: None,
            overrides: LimitOverrides {
                daily_fen_max: Some(i64::MAX / 4),
                transaction_fen_max: Some(100_000),
                balance_fen_max: Some(1_000_000_000),
                no_pin_fen_max: Some(100_000),
            },
        }
    }

    /// The submission of `request` from `terminal_id` under its next sequence.
    ///
    /// # Panics
    /// If the terminal is not one of the campus's.
    pub fn submission(&mut self, terminal_id: u32, request: Request) -> Submission {
        let slot = usize::try_from(terminal_id).expect("terminal ids fit usize");
        let sequence = self.next_sequence[slot];
        self.next_sequence[slot] += 1;
        Submission { terminal_id, sequence, mac_algorithm: MacAlgorithm::HmacSha256, request }
    }

    /// Tops up every card with `amount_fen` from the card-centre terminals, many
    /// requests in flight at once.
    ///
    /// # Errors
    /// The card and the code of the first top-up that is not approved.
    pub fn fund(&mut self, ledger: &Ledger, amount_fen: u32) -> Result<(), String> {
        let centre = self.centre.terminals.clone();
        let in_flight_max = (centre.len() * PIPELINE_DEPTH).min(8_192);
        let mut in_flight: VecDeque<(u64, tokio::sync::oneshot::Receiver<Answer>)> =
            VecDeque::with_capacity(in_flight_max);
        let settle = |card: u64, answer: Result<Answer, _>| match answer {
            Ok(answer) if answer.code() == AnswerCode::Approved => Ok(()),
            Ok(answer) => Err(format!("top-up of card {card}: {:?}", answer.code())),
            Err(_) => Err(format!("top-up of card {card}: the ledger shut down")),
        };
        for index in 0..self.cards {
            if in_flight.len() >= in_flight_max
                && let Some((card, answer)) = in_flight.pop_front()
            {
                settle(card, answer.blocking_recv())?;
            }
            let card = Self::card_number(index);
            let terminal = centre[usize::try_from(index).unwrap_or(0) % centre.len()];
            let submission = self.submission(terminal, top_up(card, amount_fen));
            in_flight.push_back((card, ledger.submit(submission)));
        }
        while let Some((card, answer)) = in_flight.pop_front() {
            settle(card, answer.blocking_recv())?;
        }
        Ok(())
    }
}
