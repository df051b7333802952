//! Durations as manifests write them: `90m`, `2h`, `1h30m`, `45s`.
//!
//! The accepted form is the subset of Go's duration syntax that CEL's `duration()` also reads,
//! so a CRD validation rule and this parser never disagree about a value.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$";

/// The CEL rule the CRD schema adds to [`DURATION_PATTERN`]: the parser's bounds.
pub const BOUNDS_RULE: &str =
    "duration(self) >= duration('1s') && duration(self) <= duration('100000h')";

/// The longest duration accepted: about eleven years, far past any sane credential lifetime,
/// and small enough that adding it to any timestamp cannot overflow.
pub const MAX_SECONDS: u64 = 100_000 * 3600;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the `1h30m` form.
    #[error(
        "duration {0:?} is not of the form 90m, 2h, 1h30m or 45s \
         (hours, minutes, seconds in that order; no days, no spaces)"
    )]
    Syntax(String),
    /// `0s`, `0h`.
    #[error("duration {0:?} is zero; it must be at least 1s")]
    Zero(String),
    /// Longer than [`MAX_SECONDS`].
    #[error("duration {0:?} is longer than the maximum of 100000h")]
    TooLong(String),
}

/// A positive whole number of seconds, written like `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeDuration(u64);

impl KubeDuration {
    /// A duration of whole seconds, if within `1..=MAX_SECONDS`.
    pub fn from_secs(secs: u64) -> Option<KubeDuration> {
        (1..=MAX_SECONDS)
            .contains(&secs)
            .then_some(KubeDuration(secs))
    }

    /// The length in seconds.
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// The length as a std duration.
    pub fn to_std(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl FromStr for KubeDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<KubeDuration, DurationError> {
        let syntax = || DurationError::Syntax(text.to_owned());
        let mut rest = text;
        let mut secs: u64 = 0;
        // Each unit at most once, in h, m, s order.
        for (unit, factor) in [('h', 3600u64), ('m', 60), ('s', 1)] {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || rest.as_bytes().get(digits) != Some(&(unit as u8)) {
                continue;
            }
            if digits > 6 {
                return Err(DurationError::TooLong(text.to_owned()));
            }
            let n: u64 = rest[..digits].parse().map_err(|_| syntax())?;
            secs += n * factor;
            rest = &rest[digits + 1..];
        }
        if !rest.is_empty() || text.is_empty() {
            return Err(syntax());
        }
        if secs == 0 {
            return Err(DurationError::Zero(text.to_owned()));
        }
        KubeDuration::from_secs(secs).ok_or_else(|| DurationError::TooLong(text.to_owned()))
    }
}

impl fmt::Display for KubeDuration {
    /// The shortest form: `1h30m`, `2h`, `45s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 % 3600 / 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for KubeDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KubeDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KubeDuration, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for KubeDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The pattern is the syntax; the bounds are a CEL rule (a pattern cannot say "not zero,
        // at most 100000h" of a sum of units). Together they admit what the parser accepts.
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "minLength": 2,
            "maxLength": 21,
            "x-kubernetes-validations": [{
                "rule": BOUNDS_RULE,
                "message": "a duration is at least 1s and at most 100000h",
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        s.parse::<KubeDuration>().unwrap().as_secs()
    }

    #[test]
    fn parses_go_style_units() {
        assert_eq!(secs("90m"), 5400);
        assert_eq!(secs("2h"), 7200);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("1h0m5s"), 3605);
        assert_eq!(secs("100000h"), MAX_SECONDS);
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "", "90", "2d", "1.5h", "30m1h", "1h 30m", "h", "-5m", "5M", "1hh", "PT1H",
        ] {
            let err = bad.parse::<KubeDuration>().unwrap_err();
            assert!(matches!(err, DurationError::Syntax(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_zero_and_too_long() {
        assert!(matches!(
            "0s".parse::<KubeDuration>(),
            Err(DurationError::Zero(_))
        ));
        assert!(matches!(
            "0h0m".parse::<KubeDuration>(),
            Err(DurationError::Zero(_))
        ));
        assert!(matches!(
            "100001h".parse::<KubeDuration>(),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            "9999999s".parse::<KubeDuration>(),
            Err(DurationError::TooLong(_))
        ));
        let msg = "2d".parse::<KubeDuration>().unwrap_err().to_string();
        assert!(msg.contains("no days"), "{msg}");
    }

    #[test]
    fn displays_shortest_form_and_round_trips() {
        for (text, shown) in [
            ("90m", "1h30m"),
            ("3600s", "1h"),
            ("61s", "1m1s"),
            ("2h", "2h"),
        ] {
            let d: KubeDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<KubeDuration>().unwrap(), d);
        }
    }

    #[test]
    fn deserializes_from_yaml_with_clear_errors() {
        let d: KubeDuration = serde_yaml_ng::from_str("90m").unwrap();
        assert_eq!(d.as_secs(), 5400);
        let err = serde_yaml_ng::from_str::<KubeDuration>("2 days")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not of the form"), "{err}");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,30}") {
            let _ = s.parse::<KubeDuration>();
        }

        #[test]
        fn display_round_trips(secs in 1u64..=MAX_SECONDS) {
            let d = KubeDuration::from_secs(secs).unwrap();
            prop_assert_eq!(d.to_string().parse::<KubeDuration>().unwrap(), d);
        }
    }
}
