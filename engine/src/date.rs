//! Business dates (营业日) and the clock.
//!
//! A business date is held as `yyyymmdd` in a `u32`, the form the wire and the
//! settlement files use. The day turns at a configured local time in a configured
//! fixed offset from UTC (China has no daylight saving). A transfer counts for the
//! date its batch commits on: the later of the ledger's open date and the date the
//! clock says, so the millisecond after the turn already belongs to the new day. The
//! guarded cutover that closes the old date is `Ledger::cutover`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use onecard_protocol::MealPeriod;

/// A business date, `yyyymmdd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusinessDate(u32);

impl BusinessDate {
    /// The date `yyyymmdd`, if it is a real calendar date.
    #[must_use]
    pub fn from_yyyymmdd(value: u32) -> Option<Self> {
        let (year, month, day) = (value / 10_000, value / 100 % 100, value % 100);
        let valid = (1970..=9999).contains(&year)
            && (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day);
        valid.then_some(Self(value))
    }

    /// The date as `yyyymmdd`.
    #[must_use]
    pub const fn to_yyyymmdd(self) -> u32 {
        self.0
    }

    /// The civil date `days` after 1970-01-01.
    #[must_use]
    pub fn from_unix_days(days: i64) -> Self {
        // Days to civil date, after Howard Hinnant's `civil_from_days`.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let packed = year.clamp(1970, 9999) * 10_000 + month * 100 + day;
        Self(u32::try_from(packed).unwrap_or(19_700_101))
    }

    /// Days since 1970-01-01.
    #[must_use]
    pub fn to_unix_days(self) -> i64 {
        // Civil date to days, after Howard Hinnant's `days_from_civil`.
        let (year, month, day) =
            (i64::from(self.0 / 10_000), i64::from(self.0 / 100 % 100), i64::from(self.0 % 100));
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let mp = if month > 2 { month - 3 } else { month + 9 };
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The day after.
    #[must_use]
    pub fn next(self) -> Self {
        Self::from_unix_days(self.to_unix_days() + 1)
    }

    /// The day before.
    #[must_use]
    pub fn previous(self) -> Self {
        Self::from_unix_days(self.to_unix_days() - 1)
    }

    /// The business date at `unix_ms`, for a day that turns `cutover_minutes` after
    /// local midnight in a zone `utc_offset_minutes` east of UTC.
    #[must_use]
    pub fn at(unix_ms: u64, utc_offset_minutes: i32, cutover_minutes: u32) -> Self {
        let local_minutes = i64::try_from(unix_ms / 60_000).unwrap_or(i64::MAX / 2)
            + i64::from(utc_offset_minutes)
            - i64::from(cutover_minutes);
        Self::from_unix_days(local_minutes.div_euclid(24 * 60))
    }
}

impl std::fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.0 / 10_000, self.0 / 100 % 100, self.0 % 100)
    }
}

const fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The clock the ledger stamps commits and business dates with: the system's, or in
/// tests a hand-set one, so a test can commit at 23:59:59.999 and then at midnight.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that reads what it was last set to.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A hand-set clock reading `unix_ms`.
    #[must_use]
    pub fn manual(unix_ms: u64) -> Self {
        Self::Manual(Arc::new(AtomicU64::new(unix_ms)))
    }

    /// Milliseconds since the Unix epoch, by this clock.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::System => now_ms(),
            Self::Manual(at) => at.load(Ordering::Acquire),
        }
    }

    /// Sets a hand-set clock; the system clock cannot be set and ignores it.
    pub fn set_ms(&self, unix_ms: u64) {
        if let Self::Manual(at) = self {
            at.store(unix_ms, Ordering::Release);
        }
    }
}

/// Minutes in a day.
pub(crate) const DAY_MINUTES: u16 = 24 * 60;

/// Where each meal period begins, in minutes after local midnight. Night runs from
/// its start over midnight to breakfast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MealHours {
    /// 早餐 begins.
    pub breakfast_from: u16,
    /// 午餐 begins.
    pub lunch_from: u16,
    /// 晚餐 begins.
    pub dinner_from: u16,
    /// 夜宵 begins.
    pub night_from: u16,
}

