//! Parsing of human-written quantities in policy files: `30s`, `500ms`, `2MiB`, `10k`.
//!
//! The grammar is strict and small on purpose. A policy file is written by an operator, so a typo like
//! `30 sec` or `2MB ` should be an error naming the value, not a silently different limit.
//!
//! - duration: `<decimal><unit>` with unit `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; the decimal may have a
//!   fraction (`1.5s`) as long as the result is a whole number of nanoseconds.
//! - quantity: `<decimal>[suffix]` with suffix `k`/`M`/`G`/`T` (powers of 1000), `Ki`/`Mi`/`Gi`/`Ti`
//!   (powers of 1024), optionally followed by `B` (`2MiB`, `512B`, `10kB`); the decimal may have a
//!   fraction (`1.5k`, `1.5KiB`) as long as the result is a whole number.
//!
//! Every computation is checked: a value that does not fit in 64 bits is an error, not a wrap.

use std::fmt;
use std::time::Duration;

/// Longest value accepted, in bytes; longer input is rejected before it is looked at.
const MAX_LEN: usize = 40;

/// Why a quantity or duration could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// Nothing to parse.
    Empty,
    /// Longer than any sane value.
    TooLong,
    /// The number part is missing or malformed.
    BadNumber,
    /// The unit is missing or not one of the accepted ones.
    BadUnit,
    /// The value does not fit in 64 bits (or is not a whole number of the base unit).
    OutOfRange,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnitError::Empty => "empty value",
            UnitError::TooLong => "value is too long",
            UnitError::BadNumber => "malformed number",
            UnitError::BadUnit => "unknown or missing unit",
            UnitError::OutOfRange => {
                "value out of range (too large, or finer than the smallest unit)"
            }
        })
    }
}

impl std::error::Error for UnitError {}

/// Splits `s` into its leading decimal number (digits with at most one `.`) and the unit after it.
fn split_number(s: &str) -> Result<(&str, &str, &str), UnitError> {
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(UnitError::TooLong);
    }
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int, rest) = s.split_at(int_end);
    if int.is_empty() {
        return Err(UnitError::BadNumber);
    }
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_end = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        let (frac, unit) = after_dot.split_at(frac_end);
        if frac.is_empty() {
            return Err(UnitError::BadNumber);
        }
        Ok((int, frac, unit))
    } else {
        Ok((int, "", rest))
    }
}

/// `int.frac * scale`, exactly, or an error if it is not a whole number or does not fit in `u64`.
fn scaled(int: &str, frac: &str, scale: u64) -> Result<u64, UnitError> {
    let int: u128 = int.parse().map_err(|_| UnitError::OutOfRange)?;
    let mut total = int
        .checked_mul(u128::from(scale))
        .ok_or(UnitError::OutOfRange)?;
    // Trailing zeros say nothing: `1.000000000000000000000s` is one second.
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        // `digits / 10^len × scale`, reduced first: the fraction comes out whole exactly when what
        // is left of the denominator, once it shares nothing with the scale, divides the digits
        // (however many there are: `0.0000019073486328125Mi` is 2).
        let digits: u128 = frac.parse().map_err(|_| UnitError::OutOfRange)?;
        let denom = u32::try_from(frac.len())
            .ok()
            .and_then(|len| 10u128.checked_pow(len))
            .ok_or(UnitError::OutOfRange)?;
        let common = gcd(denom, u128::from(scale));
        let (denom, scale) = (denom / common, u128::from(scale) / common);
        if digits % denom != 0 {
            return Err(UnitError::OutOfRange);
        }
        let part = (digits / denom)
            .checked_mul(scale)
            .ok_or(UnitError::OutOfRange)?;
        total = total.checked_add(part).ok_or(UnitError::OutOfRange)?;
    }
    u64::try_from(total).map_err(|_| UnitError::OutOfRange)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Parses a duration such as `30s`, `500ms`, `1.5s`, `2m` or `1h`.
///
/// ```
/// use costguard::units::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("30").is_err()); // a unit is required
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (int, frac, unit) = split_number(s)?;
    let scale = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(UnitError::BadUnit),
    };
    scaled(int, frac, scale).map(Duration::from_nanos)
}

/// Parses a whole quantity such as `500`, `10k`, `2MiB`, `512B` or `1.5k`.
///
/// ```
/// use costguard::units::parse_quantity;
///
/// assert_eq!(parse_quantity("2MiB"), Ok(2 * 1024 * 1024));
/// assert_eq!(parse_quantity("10k"), Ok(10_000));
/// assert_eq!(parse_quantity("1.5k"), Ok(1_500)); // a fraction that comes out whole
/// assert!(parse_quantity("1.5").is_err()); // counts are whole numbers
/// assert!(parse_quantity("1.0001k").is_err()); // 1000.1
/// ```
pub fn parse_quantity(s: &str) -> Result<u64, UnitError> {
    let (int, frac, unit) = split_number(s)?;
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(UnitError::BadUnit),
    };
    scaled(int, frac, scale)
}

