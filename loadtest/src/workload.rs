//! What each request is: its kind, terminal, card and amount, drawn from the
//! scenario's mix, skew and amounts with a seeded generator.

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::campus::Campus;
use crate::scenario::Scenario;

/// What a request is, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A purchase at a merchant terminal.
    Purchase,
    /// A top-up at a card-centre terminal.
    TopUp,
    /// A balance inquiry.
    Inquiry,
    /// A partial refund of an earlier purchase.
    Refund,
    /// A reversal of an earlier purchase.
    Reversal,
    /// Bad: a purchase above a nearly empty card's balance.
    Insufficient,
    /// Bad: a purchase with a lost card.
    LostCard,
    /// Bad: a frame with a forged MAC.
    BadMac,
    /// Bad: an answered purchase sent again under its sequence.
    Retry,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Self; 9] = [
        Self::Purchase,
        Self::TopUp,
        Self::Inquiry,
        Self::Refund,
        Self::Reversal,
        Self::Insufficient,
        Self::LostCard,
        Self::BadMac,
        Self::Retry,
    ];

    /// The name in reports.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::TopUp => "top_up",
            Self::Inquiry => "inquiry",
            Self::Refund => "refund",
            Self::Reversal => "reversal",
            Self::Insufficient => "insufficient_funds",
            Self::LostCard => "lost_card",
            Self::BadMac => "bad_mac",
            Self::Retry => "retry",
        }
    }
}

/// One request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What it is.
    pub kind: Kind,
    /// Index of the terminal that sends it, in the driver's list.
    pub terminal: usize,
    /// The card.
    pub card: u64,
    /// Amount, fen (purchases and top-ups).
    pub amount_fen: u32,
}

/// Draws requests for a scenario over a campus.
#[derive(Debug, Clone)]
pub struct Workload {
    rng: SmallRng,
    scenario: Scenario,
    /// Driver indexes of merchant terminals: the hot merchants' and the others'.
    hot: Vec<usize>,
    cold: Vec<usize>,
    /// Driver indexes of card-centre terminals.
    top_up: Vec<usize>,
    card_first: u64,
    cards: u64,
    campus: std::sync::Arc<Campus>,
}

impl Workload {
    /// A workload over the driver's terminals: `merchant_terminals[i]` is the merchant
    /// id of driver terminal `i` for merchant terminals, `None` for card-centre ones.
    #[must_use]
    pub fn new(
        scenario: &Scenario,
        campus: std::sync::Arc<Campus>,
        merchant_of: &[Option<u32>],
        stream: u64,
    ) -> Self {
        let mut merchants: Vec<u32> = merchant_of.iter().flatten().copied().collect();
        merchants.sort_unstable();
        merchants.dedup();
        let hot_count = fraction_of(merchants.len(), scenario.hot_merchant_fraction);
        let hot_merchants: std::collections::HashSet<u32> =
            merchants.iter().take(hot_count).copied().collect();
        let (mut hot, mut cold, mut top_up) = (Vec::new(), Vec::new(), Vec::new());
        for (index, merchant) in merchant_of.iter().enumerate() {
            match merchant {
                Some(m) if hot_merchants.contains(m) => hot.push(index),
                Some(_) => cold.push(index),
                None => top_up.push(index),
            }
        }
        let cards =
            if scenario.cards == 0 { campus.cards } else { scenario.cards.min(campus.cards) };
        Self {
            rng: SmallRng::seed_from_u64(
                scenario.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            scenario: scenario.clone(),
            hot,
            cold,
            top_up,
            card_first: campus.card_first,
            cards,
            campus,
        }
    }

    /// The next request.
    pub fn next_plan(&mut self) -> Plan {
        let bad = self.scenario.bad_fraction;
        if bad > 0.0 && self.rng.random_bool(bad) {
            let kind = [Kind::Insufficient, Kind::LostCard, Kind::BadMac, Kind::Retry]
                [self.rng.random_range(0..4)];
            return self.plan(kind);
        }
        let mix = self.scenario.mix;
        let mut pick = self.rng.random_range(0..mix.total());
        for (weight, kind) in [
            (mix.purchase, Kind::Purchase),
            (mix.top_up, Kind::TopUp),
            (mix.inquiry, Kind::Inquiry),
            (mix.refund, Kind::Refund),
            (mix.reversal, Kind::Reversal),
        ] {
            if pick < weight {
                return self.plan(kind);
            }
            pick -= weight;
        }
        self.plan(Kind::Purchase)
    }

    fn plan(&mut self, kind: Kind) -> Plan {
        let terminal = if kind == Kind::TopUp {
            choose(&mut self.rng, &self.top_up)
        } else {
            self.merchant_terminal()
        };
        let special = match kind {
            Kind::LostCard => choose_card(&mut self.rng, &self.campus.lost_cards),
            Kind::Insufficient => choose_card(&mut self.rng, &self.campus.low_balance_cards),
            _ => None,
        };
        let card = special.unwrap_or_else(|| self.good_card());
        let amount_fen = match kind {
            Kind::TopUp => {
                self.rng.random_range(self.scenario.top_up_fen_min..=self.scenario.top_up_fen_max)
            }
            // Above the nearly empty cards' balance, within the no-PIN limit.
            Kind::Insufficient => self.rng.random_range(1_500..=4_500),
            _ => self.purchase_amount(),
        };
        Plan { kind, terminal, card, amount_fen }
    }

    /// Amounts cluster toward the small end: a few yuan is common, thirty is rare.
    fn purchase_amount(&mut self) -> u32 {
        let (low, high) = (self.scenario.amount_fen_min, self.scenario.amount_fen_max);
        let u: f64 = self.rng.random();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "within [0, high - low]"
        )]
        let offset = (f64::from(high - low) * u * u).round() as u32;
        low + offset.min(high - low)
    }

    fn merchant_terminal(&mut self) -> usize {
        let hot = !self.hot.is_empty()
            && (self.cold.is_empty() || self.rng.random_bool(self.scenario.hot_share));
        if hot { choose(&mut self.rng, &self.hot) } else { choose(&mut self.rng, &self.cold) }
    }

    /// A card that is neither lost, frozen nor nearly empty (a few tries; the campus
    /// has few unusual cards).
    fn good_card(&mut self) -> u64 {
        let mut card = self.card_first;
        for _ in 0..8 {
            card = self.card_first + self.rng.random_range(0..self.cards.max(1));
            if !self.campus.unusual_cards.contains(&card) {
                break;
            }
        }
        card
    }

    /// Seconds to the next request at `rate` per second: exponential, so arrivals are
    /// a Poisson process, as independent cardholders are.
    pub fn interval_secs(&mut self, rate: f64) -> f64 {
        if rate <= 0.0 {
            return 0.01;
        }
        let u: f64 = self.rng.random();
        -(1.0 - u).ln() / rate
    }
}

/// One of `from`, or 0 when it is empty.
fn choose(rng: &mut SmallRng, from: &[usize]) -> usize {
    if from.is_empty() { 0 } else { from[rng.random_range(0..from.len())] }
}

/// One of `cards`, if there are any.
fn choose_card(rng: &mut SmallRng, cards: &[u64]) -> Option<u64> {
    (!cards.is_empty()).then(|| cards[rng.random_range(0..cards.len())])
}

/// `fraction` of `n`, at least one when `n` and `fraction` are not zero.
fn fraction_of(n: usize, fraction: f64) -> usize {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a count of merchants"
    )]
    let count = (n as f64 * fraction).ceil() as usize;
    count.min(n)
}
