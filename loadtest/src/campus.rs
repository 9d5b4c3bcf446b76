//! The campus the load runs against, read from the files `onecard serve --demo`
//! writes under `<data_dir>/demo/`: the terminals and their keys, the cards, and the
//! operators.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use onecard_protocol::TerminalKey;
use serde::Deserialize;

/// A terminal of the campus.
#[derive(Debug, Clone)]
pub struct CampusTerminal {
    /// Its id.
    pub id: u32,
    /// Its merchant.
    pub merchant_id: u32,
    /// Its merchant's category (`canteen`, `card_centre`, ...).
    pub category: String,
    /// Its key.
    pub key: TerminalKey,
}

/// `campus.json`, as far as the load needs it.
#[derive(Debug, Clone, Deserialize)]
struct CampusFile {
    card_first: u64,
    cards: u64,
    lost_cards: Vec<u64>,
    frozen_cards: Vec<u64>,
    #[serde(default)]
    low_balance_cards: Vec<u64>,
}

/// Everything the load needs to know about the campus.
#[derive(Debug, Clone)]
pub struct Campus {
    /// Every terminal.
    pub terminals: Vec<CampusTerminal>,
    /// The first card number.
    pub card_first: u64,
    /// Cards, numbered on from the first.
    pub cards: u64,
    /// Cards reported lost.
    pub lost_cards: Vec<u64>,
    /// Cards that start nearly empty.
    pub low_balance_cards: Vec<u64>,
    /// Cards that are not plain good cards (lost, frozen, nearly empty).
    pub unusual_cards: HashSet<u64>,
    /// `(name, role, password)` of the demo operators.
    pub operators: Vec<(String, String, String)>,
}

impl Campus {
    /// Reads the demo files under `<data_dir>/demo/`.
    ///
    /// # Errors
    /// If a file is missing or malformed.
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("demo");
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).with_context(|| {
                format!("reading {}: start the server with `onecard serve --demo` on this data directory", dir.join(name).display())
            })
        };
        let file: CampusFile =
            serde_json::from_str(&read("campus.json")?).context("parsing campus.json")?;
        let mut terminals = Vec::new();
        for (number, line) in read("terminals.csv")?.lines().enumerate().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let parsed = (|| -> Option<CampusTerminal> {
                let [id, merchant_id, category, _shard, key] = fields.as_slice() else {
                    return None;
                };
                Some(CampusTerminal {
                    id: id.parse().ok()?,
                    merchant_id: merchant_id.parse().ok()?,
                    category: (*category).to_owned(),
                    key: TerminalKey::from_hex(key).ok()?,
                })
            })();
            terminals.push(
                parsed.with_context(|| format!("terminals.csv line {}: {line:?}", number + 1))?,
            );
        }
        let mut operators = Vec::new();
        for line in read("operators.csv")?.lines().skip(1) {
            if let [name, role, password] = line.split(',').collect::<Vec<_>>().as_slice() {
                operators.push(((*name).to_owned(), (*role).to_owned(), (*password).to_owned()));
            }
        }
        let unusual_cards = file
            .lost_cards
            .iter()
            .chain(&file.frozen_cards)
            .chain(&file.low_balance_cards)
            .copied()
            .collect();
        Ok(Self {
            terminals,
            card_first: file.card_first,
            cards: file.cards,
            lost_cards: file.lost_cards,
            low_balance_cards: file.low_balance_cards,
            unusual_cards,
            operators,
        })
    }

    /// The operator of `role`: name and password.
    ///
    /// # Errors
    /// If the demo has none.
    pub fn operator(&self, role: &str) -> anyhow::Result<(&str, &str)> {
        self.operators
            .iter()
            .find(|(_, r, _)| r == role)
            .map(|(name, _, password)| (name.as_str(), password.as_str()))
            .with_context(|| format!("operators.csv has no {role}"))
    }
}
