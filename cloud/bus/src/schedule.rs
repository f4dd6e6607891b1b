//! Schedule expressions, as EventBridge accepts them: `rate(value unit)` and the six-field
//! `cron(minutes hours day-of-month month day-of-week year)`. Pure: the caller passes the time.
//!
//! # `rate`
//!
//! `rate(1 minute)`, `rate(5 minutes)`, `rate(1 hour)`, `rate(2 hours)`, `rate(1 day)`,
//! `rate(7 days)`: a positive integer and a unit, singular exactly when the value is 1
//! (`rate(1 minutes)` and `rate(2 minute)` are refused). A rate counts from the rule's creation
//! (the *anchor*): it fires at `anchor + k × period`, `k ≥ 1`.
//!
//! # `cron`
//!
//! | field | values | wildcards |
//! | --- | --- | --- |
//! | minutes | 0–59 | `, - * /` |
//! | hours | 0–23 | `, - * /` |
//! | day of month | 1–31 | `, - * ? / L W` |
//! | month | 1–12 or `JAN`–`DEC` | `, - * /` |
//! | day of week | 1–7 or `SUN`–`SAT` (1 = Sunday) | `, - * ? L #` |
//! | year | 1970–2199 | `, - * /` |
//!
//! Exactly one of day-of-month and day-of-week is `?`. A range `a-b` with `a > b` wraps
//! (`FRI-MON`, `22-2`). `L` in day-of-month is the month's last day, `LW` its last weekday, `15W`
//! the weekday nearest the 15th within the month; `L` in day-of-week is Saturday, `6L` the last
//! Friday of the month, `SAT#3` the third Saturday. `L`, `W` and `#` forms stand alone in their
//! field (no lists). Names are case-insensitive. Times are UTC with a one-minute resolution:
//! there is no daylight-saving time.
//!
//! Every refused expression gets AWS's message, `Parameter ScheduleExpression is not valid.`

use time::{Month, OffsetDateTime};

use crate::error::{BusError, Result};

/// Longest expression accepted (EventBridge: 256).
pub const MAX_EXPRESSION_LEN: usize = 256;
/// First year a cron expression may name.
pub const MIN_YEAR: i32 = 1970;
/// Last year a cron expression may name; schedules end with it.
pub const MAX_YEAR: i32 = 2199;

const MINUTE_MS: i64 = 60_000;
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn invalid() -> BusError {
    BusError::Validation("Parameter ScheduleExpression is not valid.".to_string())
}

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Period in milliseconds.
    Rate(i64),
    Cron(Box<Cron>),
}

/// A set of small integers (bit `n` = value `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bits(u64);