impl Default for MealHours {
    /// 05:00, 10:30, 16:00, 20:00.
    fn default() -> Self {
        Self {
            breakfast_from: 5 * 60,
            lunch_from: 10 * 60 + 30,
            dinner_from: 16 * 60,
            night_from: 20 * 60,
        }
    }
}

impl MealHours {
    /// Hours from `HH:MM,HH:MM,HH:MM,HH:MM` (breakfast, lunch, dinner, night), each
    /// after the one before.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let minutes: Vec<u16> = text
            .split(',')
            .map(|part| {
                let (hours, minutes) = part.trim().split_once(':').ok_or(())?;
                let hours: u16 = hours.parse().map_err(drop)?;
                let minutes: u16 = minutes.parse().map_err(drop)?;
                if hours < 24 && minutes < 60 { Ok(hours * 60 + minutes) } else { Err(()) }
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| format!("meal hours {text:?} are not four HH:MM times"))?;
        let [breakfast_from, lunch_from, dinner_from, night_from] = minutes[..] else {
            return Err(format!("meal hours {text:?} are not four HH:MM times"));
        };
        if !(breakfast_from < lunch_from && lunch_from < dinner_from && dinner_from < night_from) {
            return Err(format!("meal hours {text:?} are not in order through the day"));
        }
        Ok(Self { breakfast_from, lunch_from, dinner_from, night_from })
    }

    /// The meal period of `minute` after local midnight.
    #[must_use]
    pub fn meal_at(&self, minute: u16) -> MealPeriod {
        let minute = minute % DAY_MINUTES;
        if minute < self.breakfast_from || minute >= self.night_from {
            MealPeriod::Night
        } else if minute < self.lunch_from {
            MealPeriod::Breakfast
        } else if minute < self.dinner_from {
            MealPeriod::Lunch
        } else {
            MealPeriod::Dinner
        }
    }
}

impl std::fmt::Display for MealHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(
            f,
            "{},{},{},{}",
            hm(self.breakfast_from),
            hm(self.lunch_from),
            hm(self.dinner_from),
            hm(self.night_from)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_from_days() {
        assert_eq!(BusinessDate::from_unix_days(0).to_yyyymmdd(), 19_700_101);
        assert_eq!(BusinessDate::from_unix_days(11_016).to_yyyymmdd(), 20_000_229);
        assert_eq!(BusinessDate::from_unix_days(20_699).to_yyyymmdd(), 20_260_903);
    }

    #[test]
    fn the_day_turns_at_the_cutover_in_the_local_zone() {
        // 2026-09-01 15:59:59 UTC is 23:59:59 in Beijing; a second later it is the 2nd.
        let before = 1_788_278_399_000;
        assert_eq!(BusinessDate::at(before, 480, 0).to_yyyymmdd(), 20_260_901);
        assert_eq!(BusinessDate::at(before + 1000, 480, 0).to_yyyymmdd(), 20_260_902);
        // With a 02:00 cutover the night's purchases still count for the 1st.
        assert_eq!(BusinessDate::at(before + 1000, 480, 120).to_yyyymmdd(), 20_260_901);
    }

    #[test]
    fn days_round_trip_and_step() {
        for days in [0, 59, 60, 365, 11_016, 20_699, 2_932_896] {
            assert_eq!(BusinessDate::from_unix_days(days).to_unix_days(), days);
        }
        let leap = BusinessDate::from_yyyymmdd(20_240_228).expect("date");
        assert_eq!(leap.next().to_yyyymmdd(), 20_240_229);
        assert_eq!(leap.next().next().to_yyyymmdd(), 20_240_301);
        let new_year = BusinessDate::from_yyyymmdd(20_270_101).expect("date");
        assert_eq!(new_year.previous().to_yyyymmdd(), 20_261_231);
    }

    #[test]
    fn only_calendar_dates_are_dates() {
        assert!(BusinessDate::from_yyyymmdd(20_240_229).is_some());
        assert!(BusinessDate::from_yyyymmdd(20_250_229).is_none());
        assert!(BusinessDate::from_yyyymmdd(20_261_301).is_none());
        assert!(BusinessDate::from_yyyymmdd(0).is_none());
        assert_eq!(
            BusinessDate::from_yyyymmdd(20_260_901).map(|d| d.to_string()),
            Some("2026-09-01".to_owned())
        );
    }
}
