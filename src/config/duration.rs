//! Durations and sizes as the config file writes them: `300ms`, `5m`, `30d`, `16MiB`.

use std::time::Duration;

/// Duration units, largest first, with their length in nanoseconds.
const DURATION_UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Size units with their length in bytes. A size without a unit is in bytes.
const SIZE_UNITS: [(&str, u64); 3] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)];

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("an empty value is not a duration; write a whole number and a unit, e.g. 30s")]
    Empty,
    /// The text does not start with a digit.
    #[error(
        "`{0}` is not a duration; write a whole number and a unit, e.g. 300ms, 10s, 5m, 1h or 30d"
    )]
    NotANumber(String),
    /// The number has a fractional part.
    #[error("`{0}` is not a whole number of a unit; use a smaller unit, e.g. 90m rather than 1.5h")]
    Fraction(String),
    /// A number without a unit.
    #[error("`{0}` has no unit; write it with one of ns, us, ms, s, m, h or d, e.g. {0}ms or {0}s")]
    MissingUnit(String),
    /// A unit that is not one of ns, us, ms, s, m, h, d.
    #[error("`{text}` has the unknown unit `{unit}`; use one of ns, us, ms, s, m, h or d")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The part after the number.
        unit: String,
    },
    /// The duration does not fit.
    #[error("`{0}` is too long to represent")]
    Overflow(String),
}

/// Why a size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The text is empty.
    #[error(
        "an empty value is not a size; write a number of bytes or use KiB, MiB or GiB, e.g. 16MiB"
    )]
    Empty,
    /// The text does not start with a digit.
    #[error("`{0}` is not a size; write a number of bytes or use KiB, MiB or GiB, e.g. 16MiB")]
    NotANumber(String),
    /// The number has a fractional part.
    #[error(
        "`{0}` is not a whole number of a unit; use a smaller unit, e.g. 1536KiB rather than 1.5MiB"
    )]
    Fraction(String),
    /// A unit that is not KiB, MiB or GiB.
    #[error(
        "`{text}` has the unknown unit `{unit}`; sizes use the binary units KiB, MiB or GiB, or a plain number of bytes"
    )]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The part after the number.
        unit: String,
    },
    /// The size does not fit in 64 bits.
    #[error("`{0}` is too large to represent")]
    Overflow(String),
}

/// The leading run of ASCII digits, and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses one whole number followed by one unit: `ns`, `us`, `ms`, `s`, `m`, `h` or `d`.
///
/// `0s` is a valid duration here; whether zero is allowed is the caller's decision.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(DurationError::NotANumber(text.to_owned()));
    }
    if unit.starts_with(['.', ',']) {
        return Err(DurationError::Fraction(text.to_owned()));
    }
    if unit.is_empty() {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    let Some(&(_, unit_nanos)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(DurationError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        });
    };
    let overflow = || DurationError::Overflow(text.to_owned());
    let number: u128 = digits.parse().map_err(|_| overflow())?;
    let nanos = number.checked_mul(unit_nanos).ok_or_else(overflow)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| overflow())?;
    // The remainder is below 10^9, so it fits in u32.
    let subsec = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Writes a duration in the shortest form that [`parse_duration`] reads back exactly:
/// `5m`, `1h`, `30d`, `90s`, `300ms`. Zero is `0s`.
///
/// This is the form of the `window` label.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    DURATION_UNITS
        .iter()
        .find(|(_, unit_nanos)| nanos.is_multiple_of(*unit_nanos))
        .map_or_else(
            || format!("{nanos}ns"),
            |(unit, unit_nanos)| format!("{}{unit}", nanos / unit_nanos),
        )
}

/// Parses a size in bytes: a plain number of bytes (`1024`) or a whole number of
/// `KiB`, `MiB` or `GiB` (`512KiB`, `16MiB`). Decimal units such as `MB` are refused,
/// because whether they mean 10^6 or 2^20 is a guess.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(SizeError::NotANumber(text.to_owned()));
    }
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Fraction(text.to_owned()));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(SizeError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        };
        multiplier
    };
    let overflow = || SizeError::Overflow(text.to_owned());
    let number: u64 = digits.parse().map_err(|_| overflow())?;
    number.checked_mul(multiplier).ok_or_else(overflow)
}
