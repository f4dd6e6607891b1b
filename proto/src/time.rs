//! RFC 3339 timestamps <-> `(seconds, nanos)` since the Unix epoch, the representation of
//! [`Event::time_seconds`](crate::Event::time_seconds) and
//! [`Event::time_nanos`](crate::Event::time_nanos).
//!
//! The supported range is what RFC 3339 can write in UTC: `0000-01-01T00:00:00Z` to
//! `9999-12-31T23:59:59.999999999Z`. Formatting is canonical, so formatting a parsed time gives the
//! input back whenever the input was itself canonical:
//!
//! * always UTC, written `Z`;
//! * fractional seconds only when `nanos != 0`, with as few digits as represent `nanos` exactly
//!   (`.5`, `.123`, `.000000001`).
//!
//! Parsing accepts any RFC 3339 timestamp: any offset (normalized to UTC), `t`/`z` in either case, a
//! space instead of `T` (RFC 3339 §5.6 allows it), and any number of fractional digits (digits
//! beyond nanoseconds are truncated). A leap second (`23:59:60`, valid only as the last second of a
//! month in UTC) is read as `23:59:59.999999999`, the `time` crate having no leap seconds.

use ::time::format_description::well_known::Rfc3339;
use ::time::macros::datetime;
use ::time::OffsetDateTime;

/// The earliest supported time, `0000-01-01T00:00:00Z`, in seconds since the Unix epoch.
pub const MIN_SECONDS: i64 = datetime!(0000-01-01 00:00:00 UTC).unix_timestamp();
/// The latest supported second, `9999-12-31T23:59:59Z`, in seconds since the Unix epoch.
pub const MAX_SECONDS: i64 = datetime!(9999-12-31 23:59:59 UTC).unix_timestamp();

const NANOS_PER_SECOND: u32 = 1_000_000_000;

/// Why a time could not be formatted or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The nanoseconds are not below one second.
    #[error("nanoseconds must be below 1000000000")]
    NanosOutOfRange,
    /// The time is outside `0000-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z`.
    #[error("outside the range RFC 3339 can express (years 0000 to 9999 in UTC)")]
    OutOfRange,
    /// The text is not an RFC 3339 timestamp.
    #[error("not an RFC 3339 timestamp: {0}")]
    Syntax(String),
    /// The text is not a decimal number of seconds.
    #[error("not a decimal number of seconds since the epoch")]
    NotANumber,
}

/// Formats `seconds` + `nanos` since the Unix epoch as a canonical RFC 3339 UTC timestamp, e.g.
/// `2019-12-02T19:02:51Z` or `2019-12-02T19:02:51.5Z`.
pub fn format_rfc3339(seconds: i64, nanos: u32) -> Result<String, TimeError> {
    if nanos >= NANOS_PER_SECOND {
        return Err(TimeError::NanosOutOfRange);
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return Err(TimeError::OutOfRange);
    }
    OffsetDateTime::from_unix_timestamp(seconds)
        .and_then(|t| t.replace_nanosecond(nanos))
        .map_err(|_| TimeError::OutOfRange)?
        .format(&Rfc3339)
        .map_err(|_| TimeError::OutOfRange)
}

/// Parses an RFC 3339 timestamp with any offset into `(seconds, nanos)` since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Result<(i64, u32), TimeError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| TimeError::Syntax(e.to_string()))?;
    // The `time` crate accepts any byte between date and time; RFC 3339 allows `T`, `t` or a space.
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return Err(TimeError::Syntax(
            "date and time must be separated by `T`".to_owned(),
        ));
    }
    let seconds = t.unix_timestamp();
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return Err(TimeError::OutOfRange);
    }
    Ok((seconds, t.nanosecond()))
}

/// Parses a decimal number of seconds since the Unix epoch (`1575313371`, `-1.5`,
/// `1.5753133715e9`), the form AWS SDKs send timestamps in, into `(seconds, nanos)`.
///
/// The digits are read exactly, without going through floating point; digits beyond nanoseconds
/// are truncated towards zero.
pub fn parse_epoch_seconds(text: &str) -> Result<(i64, u32), TimeError> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (
            mantissa,
            exponent.parse::<i32>().map_err(|_| TimeError::NotANumber)?,
        ),
        None => (unsigned, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((_, "")) => return Err(TimeError::NotANumber),
        Some(parts) => parts,
        None => (mantissa, ""),
    };
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) {
        return Err(TimeError::NotANumber);
    }

    let digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    if digits.iter().all(|&d| d == 0) {
        return Ok((0, 0));
    }
    // The decimal point sits before `digits[point]`; places outside `digits` hold zeros.
    let point =
        i64::try_from(whole.len()).map_err(|_| TimeError::OutOfRange)? + i64::from(exponent);
    let digit_at = |place: i64| {
        usize::try_from(place)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };
    // Leading zeros aside, a nonzero digit overflows `i64` within 19 more places, so this loop is
    // bounded by the input's length even for a huge exponent.
    let mut seconds: i64 = 0;
    for place in 0..point {
        seconds = seconds
            .checked_mul(10)
            .and_then(|s| s.checked_add(i64::from(digit_at(place))))
            .ok_or(TimeError::OutOfRange)?;
    }
    let nanos = (point..point + 9).fold(0_u32, |nanos, place| {
        nanos * 10 + u32::from(digit_at(place))
    });

    let (seconds, nanos) = match (negative, nanos) {
        (false, _) => (seconds, nanos),
        (true, 0) => (-seconds, 0),
        (true, _) => (-seconds - 1, NANOS_PER_SECOND - nanos),
    };
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return Err(TimeError::OutOfRange);
    }
    Ok((seconds, nanos))
}
