//! Scenarios: what load to offer, as TOML files, with four built in.
//!
//! A scenario names its mode (open loop at a rate curve, or closed loop as fast as the
//! server answers), how long it runs, which terminals and cards it uses, how skewed
//! the merchants are, the request mix, the amounts, and what fraction of requests are
//! deliberately bad. `loadtest/scenarios/*.toml` are the built-ins, documented there.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Requests are sent on a schedule whatever the answers do; latency is measured
    /// from the scheduled time.
    Open,
    /// Each terminal keeps a fixed number of requests in flight, back to back.
    Closed,
}

/// Relative weights of the request kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Purchases (消费).
    pub purchase: u32,
    /// Top-ups at the card centre's terminals (充值).
    pub top_up: u32,
    /// Balance inquiries.
    pub inquiry: u32,
    /// Partial refunds of an earlier purchase at the same merchant.
    pub refund: u32,
    /// Reversals of an earlier purchase.
    pub reversal: u32,
}

impl Mix {
    /// The sum of the weights.
    #[must_use]
    pub const fn total(&self) -> u32 {
        self.purchase + self.top_up + self.inquiry + self.refund + self.reversal
    }
}

/// A load to offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name, in reports.
    pub name: String,
    /// Open or closed loop.
    pub mode: Mode,
    /// How long requests are sent.
    pub duration_secs: f64,
    /// Open loop: `[seconds, requests per second]` points, straight lines between
    /// them; the rate after the last point is the last point's.
    #[serde(default)]
    pub rate: Vec<[f64; 2]>,
    /// Closed loop: requests each terminal keeps in flight (at most the protocol's
    /// pipeline depth, 64).
    #[serde(default = "default_in_flight")]
    pub in_flight_per_terminal: u32,
    /// Merchant terminals to sign on (canteens, shops, laundries, utilities).
    pub terminals: usize,
    /// Card-centre terminals to sign on for top-ups.
    pub top_up_terminals: usize,
    /// Cards to use, from the first; 0 for all the campus has.
    pub cards: u64,
    /// The fraction of merchants that are hot.
    pub hot_merchant_fraction: f64,
    /// The share of purchases the hot merchants take.
    pub hot_share: f64,
    /// Smallest purchase, fen.
    pub amount_fen_min: u32,
    /// Largest purchase, fen (amounts cluster toward the small end).
    pub amount_fen_max: u32,
    /// Smallest top-up, fen.
    pub top_up_fen_min: u32,
    /// Largest top-up, fen.
    pub top_up_fen_max: u32,
    /// The fraction of requests that are deliberately bad, split evenly among a
    /// purchase above a nearly empty card's balance, a purchase with a lost card, a
    /// frame with a forged MAC, and a retry of an answered purchase.
    pub bad_fraction: f64,
    /// Seeds the generator, so a run can be repeated.
    pub seed: u64,
    /// The request mix.
    pub mix: Mix,
}

const fn default_in_flight() -> u32 {
    8
}

/// The built-in scenarios, by name.
pub const BUILT_IN: [(&str, &str); 4] = [
    ("lunch-peak", include_str!("../scenarios/lunch-peak.toml")),
    ("steady", include_str!("../scenarios/steady.toml")),
    ("top-up-rush", include_str!("../scenarios/top-up-rush.toml")),
    ("max", include_str!("../scenarios/max.toml")),
];

