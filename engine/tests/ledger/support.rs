//! A small campus on a temporary store, and helpers that read as scenarios.

use std::collections::HashMap;

use onecard_engine::cards::{CardType, LimitOverrides};
use onecard_engine::chain::Chain;
use onecard_engine::directory::MerchantCategory;
use onecard_engine::ledger::CardView;
use onecard_engine::{Ledger, LedgerConfig, OpenCard, Submission};
use onecard_protocol::message::{BalanceInquiry, Refund, Reversal, TopUp, TransferAnswer};
use onecard_protocol::{Answer, Channel, MacAlgorithm, Request, TerminalKey};
use onecard_tests::TempDir;
use rust_decimal::Decimal;

/// Terminals of the test campus.
#[derive(Debug, Clone, Copy)]
pub struct Terminals {
    /// The card centre counter: takes top-ups.
    pub counter: u32,
    /// A canteen on shard 0.
    pub canteen_a: u32,
    /// A canteen on shard 1.
    pub canteen_b: u32,
    /// Another terminal of canteen A's merchant.
    pub canteen_a2: u32,
    /// A shop on another merchant of shard 0 or 1.
    pub shop: u32,
    /// A utility (hot water): the restricted purse pays first.
    pub utility: u32,
}

pub struct Campus {
    pub ledger: Option<Ledger>,
    pub dir: TempDir,
    pub terminals: Terminals,
    pub sequences: HashMap<u32, u64>,
    pub config: LedgerConfig,
}

pub const EXPIRY: u32 = 20_991_231;

pub fn key(terminal: u32) -> TerminalKey {
    TerminalKey::new([u8::try_from(terminal % 251).expect("small"); 32])
}

impl Campus {
    pub fn new(name: &str) -> Self {
        Self::with_shards(name, 2)
    }

    pub fn with_shards(name: &str, shards: usize) -> Self {
        Self::with_config(name, config(shards))
    }

    /// A campus whose ledger runs with `config` (a hand-set clock, say).
    pub fn with_config(name: &str, config: LedgerConfig) -> Self {
        let shards = config.shards;
        let dir = TempDir::new(name);
        let ledger = Ledger::open(dir.path(), config.clone()).expect("opens");
        let rate = Decimal::new(15, 3);
        // Merchant ids go 1, 2, 3, ... and shards id % shards.
        let centre =
            ledger.create_merchant("卡务中心", MerchantCategory::CardCentre, rate).expect("m");
        let canteen_a =
            ledger.create_merchant("一食堂", MerchantCategory::Canteen, rate).expect("m");
        let canteen_b =
            ledger.create_merchant("二食堂", MerchantCategory::Canteen, rate).expect("m");
        let shop = ledger.create_merchant("教育超市", MerchantCategory::Shop, rate).expect("m");
        let utility = ledger.create_merchant("热水", MerchantCategory::Utility, rate).expect("m");
        if shards > 1 {
            assert_ne!(
                canteen_a.shard, canteen_b.shard,
                "the two canteens are on different shards"
            );
        }
        let terminal = |merchant: u32| {
            let id = u32::try_from(ledger.terminals().len()).expect("few") + 1;
            ledger.create_terminal(merchant, &key(id)).expect("t").id
        };
        let terminals = Terminals {
            counter: terminal(centre.id),
            canteen_a: terminal(canteen_a.id),
            canteen_b: terminal(canteen_b.id),
            canteen_a2: terminal(canteen_a.id),
            shop: terminal(shop.id),
            utility: terminal(utility.id),
        };
        Self { ledger: Some(ledger), dir, terminals, sequences: HashMap::new(), config }
    }

    pub fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("open")
    }

    /// Closes and reopens the ledger on the same store.
    pub fn reopen(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            ledger.close();
        }
        self.ledger = Some(Ledger::open(self.dir.path(), self.config.clone()).expect("reopens"));
    }

    pub fn open_card(&self, card_number: u64, card_type: CardType) -> CardView {
        self.ledger()
            .open_card(OpenCard {
                card_number,
                holder_id: format!("S{card_number}"),
                holder_name: "张三".to_owned(),
                card_type,
                expiry_date: EXPIRY,
                deposit_fen: 2_000,
                pin: None,
                overrides: LimitOverrides::default(),
            })
            .expect("opens a card")
    }

    /// Sends with the terminal's next sequence.
    pub fn send(&mut self, terminal: u32, request: Request) -> Answer {
        let sequence = self.sequences.entry(terminal).or_default();
        *sequence += 1;
        let sequence = *sequence;
        self.send_at(terminal, sequence, request)
    }

    /// Sends under an explicit sequence (a retry, or a deliberate gap).
    pub fn send_at(&mut self, terminal: u32, sequence: u64, request: Request) -> Answer {
        let last = self.sequences.entry(terminal).or_default();
        *last = (*last).max(sequence);
        self.ledger().submit_wait(Submission {
            terminal_id: terminal,
            sequence,
            mac_algorithm: MacAlgorithm::HmacSha256,
            request,
        })
    }

    pub fn last_sequence(&self, terminal: u32) -> u64 {
        self.sequences.get(&terminal).copied().unwrap_or(0)
    }

    pub fn top_up(&mut self, card_number: u64, amount_fen: u32) -> TransferAnswer {
        let counter = self.terminals.counter;
        transfer(self.send(counter, top_up(card_number, amount_fen)))
    }

    pub fn buy(&mut self, terminal: u32, card_number: u64, amount_fen: u32) -> TransferAnswer {
        transfer(self.send(terminal, purchase(card_number, amount_fen)))
    }

    pub fn balance(&self, card_number: u64) -> i64 {
        self.ledger().card(card_number).expect("card").balance_fen
    }

    pub fn assert_verified(&self) {
        let report = self.ledger().verify().expect("reads");
        assert!(report.is_clean(), "{report}");
    }

    pub fn transfers_committed(&self) -> u64 {
        self.ledger().verify().expect("reads").transfers
    }
}

/// The store's journal chain, opened with the campus's master key.
pub fn chain_key(campus: &Campus, store: &onecard_engine::store::Store) -> Chain {
    onecard_engine::chain::load(store, &campus.config.master_key).expect("the chain key opens")
}

pub fn config(shards: usize) -> LedgerConfig {
    LedgerConfig { shards, ..LedgerConfig::default() }
}

pub use onecard_tests::purchase;

pub fn top_up(card_number: u64, amount_fen: u32) -> Request {
    Request::TopUp(TopUp {
        card_number,
        amount_fen,
        channel: Channel::App,
        reference: onecard_protocol::message::Reference::EMPTY,
    })
}

pub fn inquiry(card_number: u64) -> Request {
    Request::BalanceInquiry(BalanceInquiry { card_number })
}

pub fn refund(card_number: u64, purchase_transfer_id: u64, amount_fen: u32) -> Request {
    Request::Refund(Refund { card_number, purchase_transfer_id, amount_fen })
}

pub fn reversal(original_sequence: u64, card_number: u64, amount_fen: u32) -> Request {
    Request::Reversal(Reversal { original_sequence, card_number, amount_fen })
}

/// The transfer answer inside an answer.
pub fn transfer(answer: Answer) -> TransferAnswer {
    match answer {
        Answer::Purchase(a) | Answer::TopUp(a) | Answer::Refund(a) | Answer::Reversal(a) => a,
        other => panic!("not a transfer answer: {other:?}"),
    }
}