impl Bits {
    fn has(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }
    fn set(&mut self, n: u32) {
        self.0 |= 1 << n;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DaySpec {
    /// `?`: the other day field decides.
    Any,
    /// Day-of-month numbers (1–31) or day-of-week numbers (1–7).
    Set(Bits),
    /// Day of month `L`.
    LastDay,
    /// Day of month `LW`.
    LastWeekday,
    /// Day of month `nW`.
    NearestWeekday(u32),
    /// Day of week `dL`: the last such weekday of the month.
    LastOf(u32),
    /// Day of week `d#n`: the n-th such weekday of the month.
    Nth(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    minutes: Bits,
    hours: Bits,
    dom: DaySpec,
    months: Bits,
    dow: DaySpec,
    /// Bit `y - 1970` for each year (230 years).
    years: [u64; 4],
}

impl Schedule {
    /// Parses a `rate(...)` or `cron(...)` expression.
    pub fn parse(expr: &str) -> Result<Schedule> {
        if expr.len() > MAX_EXPRESSION_LEN {
            return Err(invalid());
        }
        let kind = if let Some(inner) = expr.strip_prefix("rate(").and_then(|s| s.strip_suffix(')'))
        {
            Kind::Rate(parse_rate(inner)?)
        } else if let Some(inner) = expr.strip_prefix("cron(").and_then(|s| s.strip_suffix(')')) {
            Kind::Cron(Box::new(parse_cron(inner)?))
        } else {
            return Err(invalid());
        };
        Ok(Schedule {
            text: expr.to_string(),
            kind,
        })
    }

    /// The first fire time strictly after `after_ms` (Unix ms, UTC); `anchor_ms` is when the
    /// rule was created (rates count from it; cron ignores it). `None`: the schedule never fires
    /// again (its years are over) or the time is out of range.
    pub fn next_after(&self, anchor_ms: i64, after_ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Rate(period) => {
                let first = anchor_ms.checked_add(*period)?;
                if after_ms < first {
                    return Some(first);
                }
                let k = (after_ms - anchor_ms) / period + 1;
                anchor_ms.checked_add(k.checked_mul(*period)?)
            }
            Kind::Cron(c) => c.next_after(after_ms),
        }
    }

    /// The period of a `rate(...)` schedule, in milliseconds.
    pub fn rate_ms(&self) -> Option<i64> {
        match self.kind {
            Kind::Rate(p) => Some(p),
            Kind::Cron(_) => None,
        }
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_rate(inner: &str) -> Result<i64> {
    let mut parts = inner.split(' ');
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: i64 = value.parse().map_err(|_| invalid())?;
    if n < 1 {
        return Err(invalid());
    }
    let (singular, unit_ms) = match unit {
        "minute" => (true, MINUTE_MS),
        "minutes" => (false, MINUTE_MS),
        "hour" => (true, 60 * MINUTE_MS),
        "hours" => (false, 60 * MINUTE_MS),
        "day" => (true, 24 * 60 * MINUTE_MS),
        "days" => (false, 24 * 60 * MINUTE_MS),
        _ => return Err(invalid()),
    };
    if singular != (n == 1) {
        return Err(invalid());
    }
    n.checked_mul(unit_ms).ok_or_else(invalid)
}

fn parse_cron(inner: &str) -> Result<Cron> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let [min, hour, dom, month, dow, year] = fields[..] else {
        return Err(invalid());
    };
    let minutes = parse_list(min, 0, 59, &[])?;
    let hours = parse_list(hour, 0, 23, &[])?;
    let months = parse_list(month, 1, 12, &MONTHS)?;
    let dom = parse_dom(dom)?;
    let dow = parse_dow(dow)?;
    // Exactly one of the day fields is `?`.
    if (dom == DaySpec::Any) == (dow == DaySpec::Any) {
        return Err(invalid());
    }
    let mut years = [0u64; 4];
    for item in year.split(',') {
        for y in parse_item(item, MIN_YEAR as u32, MAX_YEAR as u32, &[])? {
            let i = (y - MIN_YEAR as u32) as usize;
            years[i / 64] |= 1 << (i % 64);
        }
    }
    Ok(Cron {
        minutes,
        hours,
        dom,
        months,
        dow,
        years,
    })
}

/// A comma-separated list of items of a field whose values are `min..=max` (at most 63).
fn parse_list(field: &str, min: u32, max: u32, names: &[&str]) -> Result<Bits> {
    let mut bits = Bits::default();
    for item in field.split(',') {
        for v in parse_item(item, min, max, names)? {
            bits.set(v);
        }
    }
    Ok(bits)
}

fn parse_value(s: &str, min: u32, max: u32, names: &[&str]) -> Result<u32> {
    let v = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u32>().map_err(|_| invalid())?
    } else {
        let i = names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .ok_or_else(invalid)?;
        min + i as u32
    };
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid())
    }
}

