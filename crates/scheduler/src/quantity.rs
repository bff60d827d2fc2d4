//! Resource quantities ("100m", "1.5Gi", "2e3") as exact integers.
//!
//! Both conversions round up, as upstream's `Quantity.MilliValue()` and `Quantity.Value()` do:
//! a request must never look smaller than what was asked for, or a node would be overcommitted.

/// A string that is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// The quantity times 1000, rounded up (CPU is counted in millicores).
pub fn parse_milli(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// The quantity rounded up to an integer (bytes, pods, extended resources).
pub fn parse_value(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
}

/// Digits kept in the mantissa; more significant digits than this never occur in real
/// quantities, and keeping the arithmetic in i128 needs a bound.
const MAX_MANTISSA: i128 = 10_i128.pow(30);

fn parse_scaled(s: &str, scale: i32) -> Result<i64, QuantityError> {
    let error = || QuantityError(s.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut mantissa: i128 = 0;
    let mut exp10: i32 = 0;
    let mut seen_dot = false;
    let mut any_digit = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'0'..=b'9' => {
                any_digit = true;
                if mantissa < MAX_MANTISSA {
                    mantissa = mantissa * 10 + i128::from(b - b'0');
                    if seen_dot {
                        exp10 -= 1;
                    }
                } else if !seen_dot {
                    // Too many digits to keep: the value is still this order of magnitude.
                    exp10 += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => break,
        }
        i += 1;
    }
    if !any_digit {
        return Err(error());
    }
    let (suffix10, suffix2) = match &s[i..] {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exponent = other.strip_prefix('e').or_else(|| other.strip_prefix('E')).ok_or_else(error)?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error());
            }
            (exponent.parse::<i32>().map_err(|_| error())?, 0)
        }
    };
    let magnitude = scale_up(mantissa, exp10.saturating_add(suffix10).saturating_add(scale), suffix2);
    Ok(if negative { -magnitude } else { magnitude })
}

/// `mantissa * 10^exp10 * 2^exp2`, rounded up and saturated to i64.
fn scale_up(mantissa: i128, exp10: i32, exp2: u32) -> i64 {
    if mantissa == 0 {
        return 0;
    }
    let saturated = i64::MAX;
    let Some(mut n) = mantissa.checked_mul(1_i128 << exp2.min(100)) else { return saturated };
    if exp10 >= 0 {
        for _ in 0..exp10 {
            match n.checked_mul(10) {
                Some(v) if v <= i128::from(i64::MAX) => n = v,
                _ => return saturated,
            }
        }
    } else {
        let Some(divisor) = 10_i128.checked_pow(exp10.unsigned_abs()) else {
            // Smaller than one unit, but not zero: rounding up makes it one.
            return 1;
        };
        n = n / divisor + i128::from(n % divisor != 0);
    }
    i64::try_from(n).unwrap_or(saturated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("1"), Ok(1000));
        assert_eq!(parse_milli("1.5"), Ok(1500));
        assert_eq!(parse_milli("0.1"), Ok(100));
        assert_eq!(parse_milli(".5"), Ok(500));
        assert_eq!(parse_milli("2."), Ok(2000));
        // Below a millicore rounds up, as MilliValue does.
        assert_eq!(parse_milli("1u"), Ok(1));
        assert_eq!(parse_milli("1500u"), Ok(2));
        assert_eq!(parse_milli("250000n"), Ok(1));
        assert_eq!(parse_milli("0"), Ok(0));
        assert_eq!(parse_milli("0m"), Ok(0));
    }

    #[test]
    fn memory_binary_and_decimal_suffixes() {
        assert_eq!(parse_value("1Ki"), Ok(1024));
        assert_eq!(parse_value("128Mi"), Ok(128 * 1024 * 1024));
        assert_eq!(parse_value("1.5Gi"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_value("2Ti"), Ok(2 << 40));
        assert_eq!(parse_value("1k"), Ok(1000));
        assert_eq!(parse_value("1M"), Ok(1_000_000));
        assert_eq!(parse_value("1G"), Ok(1_000_000_000));
        assert_eq!(parse_value("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_value("500m"), Ok(1), "half a byte rounds up");
        assert_eq!(parse_value("+5"), Ok(5));
        assert_eq!(parse_value("-5"), Ok(-5));
    }

    #[test]
    fn exponent_notation() {
        assert_eq!(parse_value("1e3"), Ok(1000));
        assert_eq!(parse_value("1E3"), Ok(1000));
        assert_eq!(parse_value("1.5e3"), Ok(1500));
        assert_eq!(parse_value("12e+2"), Ok(1200));
        assert_eq!(parse_milli("1e-3"), Ok(1));
        assert_eq!(parse_value("1e-3"), Ok(1));
        assert_eq!(parse_value("3e0"), Ok(3));
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(parse_value("9Ei"), Ok(i64::MAX));
        assert_eq!(parse_milli("100E"), Ok(i64::MAX));
        assert_eq!(parse_value("1e400"), Ok(i64::MAX));
        assert_eq!(parse_value("1e-400"), Ok(1));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in ["", "m", "1.2.3", "1K", "1 Gi", "1Gb", "abc", "1e", "1e+", "1ee3", "--1", "1mi"] {
            assert!(parse_value(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
