//! Money: an integer count of US micro-dollars.
//!
//! Manifests write money as a decimal string (`"12.50"`) or an integer number of dollars (`500`).
//! A float (`12.5`) is refused: binary floats cannot hold cents exactly, and a schema that took
//! them would let `0.1 + 0.2` into a cap. Every amount is bounded by [`Usd::MAX`], which keeps it
//! exact inside Redis' Lua interpreter, where numbers are IEEE doubles (exact up to 2^53).

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Micro-dollars in one dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// The pattern the CRD schema enforces on the string form of an amount.
pub const USD_PATTERN: &str = r"^((0|[1-9][0-9]{0,8})(\.[0-9]{1,6})?|1000000000(\.0{1,6})?)$";

/// Why a text is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Nothing to parse.
    #[error("amount is empty; write dollars like \"12.50\" or 500")]
    Empty,
    /// A sign, exponent, comma or other character that is not a plain decimal.
    #[error("amount {0:?} is not a decimal number of dollars; write it like \"12.50\" or 500")]
    Syntax(String),
    /// Negative amounts are never caps or prices.
    #[error("amount {0:?} is negative; money amounts must be 0 or more")]
    Negative(String),
    /// Finer than a micro-dollar.
    #[error("amount {0:?} has more than 6 decimals; the smallest unit is $0.000001")]
    TooPrecise(String),
    /// Above [`Usd::MAX`].
    #[error("amount {0:?} is above the largest amount allowed, $1000000000")]
    TooLarge(String),
    /// A JSON/YAML float.
    #[error(
        "amount {0} is a floating-point number; write it as a string like \"12.50\" \
         or as a whole number of dollars"
    )]
    Float(String),
}

/// An amount of US dollars, stored as micro-dollars (`$1 = 1_000_000`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(u64);

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);
    /// The largest amount: one billion dollars (10^15 micro-dollars, below 2^53).
    pub const MAX: Usd = Usd(1_000_000_000 * MICROS_PER_USD);

    /// An amount from micro-dollars, if within [`Usd::MAX`].
    pub fn from_micros(micros: u64) -> Option<Usd> {
        (micros <= Self::MAX.0).then_some(Usd(micros))
    }

    /// An amount from micro-dollars, [`Usd::MAX`] when above it (for reporting counters).
    pub fn saturating_from_micros(micros: u64) -> Usd {
        Usd(micros.min(Self::MAX.0))
    }

    /// An amount from whole dollars, if within [`Usd::MAX`].
    pub fn from_dollars(dollars: u64) -> Option<Usd> {
        dollars
            .checked_mul(MICROS_PER_USD)
            .and_then(Self::from_micros)
    }

    /// The amount in micro-dollars.
    pub fn micros(self) -> u64 {
        self.0
    }

    /// `self + other`, or `None` above [`Usd::MAX`].
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).and_then(Self::from_micros)
    }

    /// `self - other`, or `None` below zero.
    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        self.0.checked_sub(other.0).map(Usd)
    }

    /// `self * n`, or `None` above [`Usd::MAX`].
    pub fn checked_mul(self, n: u64) -> Option<Usd> {
        self.0.checked_mul(n).and_then(Self::from_micros)
    }

    /// `self - other`, floored at zero.
    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

impl FromStr for Usd {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Usd, MoneyError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(MoneyError::Empty);
        }
        if s.starts_with('-') {
            return Err(MoneyError::Negative(text.to_owned()));
        }
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        let digits_only = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits_only(whole) || frac.is_some_and(|f| !digits_only(f)) {
            return Err(MoneyError::Syntax(text.to_owned()));
        }
        let frac = frac.unwrap_or("");
        if frac.len() > 6 {
            return Err(MoneyError::TooPrecise(text.to_owned()));
        }
        let too_large = || MoneyError::TooLarge(text.to_owned());
        // Leading zeros are harmless; strip them so a long run of them cannot overflow.
        let whole = whole.trim_start_matches('0');
        if whole.len() > 10 {
            return Err(too_large());
        }
        let dollars: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut micros_frac: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            micros_frac += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        dollars
            .checked_mul(MICROS_PER_USD)
            .and_then(|m| m.checked_add(micros_frac))
            .and_then(Usd::from_micros)
            .ok_or_else(too_large)
    }
}