/// One item: `*`, `v`, `a-b`, each optionally `/step`; the values it stands for.
fn parse_item(item: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let s: u32 = s.parse().map_err(|_| invalid())?;
            // Quartz's bounds: an increment is 1 to the field's largest value.
            if s == 0 || s > max {
                return Err(invalid());
            }
            (r, Some(s))
        }
        None => (item, None),
    };
    let (start, end) = if range == "*" {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        (
            parse_value(a, min, max, names)?,
            parse_value(b, min, max, names)?,
        )
    } else {
        let v = parse_value(range, min, max, names)?;
        // `a/n` runs from a to the end of the field.
        (v, if step.is_some() { max } else { v })
    };
    let step = step.unwrap_or(1);
    let span = if end >= start {
        end - start
    } else {
        // wraps
        (max - start) + (end - min) + 1
    };
    let width = max - min + 1;
    Ok((0..=span)
        .step_by(step as usize)
        .map(|off| min + (start - min + off) % width)
        .collect())
}

fn parse_dom(field: &str) -> Result<DaySpec> {
    match field {
        "?" => return Ok(DaySpec::Any),
        "L" => return Ok(DaySpec::LastDay),
        "LW" => return Ok(DaySpec::LastWeekday),
        _ => {}
    }
    if let Some(n) = field.strip_suffix('W') {
        return Ok(DaySpec::NearestWeekday(parse_value(n, 1, 31, &[])?));
    }
    Ok(DaySpec::Set(parse_list(field, 1, 31, &[])?))
}

fn parse_dow(field: &str) -> Result<DaySpec> {
    match field {
        "?" => return Ok(DaySpec::Any),
        "L" => {
            let mut b = Bits::default();
            b.set(7);
            return Ok(DaySpec::Set(b));
        }
        _ => {}
    }
    if let Some((d, n)) = field.split_once('#') {
        let d = parse_value(d, 1, 7, &DAYS)?;
        let n = parse_value(n, 1, 5, &[])?;
        return Ok(DaySpec::Nth(d, n));
    }
    if let Some(d) = field.strip_suffix('L') {
        return Ok(DaySpec::LastOf(parse_value(d, 1, 7, &DAYS)?));
    }
    Ok(DaySpec::Set(parse_list(field, 1, 7, &DAYS)?))
}

/// 1 = Sunday .. 7 = Saturday of `day` (1-based) in a month whose 1st is `first_dow`.
fn weekday_of(first_dow: u32, day: u32) -> u32 {
    (first_dow - 1 + day - 1) % 7 + 1
}