/// Formats a duration compactly for reports (`1.250s`, `300ms`, `12µs`; `none` for
/// `Duration::MAX`, which alone means "no limit").
pub(crate) fn format_duration(d: Duration) -> String {
    if d == Duration::MAX {
        return "none".to_owned();
    }
    let nanos = d.as_nanos();
    if d.as_secs() >= 1 << 40 {
        // Past 34,000 years a float would round the seconds: whole seconds, exactly.
        format!("{}s", d.as_secs())
    } else if nanos >= 1_000_000_000 {
        format!("{:.3}s", d.as_secs_f64())
    } else if nanos >= 1_000_000 {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos >= 1_000 {
        format!("{}µs", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0.001s"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("1.5ns"), Err(UnitError::OutOfRange));
        assert_eq!(
            parse_duration("1.0000000000000000000000s"),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            parse_duration("0.0000000010000000000000s"),
            Ok(Duration::from_nanos(1))
        );
        assert_eq!(parse_duration("30"), Err(UnitError::BadUnit));
        assert_eq!(parse_duration("30 s"), Err(UnitError::BadUnit));
        assert_eq!(parse_duration("-1s"), Err(UnitError::BadNumber));
        assert_eq!(parse_duration("s"), Err(UnitError::BadNumber));
        assert_eq!(parse_duration("1.s"), Err(UnitError::BadNumber));
        assert_eq!(parse_duration(""), Err(UnitError::Empty));
        assert_eq!(parse_duration("NaNs"), Err(UnitError::BadNumber));
        assert_eq!(
            parse_duration("99999999999999h"),
            Err(UnitError::OutOfRange)
        );
        assert_eq!(
            parse_duration("18446744073709551615ns"),
            Ok(Duration::from_nanos(u64::MAX))
        );
        assert_eq!(
            parse_duration("18446744073709551616ns"),
            Err(UnitError::OutOfRange)
        );
        assert_eq!(parse_duration(&"9".repeat(100)), Err(UnitError::TooLong));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("0"), Ok(0));
        assert_eq!(parse_quantity("512B"), Ok(512));
        assert_eq!(parse_quantity("10kB"), Ok(10_000));
        assert_eq!(parse_quantity("1KiB"), Ok(1024));
        assert_eq!(parse_quantity("1.5KiB"), Ok(1536));
        assert_eq!(parse_quantity("1.1"), Err(UnitError::OutOfRange));
        assert_eq!(parse_quantity("16Ei"), Err(UnitError::BadUnit));
        assert_eq!(parse_quantity("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_quantity("18446744073709551616"),
            Err(UnitError::OutOfRange)
        );
        assert_eq!(parse_quantity("20000000T"), Err(UnitError::OutOfRange));
        assert_eq!(parse_quantity("2 MiB"), Err(UnitError::BadUnit));
        assert_eq!(parse_quantity("+5"), Err(UnitError::BadNumber));
    }

    /// A fraction of any length is fine if it comes out whole: 5^19 / 10^19 × 2^20 is 2, and
    /// 5^20 / 10^20 × 2^40 is 2^20. One digit more than that makes it not whole.
    #[test]
    fn long_fractions_that_come_out_whole() {
        assert_eq!(parse_quantity("0.0000019073486328125Mi"), Ok(2));
        assert_eq!(parse_quantity("0.00000095367431640625TiB"), Ok(1 << 20));
        assert_eq!(
            parse_quantity("3.00000095367431640625Ti"),
            Ok((3 << 40) + (1 << 20))
        );
        assert_eq!(
            parse_quantity("0.000000953674316406251Ti"),
            Err(UnitError::OutOfRange)
        );
        // The longest fraction that fits the value's length: 37 digits, not whole.
        assert_eq!(
            parse_quantity(&format!("0.{}1k", "0".repeat(36))),
            Err(UnitError::OutOfRange)
        );
        assert_eq!(
            parse_duration("0.0000000000000000000000000000000000005h"),
            Err(UnitError::OutOfRange)
        );
    }

    /// Every suffix, with and without `B`, against its value written out.
    #[test]
    fn every_quantity_suffix() {
        let table: [(&str, u64); 9] = [
            ("", 1),
            ("k", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
            ("Ki", 1_024),
            ("Mi", 1_048_576),
            ("Gi", 1_073_741_824),
            ("Ti", 1_099_511_627_776),
        ];
        for (suffix, value) in table {
            assert_eq!(
                parse_quantity(&format!("3{suffix}")),
                Ok(3 * value),
                "{suffix}"
            );
            assert_eq!(
                parse_quantity(&format!("3{suffix}B")),
                Ok(3 * value),
                "{suffix}B"
            );
        }
        assert_eq!(
            parse_quantity("3m"),
            Err(UnitError::BadUnit),
            "no milli-units"
        );
        assert_eq!(
            parse_quantity("3KB"),
            Err(UnitError::BadUnit),
            "k is lower case"
        );
    }

    /// Every duration unit against its value written out.
    #[test]
    fn every_duration_unit() {
        let table: [(&str, u64); 7] = [
            ("ns", 1),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ];
        for (unit, nanos) in table {
            assert_eq!(
                parse_duration(&format!("3{unit}")),
                Ok(Duration::from_nanos(3 * nanos)),
                "{unit}"
            );
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_millis(1250)), "1.250s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_micros(12)), "12µs");
        assert_eq!(format_duration(Duration::MAX), "none");
        // Only `Duration::MAX` is "none": a longer wall time than any clock is still a deadline.
        assert_eq!(
            format_duration(Duration::from_secs(u64::MAX)),
            "18446744073709551615s"
        );
        assert_eq!(
            format_duration(Duration::from_secs(1 << 40)),
            "1099511627776s"
        );
        assert_eq!(
            format_duration(Duration::from_secs((1 << 40) - 1)),
            "1099511627775.000s"
        );
    }
}