impl Scenario {
    /// A built-in scenario by name, or a TOML file by path.
    ///
    /// # Errors
    /// If there is no such built-in or file, or the file is not a valid scenario.
    pub fn load(name_or_path: &str) -> anyhow::Result<Self> {
        let text = match BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
            Some((_, text)) => (*text).to_owned(),
            None => std::fs::read_to_string(Path::new(name_or_path)).with_context(|| {
                let names: Vec<&str> = BUILT_IN.iter().map(|(name, _)| *name).collect();
                format!(
                    "{name_or_path:?} is neither a built-in scenario ({}) nor a readable file",
                    names.join(", ")
                )
            })?,
        };
        let scenario: Self =
            toml::from_str(&text).with_context(|| format!("parsing scenario {name_or_path}"))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks that the numbers make sense together.
    ///
    /// # Errors
    /// Which one does not.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.duration_secs > 0.0 && self.duration_secs <= 86_400.0,
            "duration_secs must be in (0, 86400]"
        );
        anyhow::ensure!(self.mix.total() > 0, "the mix has no weight");
        anyhow::ensure!(
            self.terminals > 0
                || self.mix.purchase + self.mix.inquiry + self.mix.refund + self.mix.reversal == 0,
            "purchases need terminals"
        );
        anyhow::ensure!(
            self.top_up_terminals > 0 || self.mix.top_up == 0,
            "top-ups need top_up_terminals"
        );
        anyhow::ensure!(
            self.amount_fen_min >= 1 && self.amount_fen_min <= self.amount_fen_max,
            "purchase amounts: 1 <= min <= max"
        );
        anyhow::ensure!(
            self.top_up_fen_min >= 1 && self.top_up_fen_min <= self.top_up_fen_max,
            "top-up amounts: 1 <= min <= max"
        );
        anyhow::ensure!((0.0..=0.5).contains(&self.bad_fraction), "bad_fraction must be 0 to 0.5");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.hot_merchant_fraction),
            "hot_merchant_fraction must be 0 to 1"
        );
        anyhow::ensure!((0.0..=1.0).contains(&self.hot_share), "hot_share must be 0 to 1");
        match self.mode {
            Mode::Open => {
                anyhow::ensure!(!self.rate.is_empty(), "an open-loop scenario needs a rate curve");
                anyhow::ensure!(
                    self.rate.iter().all(|[t, r]| *t >= 0.0 && *r >= 0.0 && *r <= 1_000_000.0),
                    "rate points are [seconds >= 0, 0 <= requests per second <= 1,000,000]"
                );
                anyhow::ensure!(
                    self.rate.windows(2).all(|w| w[0][0] < w[1][0]),
                    "rate points go forward in time"
                );
            }
            Mode::Closed => {
                anyhow::ensure!(
                    (1..=64).contains(&self.in_flight_per_terminal),
                    "in_flight_per_terminal must be 1 to 64"
                );
            }
        }
        Ok(())
    }

    /// The offered rate at `t` seconds, requests per second.
    #[must_use]
    pub fn rate_at(&self, t: f64) -> f64 {
        let points = &self.rate;
        match points.iter().position(|[at, _]| *at > t) {
            None => points.last().map_or(0.0, |[_, r]| *r),
            Some(0) => points[0][1],
            Some(i) => {
                let ([t0, r0], [t1, r1]) = (points[i - 1], points[i]);
                r0 + (r1 - r0) * (t - t0) / (t1 - t0)
            }
        }
    }

    /// Requests the rate curve offers over the whole run.
    #[must_use]
    pub fn offered_requests(&self) -> f64 {
        let steps = 1_000;
        let dt = self.duration_secs / f64::from(steps);
        (0..steps).map(|i| self.rate_at((f64::from(i) + 0.5) * dt) * dt).sum()
    }

    /// Scales the rate curve by `factor` and sets the duration, squeezing the curve's
    /// times into it.
    pub fn reshape(&mut self, duration_secs: Option<f64>, rate_scale: Option<f64>) {
        if let Some(duration) = duration_secs {
            let stretch = duration / self.duration_secs;
            for point in &mut self.rate {
                point[0] *= stretch;
            }
            self.duration_secs = duration;
        }
        if let Some(scale) = rate_scale {
            for point in &mut self.rate {
                point[1] *= scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses_and_checks() {
        for (name, _) in BUILT_IN {
            let scenario = Scenario::load(name).expect(name);
            assert_eq!(scenario.name, name);
        }
    }

    #[test]
    fn the_lunch_peak_bursts_to_five_times_its_usual_rate() {
        let lunch = Scenario::load("lunch-peak").expect("built in");
        assert!((lunch.rate_at(30.0) - 500.0).abs() < 1e-9);
        assert!((lunch.rate_at(45.0) - 2_500.0).abs() < 1e-9);
        assert!((lunch.rate_at(39.0) - 1_500.0).abs() < 1e-9, "halfway up the ramp");
        assert!((lunch.rate_at(1_000.0) - 150.0).abs() < 1e-9, "after the last point");
        let offered = lunch.offered_requests();
        assert!((60_000.0..80_000.0).contains(&offered), "{offered}");
    }

    #[test]
    fn reshaping_squeezes_time_and_scales_the_rate() {
        let mut lunch = Scenario::load("lunch-peak").expect("built in");
        lunch.reshape(Some(9.0), Some(0.1));
        assert!((lunch.rate_at(4.5) - 250.0).abs() < 1e-9);
        assert!((lunch.duration_secs - 9.0).abs() < 1e-9);
    }

    #[test]
    fn nonsense_is_refused_by_name() {
        let bad = |text: &str| {
            toml::from_str::<Scenario>(text)
                .map_err(|e| e.to_string())
                .and_then(|s: Scenario| s.check().map_err(|e| e.to_string()))
        };
        let base = include_str!("../scenarios/steady.toml");
        assert!(bad(&base.replace("bad_fraction = 0.01", "bad_fraction = 0.9")).is_err());
        assert!(
            bad(&base.replace("rate = [[0, 500], [60, 500]]", "rate = [[10, 500], [5, 500]]"))
                .is_err()
        );
        assert!(bad(&format!("{base}\nsurprise = 1")).is_err());
        assert!(Scenario::load("no-such-scenario").is_err());
    }
}