impl Cron {
    fn has_year(&self, y: i32) -> bool {
        if !(MIN_YEAR..=MAX_YEAR).contains(&y) {
            return false;
        }
        let i = (y - MIN_YEAR) as usize;
        self.years[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether `day` of a month of `len` days whose 1st is weekday `first_dow` matches.
    fn day_matches(&self, day: u32, len: u32, first_dow: u32) -> bool {
        let spec = if self.dom == DaySpec::Any {
            &self.dow
        } else {
            &self.dom
        };
        let is_dow = self.dom == DaySpec::Any;
        let wd = weekday_of(first_dow, day);
        match spec {
            DaySpec::Any => true,
            DaySpec::Set(bits) => bits.has(if is_dow { wd } else { day }),
            DaySpec::LastDay => day == len,
            DaySpec::LastWeekday => {
                let last_wd = weekday_of(first_dow, len);
                let target = match last_wd {
                    1 => len - 2, // Sunday -> Friday
                    7 => len - 1, // Saturday -> Friday
                    _ => len,
                };
                day == target
            }
            DaySpec::NearestWeekday(n) => {
                let n = *n;
                if n > len {
                    return false;
                }
                let target = match weekday_of(first_dow, n) {
                    7 if n == 1 => 3,       // Saturday the 1st -> Monday the 3rd
                    7 => n - 1,             // Saturday -> Friday
                    1 if n == len => n - 2, // Sunday the last -> Friday
                    1 => n + 1,             // Sunday -> Monday
                    _ => n,
                };
                day == target
            }
            DaySpec::LastOf(d) => wd == *d && day + 7 > len,
            DaySpec::Nth(d, n) => wd == *d && (day - 1) / 7 + 1 == *n,
        }
    }

    fn next_after(&self, after_ms: i64) -> Option<i64> {
        // The next whole minute strictly after `after_ms`.
        let start_min = after_ms.div_euclid(MINUTE_MS).checked_add(1)?;
        let start = OffsetDateTime::from_unix_timestamp(start_min.checked_mul(60)?).ok()?;
        let (mut year, mut month, mut day) =
            (start.year(), start.month() as u32, start.day() as u32);
        // The earliest (hour, minute) allowed on the current day; reset when the day moves on.
        let mut from = (start.hour() as u32, start.minute() as u32);
        if year < MIN_YEAR {
            (year, month, day, from) = (MIN_YEAR, 1, 1, (0, 0));
        }
        while year <= MAX_YEAR {
            if !self.has_year(year) {
                (year, month, day, from) = (year + 1, 1, 1, (0, 0));
                continue;
            }
            if !self.months.has(month) {
                if month == 12 {
                    (year, month) = (year + 1, 1);
                } else {
                    month += 1;
                }
                (day, from) = (1, (0, 0));
                continue;
            }
            let m = Month::try_from(month as u8).ok()?;
            let len = u32::from(m.length(year));
            let first = time::Date::from_calendar_date(year, m, 1).ok()?;
            let first_dow = u32::from(first.weekday().number_from_sunday());
            while day <= len {
                if self.day_matches(day, len, first_dow) {
                    if let Some((h, mi)) = self.first_time_from(from) {
                        let date = time::Date::from_calendar_date(year, m, day as u8).ok()?;
                        let secs = date.midnight().assume_utc().unix_timestamp()
                            + i64::from(h) * 3600
                            + i64::from(mi) * 60;
                        return secs.checked_mul(1000);
                    }
                }
                day += 1;
                from = (0, 0);
            }
            if month == 12 {
                (year, month) = (year + 1, 1);
            } else {
                month += 1;
            }
            (day, from) = (1, (0, 0));
        }
        None
    }

    /// The first (hour, minute) of the schedule at or after `from` in a day.
    fn first_time_from(&self, from: (u32, u32)) -> Option<(u32, u32)> {
        for h in from.0..24 {
            if !self.hours.has(h) {
                continue;
            }
            let m0 = if h == from.0 { from.1 } else { 0 };
            if let Some(m) = (m0..60).find(|m| self.minutes.has(*m)) {
                return Some((h, m));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ms(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn next(expr: &str, after: OffsetDateTime) -> Option<OffsetDateTime> {
        Schedule::parse(expr)
            .unwrap()
            .next_after(0, ms(after))
            .map(|t| OffsetDateTime::from_unix_timestamp(t / 1000).unwrap())
    }

    #[test]
    fn rates() {
        for ok in [
            "rate(1 minute)",
            "rate(5 minutes)",
            "rate(1 hour)",
            "rate(12 hours)",
            "rate(1 day)",
            "rate(30 days)",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "rate(1 minutes)",
            "rate(2 minute)",
            "rate(0 minutes)",
            "rate(-1 minutes)",
            "rate(1.5 hours)",
            "rate(1 week)",
            "rate(5minutes)",
            "rate( 5 minutes)",
            "rate(5 minutes",
            "rate()",
            "rate(99999999999999999999 days)",
            "every 5 minutes",
        ] {
            let e = Schedule::parse(bad).unwrap_err().to_string();
            assert_eq!(
                e, "ValidationException: Parameter ScheduleExpression is not valid.",
                "{bad}"
            );
        }
        let s = Schedule::parse("rate(5 minutes)").unwrap();
        assert_eq!(s.as_str(), "rate(5 minutes)");
        assert_eq!(s.rate_ms(), Some(300_000));
        let anchor = 1_000_123;
        assert_eq!(s.next_after(anchor, 0), Some(anchor + 300_000));
        assert_eq!(s.next_after(anchor, anchor), Some(anchor + 300_000));
        assert_eq!(
            s.next_after(anchor, anchor + 300_000),
            Some(anchor + 600_000)
        );
        assert_eq!(
            s.next_after(anchor, anchor + 300_001),
            Some(anchor + 600_000)
        );
        assert_eq!(s.next_after(i64::MAX - 10, 0), None);
    }

    #[test]
    fn simple_crons() {
        let t = datetime!(2024-03-10 11:59:30 UTC);
        assert_eq!(
            next("cron(0 12 * * ? *)", t),
            Some(datetime!(2024-03-10 12:00 UTC))
        );
        assert_eq!(
            next("cron(0 12 * * ? *)", datetime!(2024-03-10 12:00 UTC)),
            Some(datetime!(2024-03-11 12:00 UTC))
        );
        assert_eq!(
            next("cron(0/15 * * * ? *)", t),
            Some(datetime!(2024-03-10 12:00 UTC))
        );
        assert_eq!(
            next(
                "cron(0/15 * * * ? *)",
                datetime!(2024-03-10 12:00:00.001 UTC)
            ),
            Some(datetime!(2024-03-10 12:15 UTC))
        );
        assert_eq!(
            next("cron(5,35 14 * * ? *)", t),
            Some(datetime!(2024-03-10 14:05 UTC))
        );
        // 2024-03-10 is a Sunday: MON-FRI 18:00 -> Monday.
        assert_eq!(
            next("cron(0 18 ? * MON-FRI *)", t),
            Some(datetime!(2024-03-11 18:00 UTC))
        );
        assert_eq!(
            next(
                "cron(0/30 20-23 ? * MON-FRI *)",
                datetime!(2024-03-15 23:31 UTC)
            ),
            Some(datetime!(2024-03-18 20:00 UTC))
        );
        assert_eq!(
            next("cron(* * * * ? *)", t),
            Some(datetime!(2024-03-10 12:00 UTC))
        );
        // Names are case-insensitive; 1 = Sunday.
        assert_eq!(
            next("cron(0 0 ? * 1 *)", t),
            Some(datetime!(2024-03-17 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 ? * sun *)", t),
            Some(datetime!(2024-03-17 00:00 UTC))
        );
        // Wrapping ranges.
        assert_eq!(
            next("cron(0 22-1 * * ? *)", datetime!(2024-03-10 23:30 UTC)),
            Some(datetime!(2024-03-11 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 12 ? * FRI-MON *)", datetime!(2024-03-12 00:00 UTC)),
            Some(datetime!(2024-03-15 12:00 UTC))
        );
    }

    #[test]
    fn month_ends_and_leap_years() {
        assert_eq!(
            next("cron(0 0 31 * ? *)", datetime!(2024-04-01 00:00 UTC)),
            Some(datetime!(2024-05-31 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 29 2 ? *)", datetime!(2024-03-01 00:00 UTC)),
            Some(datetime!(2028-02-29 00:00 UTC))
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("cron(0 0 29 FEB ? *)", datetime!(2096-03-01 00:00 UTC)),
            Some(datetime!(2104-02-29 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 L * ? *)", datetime!(2024-02-01 00:00 UTC)),
            Some(datetime!(2024-02-29 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 L * ? *)", datetime!(2023-02-01 00:00 UTC)),
            Some(datetime!(2023-02-28 00:00 UTC))
        );
        assert_eq!(
            next("cron(59 23 31 12 ? *)", datetime!(2024-12-31 23:58:59 UTC)),
            Some(datetime!(2024-12-31 23:59 UTC))
        );
        assert_eq!(
            next("cron(0 0 1 1 ? *)", datetime!(2024-12-31 23:59 UTC)),
            Some(datetime!(2025-01-01 00:00 UTC))
        );
    }

    #[test]
    fn l_w_and_hash() {
        // 6L: last Friday. March 2024 ends on Sunday the 31st: last Friday is the 29th.
        assert_eq!(
            next("cron(15 10 ? * 6L *)", datetime!(2024-03-01 00:00 UTC)),
            Some(datetime!(2024-03-29 10:15 UTC))
        );
        // SAT#3: third Saturday. March 2024: 2, 9, 16.
        assert_eq!(
            next("cron(0 2 ? * SAT#3 *)", datetime!(2024-03-01 00:00 UTC)),
            Some(datetime!(2024-03-16 02:00 UTC))
        );
        assert_eq!(
            next("cron(0 2 ? * 7#3 *)", datetime!(2024-03-16 02:00 UTC)),
            Some(datetime!(2024-04-20 02:00 UTC))
        );
        // 5th Monday: not every month has one.
        assert_eq!(
            next("cron(0 0 ? * MON#5 *)", datetime!(2024-02-01 00:00 UTC)),
            Some(datetime!(2024-04-29 00:00 UTC))
        );
        // 15W: 2024-06-15 is a Saturday -> Friday the 14th; 2024-09-15 a Sunday -> Monday 16th.
        assert_eq!(
            next("cron(0 0 15W * ? *)", datetime!(2024-06-01 00:00 UTC)),
            Some(datetime!(2024-06-14 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 15W * ? *)", datetime!(2024-09-01 00:00 UTC)),
            Some(datetime!(2024-09-16 00:00 UTC))
        );
        // 1W never leaves the month: 2024-06-01 is a Saturday -> Monday the 3rd.
        assert_eq!(
            next("cron(0 0 1W * ? *)", datetime!(2024-05-31 00:00 UTC)),
            Some(datetime!(2024-06-03 00:00 UTC))
        );
        // 31W in a 30-day month does not fire; 2024-03-31 is a Sunday -> Friday the 29th.
        assert_eq!(
            next("cron(0 0 31W * ? *)", datetime!(2024-03-01 00:00 UTC)),
            Some(datetime!(2024-03-29 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 31W * ? *)", datetime!(2024-04-01 00:00 UTC)),
            Some(datetime!(2024-05-31 00:00 UTC))
        );
        // LW: last weekday. 2024-08-31 is a Saturday -> Friday the 30th.
        assert_eq!(
            next("cron(0 0 LW * ? *)", datetime!(2024-08-01 00:00 UTC)),
            Some(datetime!(2024-08-30 00:00 UTC))
        );
        // L in day-of-week: Saturday.
        assert_eq!(
            next("cron(0 0 ? * L *)", datetime!(2024-03-10 00:00 UTC)),
            Some(datetime!(2024-03-16 00:00 UTC))
        );
    }

    #[test]
    fn years_end() {
        assert_eq!(
            next(
                "cron(15 10 ? * 6L 2002-2005)",
                datetime!(2024-01-01 00:00 UTC)
            ),
            None
        );
        assert_eq!(
            next(
                "cron(15 10 ? * 6L 2002-2005)",
                datetime!(2005-12-30 10:15 UTC)
            ),
            None
        );
        assert_eq!(
            next(
                "cron(15 10 ? * 6L 2002-2005)",
                datetime!(2005-12-01 00:00 UTC)
            ),
            Some(datetime!(2005-12-30 10:15 UTC))
        );
        assert_eq!(
            next(
                "cron(0/5 5 ? JAN 1-5 2022)",
                datetime!(2021-06-01 00:00 UTC)
            ),
            Some(datetime!(2022-01-02 05:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 1 1 ? *)", datetime!(2199-01-01 00:00 UTC)),
            None
        );
        assert_eq!(
            next("cron(0 0 1 1 ? 2199)", datetime!(1900-01-01 00:00 UTC)),
            Some(datetime!(2199-01-01 00:00 UTC))
        );
        assert_eq!(
            next("cron(0 0 1 1 ? 2020/50)", datetime!(2021-01-01 00:00 UTC)),
            Some(datetime!(2070-01-01 00:00 UTC))
        );
    }

    /// `next_after` agrees with a minute-by-minute scan.
    #[test]
    fn search_agrees_with_a_scan() {
        let exprs = [
            "cron(0 12 * * ? *)",
            "cron(0/7 */5 * * ? *)",
            "cron(30 2 L * ? *)",
            "cron(0 0 LW * ? *)",
            "cron(10 1 15W * ? *)",
            "cron(0 9 ? * 2#1 *)",
            "cron(0 9 ? * 6L *)",
            "cron(5 22-2 ? * FRI-MON *)",
            "cron(0 0 29 2 ? *)",
            "cron(0 0 1,15 JAN,JUL ? *)",
            "cron(45 23 31 * ? *)",
        ];
        let starts = [
            datetime!(2023-12-30 23:59:59 UTC),
            datetime!(2024-02-27 12:00 UTC),
            datetime!(2024-06-14 00:00:00.5 UTC),
        ];
        for expr in exprs {
            let s = Schedule::parse(expr).unwrap();
            let Kind::Cron(c) = &s.kind else {
                unreachable!()
            };
            for start in starts {
                let got = s.next_after(0, ms(start));
                // Scan up to ~400 days.
                let mut t = (ms(start) / MINUTE_MS + 1) * MINUTE_MS;
                let mut want = None;
                for _ in 0..400 * 24 * 60 {
                    let d = OffsetDateTime::from_unix_timestamp(t / 1000).unwrap();
                    let len = u32::from(d.month().length(d.year()));
                    let first = d.replace_day(1).unwrap().weekday().number_from_sunday();
                    if c.has_year(d.year())
                        && c.months.has(d.month() as u32)
                        && c.day_matches(u32::from(d.day()), len, u32::from(first))
                        && c.hours.has(u32::from(d.hour()))
                        && c.minutes.has(u32::from(d.minute()))
                    {
                        want = Some(t);
                        break;
                    }
                    t += MINUTE_MS;
                }
                match want {
                    Some(_) => assert_eq!(got, want, "{expr} after {start}"),
                    // Beyond the scan: only later is right.
                    None => assert!(got.is_some_and(|g| g >= t), "{expr} after {start}"),
                }
            }
        }
    }

    #[test]
    fn invalid_crons() {
        for bad in [
            "cron(INVALID)",
            "cron(0 1 * * * *)",
            "cron(0 1 ? * ? *)",
            "cron(71 8 1 * ? *)",
            "cron(0 24 * * ? *)",
            "cron(0 0 32 * ? *)",
            "cron(0 0 0 * ? *)",
            "cron(0 0 * 13 ? *)",
            "cron(0 0 ? * 8 *)",
            "cron(0 0 ? * 0 *)",
            "cron(7 20 * * NOT *)",
            "cron(0 dummy ? * MON-FRI *)",
            "cron(0 0 * * ? 1969)",
            "cron(0 0 * * ? 2200)",
            "cron(0 0 * * ?)",
            "cron(0 0 * * ? * *)",
            "cron(0/0 * * * ? *)",
            "cron(0/61 * * * ? *)",
            "cron(0/60 * * * ? *)",
            "cron(0 0/24 * * ? *)",
            "cron(0 0 ? * SAT#6 *)",
            "cron(0 0 ? * SAT#0 *)",
            "cron(0 0 32W * ? *)",
            "cron(0 0 L,1 * ? *)",
            "cron(? 0 * * ? *)",
            "cron(0 0 ? * 6L,1 *)",
            "cron(L 0 * * ? *)",
            "cron(0 0 * JANUARY ? *)",
            "cron(1- 0 * * ? *)",
            "cron(0 0 * * ? *",
            "cron 0 0 * * ? *",
        ] {
            let e = Schedule::parse(bad).unwrap_err().to_string();
            assert_eq!(
                e, "ValidationException: Parameter ScheduleExpression is not valid.",
                "{bad}"
            );
        }
        assert!(Schedule::parse(&format!("cron({})", "0,".repeat(200) + "0 * * * ? *")).is_err());
        for ok in [
            "cron(0/59 0/23 1/31 1/12 ? 1970/229)",
            "cron(0 0 ? * 1/7 *)",
            "cron(0 0 ? jan-mar mon,wed,FRI 2024,2026-2030/2)",
            "cron(0  0 L * ? *)",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
    }
}
