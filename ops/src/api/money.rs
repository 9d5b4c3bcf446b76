//! Money and dates at the API's edge: yuan as decimal strings ("12.30"), dates as
//! "2026-09-01". Inside, money is an integer count of fen and a date is `yyyymmdd`.
//!
//! Amounts are strings, not JSON numbers, so no client ever routes a balance through
//! a binary float; an amount with more than two decimals is refused, never rounded.

use std::str::FromStr;

use onecard_engine::BusinessDate;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Deserializer};

/// Fen as yuan with two decimals: `1234` → `"12.34"`, `-5` → `"-0.05"`.
#[must_use]
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let magnitude = fen.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}

/// Parses yuan (`"12.3"`, `"12.30"`, `"0.05"`) into fen.
///
/// # Errors
/// A message if the text is not a decimal, has more than two decimals, or does not fit.
pub fn parse_yuan(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1;
    if !plain {
        return Err(format!("{text:?} is not an amount in yuan such as \"12.50\""));
    }
    let value =
        Decimal::from_str(trimmed).map_err(|_| format!("{text:?} is not an amount in yuan"))?;
    if value.scale() > 2 && value.normalize().scale() > 2 {
        return Err(format!("{text:?} has more than two decimals; amounts are in yuan to the fen"));
    }
    // Checked: a decimal of 27 or more digits overflows when scaled to fen.
    value
        .checked_mul(Decimal::ONE_HUNDRED)
        .and_then(|fen| fen.to_i64())
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// An amount a request gives in yuan, held as fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuan(pub i64);

impl<'de> Deserialize<'de> for Yuan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_yuan(&text).map(Self).map_err(serde::de::Error::custom)
    }
}

/// A date as `"2026-09-01"`.
#[must_use]
pub fn date(yyyymmdd: u32) -> String {
    BusinessDate::from_yyyymmdd(yyyymmdd).map_or_else(|| yyyymmdd.to_string(), |d| d.to_string())
}

/// A date a request gives as `"2026-09-01"`, held as `yyyymmdd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub u32);

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_date(&text).map(Self).map_err(serde::de::Error::custom)
    }
}

/// Parses `YYYY-MM-DD` into a business date.
///
/// # Errors
/// A message if it is not a calendar date in that form.
pub fn parse_business_date(text: &str) -> Result<BusinessDate, String> {
    parse_date(text).map(|date| BusinessDate::from_yyyymmdd(date).expect("parse_date checks"))
}

/// Parses `YYYY-MM-DD` into `yyyymmdd`.
///
/// # Errors
/// A message if it is not a calendar date in that form.
pub fn parse_date(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a date as YYYY-MM-DD");
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else { return Err(bad()) };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err(bad());
    }
    let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
    let packed = number(year)? * 10_000 + number(month)? * 100 + number(day)?;
    BusinessDate::from_yyyymmdd(packed).map(BusinessDate::to_yyyymmdd).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_round_trips_to_the_fen() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(-1234), "-12.34");
        assert_eq!(yuan(i64::MIN), "-92233720368547758.08");
        for fen in [0, 1, 99, 100, 12_345, -7] {
            assert_eq!(parse_yuan(&yuan(fen)), Ok(fen));
        }
        assert_eq!(parse_yuan("12.3"), Ok(1230));
        assert_eq!(parse_yuan("12"), Ok(1200));
        assert_eq!(parse_yuan("12.300"), Ok(1230));
    }

    #[test]
    fn fractions_of_a_fen_and_garbage_are_refused() {
        assert!(parse_yuan("12.345").is_err());
        assert!(parse_yuan("0.001").is_err());
        assert!(parse_yuan("abc").is_err());
        assert!(parse_yuan("").is_err());
        assert!(parse_yuan("1e3").is_err());
        assert!(parse_yuan("99999999999999999999999").is_err());
    }

    #[test]
    fn an_amount_too_large_for_a_decimal_in_fen_is_refused_not_a_panic() {
        // Found by the csv_imports fuzz target: 28 digits overflowed the scaling.
        let huge = "2222222222222222222222211000.00";
        assert_eq!(parse_yuan(huge), Err(format!("{huge:?} is out of range")));
        assert!(parse_yuan("-79228162514264337593543950335").is_err());
        assert_eq!(parse_yuan("92233720368547758.07"), Ok(i64::MAX));
        assert!(parse_yuan("92233720368547758.08").is_err());
    }

    #[test]
    fn dates_are_calendar_dates() {
        assert_eq!(parse_date("2026-09-01"), Ok(20_260_901));
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("2026-9-1").is_err());
        assert!(parse_date("20260901").is_err());
        assert_eq!(date(20_260_901), "2026-09-01");
    }
}