impl fmt::Display for Usd {
    /// Dollars with at least two decimals and no trailing zeros past them: `12.50`, `0.0083`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dollars = self.0 / MICROS_PER_USD;
        let frac = self.0 % MICROS_PER_USD;
        let mut frac_text = format!("{frac:06}");
        while frac_text.len() > 2 && frac_text.ends_with('0') {
            frac_text.pop();
        }
        write!(f, "{dollars}.{frac_text}")
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Usd, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("dollars as a decimal string like \"12.50\" or a whole number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Usd, E> {
                // As stored in an object: the one spelling the CRD schema admits (no spaces, no
                // leading zeros), so the API server and the binaries agree on every value.
                let whole = v.split_once('.').map_or(v, |(w, _)| w);
                if v.trim() != v || (whole.len() > 1 && whole.starts_with('0')) {
                    return Err(E::custom(MoneyError::Syntax(v.to_owned())));
                }
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Usd, E> {
                Usd::from_dollars(v).ok_or_else(|| E::custom(MoneyError::TooLarge(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Usd, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(MoneyError::Negative(v.to_string()))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Usd, E> {
                Err(E::custom(MoneyError::Float(v.to_string())))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for Usd {
    fn schema_name() -> Cow<'static, str> {
        "Usd".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The API server reads `x-kubernetes-int-or-string` as "integer or string", so a
        // float is refused; `pattern` only applies to strings, `minimum` to integers.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": USD_PATTERN,
            "minimum": 0,
            "maximum": 1_000_000_000u64,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    #[test]
    fn parses_decimal_strings() {
        assert_eq!(usd("12.50").micros(), 12_500_000);
        assert_eq!(usd("500").micros(), 500_000_000);
        assert_eq!(usd("0.000001").micros(), 1);
        assert_eq!(usd("0").micros(), 0);
        assert_eq!(usd("0.0083").micros(), 8_300);
        assert_eq!(usd(" 7.5 ").micros(), 7_500_000);
        assert_eq!(usd("007.10").micros(), 7_100_000);
    }

    #[test]
    fn refuses_what_is_not_plain_dollars() {
        assert_eq!("".parse::<Usd>(), Err(MoneyError::Empty));
        assert!(matches!("-1".parse::<Usd>(), Err(MoneyError::Negative(_))));
        for bad in [
            "1e3", "1,000", "$5", "5.", ".5", "1.2.3", "0x10", "+5", "NaN", "inf",
        ] {
            assert!(
                matches!(bad.parse::<Usd>(), Err(MoneyError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_more_than_six_decimals() {
        let err = "0.0000001".parse::<Usd>().unwrap_err();
        assert_eq!(err, MoneyError::TooPrecise("0.0000001".into()));
        assert!(err.to_string().contains("more than 6 decimals"));
    }

    #[test]
    fn bounds_at_one_billion_dollars() {
        assert_eq!(usd("1000000000"), Usd::MAX);
        assert!(
            Usd::MAX.micros() < (1u64 << 53),
            "must stay exact in Lua doubles"
        );
        for big in [
            "1000000000.000001",
            "99999999999",
            "18446744073709551616",
            "9".repeat(40).as_str(),
        ] {
            assert!(
                matches!(big.parse::<Usd>(), Err(MoneyError::TooLarge(_))),
                "{big}"
            );
        }
        assert_eq!(usd(&format!("{}1", "0".repeat(50))).micros(), 1_000_000);
    }

    #[test]
    fn checked_arithmetic_stops_at_the_bounds() {
        assert_eq!(Usd::MAX.checked_add(Usd(1)), None);
        assert_eq!(Usd::ZERO.checked_sub(Usd(1)), None);
        assert_eq!(usd("2").checked_mul(3), Some(usd("6")));
        assert_eq!(Usd::MAX.checked_mul(2), None);
        assert_eq!(Usd(5).checked_mul(u64::MAX), None);
        assert_eq!(usd("1").saturating_sub(usd("2")), Usd::ZERO);
    }

    #[test]
    fn displays_dollars() {
        assert_eq!(usd("12.5").to_string(), "12.50");
        assert_eq!(usd("500").to_string(), "500.00");
        assert_eq!(usd("0.0083").to_string(), "0.0083");
        assert_eq!(usd("0.000001").to_string(), "0.000001");
        assert_eq!(Usd::MAX.to_string(), "1000000000.00");
    }

    #[test]
    fn deserializes_strings_and_integers_but_not_floats() {
        let from = |j: &str| serde_json::from_str::<Usd>(j);
        assert_eq!(from("\"12.50\"").unwrap(), usd("12.50"));
        assert_eq!(from("500").unwrap(), usd("500"));
        let float = from("12.5").unwrap_err().to_string();
        assert!(float.contains("floating-point"), "{float}");
        assert!(from("-3").unwrap_err().to_string().contains("negative"));
        assert!(from("true").is_err());
        assert!(
            from("1000000001")
                .unwrap_err()
                .to_string()
                .contains("largest")
        );
        let yaml: Usd = serde_yaml_ng::from_str("\"0.25\"").unwrap();
        assert_eq!(yaml, usd("0.25"));
        assert!(serde_yaml_ng::from_str::<Usd>("0.25").is_err());
    }

    #[test]
    fn round_trips_through_json() {
        for s in ["0.00", "12.50", "0.000001", "999.999999"] {
            let v = usd(s);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Usd>(&json).unwrap(), v);
        }
    }

    // The schema's agreement with the parser is tested over generated inputs in agreement.rs.
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_never_panics_and_stays_in_bounds(s in "\\PC{0,40}") {
            if let Ok(v) = s.parse::<Usd>() {
                prop_assert!(v <= Usd::MAX);
            }
        }

        #[test]
        fn display_round_trips(m in 0u64..=Usd::MAX.micros()) {
            let v = Usd::from_micros(m).unwrap();
            prop_assert_eq!(v.to_string().parse::<Usd>().unwrap(), v);
        }

        #[test]
        fn decimal_text_parses_exactly(d in 0u64..1_000_000_000, f in 0u64..1_000_000) {
            let v: Usd = format!("{d}.{f:06}").parse().unwrap();
            prop_assert_eq!(v.micros(), d * MICROS_PER_USD + f);
        }
    }
}
