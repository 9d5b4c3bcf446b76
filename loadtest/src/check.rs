//! After the run: does the ledger hold exactly what the terminals were told?
//!
//! Before the run the loadtest reads every merchant's balance and the card pool through
//! the admin API; after it, it reads them again. Each merchant's balance must have moved
//! by the purchases its terminals were told were approved, less the refunds and
//! reversals they were told were approved; the card pool by the top-ups less the net
//! purchases. Requests that got no answer may or may not be in the ledger: their
//! amounts are the only tolerance, and the report says how much. Then the server's
//! own `verify` must find every invariant holding. The run assumes it is the only
//! traffic on the server.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::recorder::Money;

/// A small client of the admin API.
pub struct Admin {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Parses "12.34" or "-0.05" into fen.
fn fen(yuan: &str) -> anyhow::Result<i64> {
    let (negative, digits) = yuan.strip_prefix('-').map_or((false, yuan), |rest| (true, rest));
    let (whole, fraction) = digits.split_once('.').context("an amount with decimals")?;
    anyhow::ensure!(fraction.len() == 2, "two decimals in {yuan:?}");
    let value: i64 = whole.parse::<i64>()? * 100 + fraction.parse::<i64>()?;
    Ok(if negative { -value } else { value })
}

impl Admin {
    /// Logs in as `operator`.
    ///
    /// # Errors
    /// If the server refuses or cannot be reached.
    pub fn login(addr: SocketAddr, operator: &str, password: &str) -> anyhow::Result<Self> {
        let config =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).build();
        let agent = ureq::Agent::new_with_config(config);
        let base = format!("http://{addr}");
        let body = serde_json::json!({ "operator": operator, "password": password });
        let answer: serde_json::Value = agent
            .post(format!("{base}/api/auth/login"))
            .send_json(&body)
            .with_context(|| format!("logging in to the admin API at {addr} as {operator}"))?
            .body_mut()
            .read_json()?;
        let token = answer["token"].as_str().context("a token in the login answer")?.to_owned();
        Ok(Self { agent, base, token })
    }

    fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {path}"))?
            .body_mut()
            .read_json()?)
    }

    /// Every merchant's unsettled balance and the card pool, in fen.
    ///
    /// # Errors
    /// If the API fails.
    pub fn snapshot(&self, merchants: &[u32]) -> anyhow::Result<Snapshot> {
        let mut balances = HashMap::with_capacity(merchants.len());
        for merchant in merchants {
            let answer = self.get(&format!("/api/merchants/{merchant}"))?;
            let balance = answer["balance_yuan"].as_str().context("a merchant balance")?;
            balances.insert(*merchant, fen(balance)?);
        }
        let pool = self.get("/api/balances")?;
        let card_pool_fen = fen(pool["card_pool_yuan"].as_str().context("the card pool")?)?;
        Ok(Snapshot { merchants: balances, card_pool_fen })
    }

    /// The server's `verify`: clean, and the problems if not.
    ///
    /// # Errors
    /// If the API fails.
    pub fn verify(&self) -> anyhow::Result<(bool, Vec<String>)> {
        let answer = self.get("/api/verify")?;
        let problems = answer["problems"]
            .as_array()
            .map(|list| list.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok((answer["clean"].as_bool() == Some(true), problems))
    }
}

/// Balances at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each merchant's balance, fen.
    pub merchants: HashMap<u32, i64>,
    /// The card pool, fen.
    pub card_pool_fen: i64,
}

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    /// Every comparison held and verify is clean.
    pub passed: bool,
    /// Merchants compared.
    pub merchants_checked: usize,
    /// Merchants whose balance moved by other than the terminals were told, with by
    /// how much (fen).
    pub mismatches: BTreeMap<u32, i64>,
    /// Net sales the terminals were told of, fen.
    pub told_net_sales_fen: i64,
    /// What the merchants' balances moved by, fen.
    pub ledger_net_sales_fen: i64,
    /// Top-ups less net sales the terminals were told of: the card pool's expected move.
    pub told_card_pool_move_fen: i64,
    /// What the card pool moved by.
    pub ledger_card_pool_move_fen: i64,
    /// Amounts of requests that got no answer: the only allowed difference.
    pub unknown_fen: i64,
    /// The server's verify found nothing.
    pub verify_clean: bool,
    /// What verify found.
    pub verify_problems: Vec<String>,
}

/// Compares the ledger's movement with what the terminals were told.
#[must_use]
pub fn compare(
    before: &Snapshot,
    after: &Snapshot,
    money: &Money,
    verify: (bool, Vec<String>),
) -> Check {
    let mut check = Check { merchants_checked: before.merchants.len(), ..Check::default() };
    let told = |map: &HashMap<u32, i64>, m: u32| map.get(&m).copied().unwrap_or(0);
    for (merchant, was) in &before.merchants {
        let now = after.merchants.get(merchant).copied().unwrap_or(*was);
        let moved = now - was;
        let expected = told(&money.purchases, *merchant)
            - told(&money.refunds, *merchant)
            - told(&money.reversals, *merchant);
        let unknown = told(&money.unknown, *merchant);
        check.told_net_sales_fen += expected;
        check.ledger_net_sales_fen += moved;
        if (moved - expected).abs() > unknown {
            check.mismatches.insert(*merchant, moved - expected);
        }
    }
    check.unknown_fen = money.unknown.values().sum::<i64>() + money.unknown_top_ups_fen;
    check.told_card_pool_move_fen = money.top_ups_fen - check.told_net_sales_fen;
    check.ledger_card_pool_move_fen = after.card_pool_fen - before.card_pool_fen;
    let pool_ok = (check.ledger_card_pool_move_fen - check.told_card_pool_move_fen).abs()
        <= check.unknown_fen;
    (check.verify_clean, check.verify_problems) = verify;
    check.passed = check.mismatches.is_empty() && pool_ok && check.verify_clean;
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_to_the_fen() {
        assert_eq!(fen("12.34").ok(), Some(1234));
        assert_eq!(fen("-0.05").ok(), Some(-5));
        assert!(fen("12.3").is_err());
        assert!(fen("abc").is_err());
    }

    #[test]
    fn a_fen_out_of_place_fails_the_check() {
        let before =
            Snapshot { merchants: HashMap::from([(1, 1_000), (2, 0)]), card_pool_fen: 10_000 };
        let money =
            Money { purchases: HashMap::from([(1, 500)]), top_ups_fen: 200, ..Money::default() };
        let good =
            Snapshot { merchants: HashMap::from([(1, 1_500), (2, 0)]), card_pool_fen: 9_700 };
        assert!(compare(&before, &good, &money, (true, Vec::new())).passed);
        let off = Snapshot { merchants: HashMap::from([(1, 1_501), (2, 0)]), card_pool_fen: 9_699 };
        let check = compare(&before, &off, &money, (true, Vec::new()));
        assert!(!check.passed);
        assert_eq!(check.mismatches.get(&1), Some(&1));
        assert!(!compare(&before, &good, &money, (false, vec!["x".into()])).passed);
    }
}
