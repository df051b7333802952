//! One definition of a valid value: each schema pattern and CEL rule the API server applies to
//! our fields agrees with the parser the binaries read the field with, over generated inputs.
//! Whatever the schema admits, the parser accepts, and the other way round; where a rule cannot
//! be said in the schema, the object is admitted and goes `Invalid` (`listed.rs`). The parser is
//! each type's `Deserialize`, what the binaries read a stored object with.
//!
//! The patterns are checked with the `regex` crate, whose syntax and semantics for these
//! classes are RE2's (the API server's); the CEL rules with kube's Rust evaluator of the
//! Kubernetes CEL dialect, not the server's cel-go: the rules here are simple enough for both to
//! agree, and `tests/tests/e2e/unreadable_objects.rs` shows the real server refusing the edges.

use kube::core::cel::Validator;
use proptest::prelude::*;
use regex::Regex;
use serde_json::{Value, json};

use crate::{
    Usd,
    duration::{BOUNDS_RULE, DURATION_PATTERN, KubeDuration},
    endpoint::EndpointPattern,
    names::{DNS_SUBDOMAIN_PATTERN, is_dns_subdomain},
};

/// Whether the schema `schema` admits the string `s` as the API server would: pattern, length
/// and CEL rules.
fn schema_admits(schema: &Value, value: &Value) -> bool {
    if let Some(s) = value.as_str() {
        if let Some(p) = schema["pattern"].as_str()
            && !Regex::new(p).is_ok_and(|re| re.is_match(s))
        {
            return false;
        }
        // OpenAPI lengths count characters.
        let chars = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| chars > m)
            || schema["minLength"].as_u64().is_some_and(|m| chars < m)
        {
            return false;
        }
    }
    if let Some(n) = value.as_i64()
        && (schema["minimum"].as_i64().is_some_and(|m| n < m)
            || schema["maximum"].as_i64().is_some_and(|m| n > m))
    {
        return false;
    }
    let wrapper = json!({"type": "object", "properties": {"v": schema}});
    Validator::new()
        .validate(&wrapper, &json!({"v": value}), None)
        .is_ok()
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::SchemaGenerator::default().into_root_schema_for::<T>())
        .unwrap_or_default()
}

/// Text made of the pieces a value of a kind is built from, valid or not.
fn pieces(parts: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(parts), 0..max).prop_map(|v| v.concat())
}

const ENDPOINT_PARTS: &[&str] = &[
    "GET ", "POST ", "DELETE ", "get ", "FETCH ", " ", "/", "/", "/", "a", "Z", "9", ".", ".", "*",
    "-", "_", "~", "?", "#", "%2F", "v1", "é",
];

const DURATION_PARTS: &[&str] = &[
    "0", "1", "9", "60", "h", "m", "s", "ms", "d", " ", "100000", "99999", "999999", "1000000", "-",
];

const USD_PARTS: &[&str] = &[
    "0",
    "1",
    "9",
    "00",
    "123456789",
    "1000000000",
    ".",
    ".5",
    "000001",
    "0000001",
    "-",
    "e3",
    " ",
];

const TIME_PARTS: &[&str] = &[
    "2026",
    "0000",
    "9999",
    "-",
    "-",
    "01",
    "02",
    "12",
    "13",
    "29",
    "30",
    "31",
    "T",
    "t",
    " ",
    ":",
    ":",
    "00",
    "23",
    "24",
    "59",
    "60",
    ".",
    "5",
    "123456789",
    "Z",
    "z",
    "+",
    "05:30",
    "+99:00",
    "[UTC]",
];

const NAME_PARTS: &[&str] = &["a", "z", "0", "-", ".", "A", "_", "abcdefghij", "."];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn endpoints(s in prop_oneof![pieces(ENDPOINT_PARTS, 12), "\\PC{0,24}"]) {
        let schema = schema_of::<EndpointPattern>();
        let admitted = schema_admits(&schema, &json!(s));
        let parsed = serde_json::from_value::<EndpointPattern>(json!(s));
        prop_assert_eq!(admitted, parsed.is_ok(), "{:?}: schema {} parser {:?}", s, admitted, parsed);
    }

    #[test]
    fn durations(s in prop_oneof![pieces(DURATION_PARTS, 6), "\\PC{0,12}"]) {
        let schema = schema_of::<KubeDuration>();
        let admitted = schema_admits(&schema, &json!(s));
        let parsed = serde_json::from_value::<KubeDuration>(json!(s));
        prop_assert_eq!(admitted, parsed.is_ok(), "{:?}: schema {} parser {:?}", s, admitted, parsed);
    }

    #[test]
    fn money_as_text(s in prop_oneof![pieces(USD_PARTS, 5), "\\PC{0,14}"]) {
        let schema = schema_of::<Usd>();
        let admitted = schema_admits(&schema, &json!(s));
        let parsed = serde_json::from_value::<Usd>(json!(s));
        prop_assert_eq!(admitted, parsed.is_ok(), "{:?}: schema {} parser {:?}", s, admitted, parsed);
    }

    #[test]
    fn money_as_integers(n in prop_oneof![-5i64..5, 999_999_990i64..1_000_000_010, any::<i64>()]) {
        let schema = schema_of::<Usd>();
        let admitted = schema_admits(&schema, &json!(n));
        let parsed = serde_json::from_value::<Usd>(json!(n));
        prop_assert_eq!(admitted, parsed.is_ok(), "{}: schema {} parser {:?}", n, admitted, parsed);
    }

    /// Times: every time the schema admits (its pattern; the API server's `date-time` check only
    /// narrows it further) is read by the binaries. The parser reads more (offsets with
    /// seconds, bracketed zones), which the schema refuses: safe, as what is stored always parses.
    #[test]
    fn times(s in prop_oneof![
        pieces(TIME_PARTS, 12),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
    ]) {
        let schema = json!({"type": "string", "pattern": crate::names::RFC3339_PATTERN});
        let admitted = schema_admits(&schema, &json!(s));
        let parsed = serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>(json!(s));
        // Go's date-time check refuses days past the month's end; the pattern alone does not.
        let real_day = parsed.is_ok() || !admitted || jiff_refuses_only_the_day(&s);
        prop_assert!(real_day, "{:?}: admitted by the schema, refused by the parser: {:?}", s, parsed);
    }

    #[test]
    fn names(s in prop_oneof![pieces(NAME_PARTS, 30), "[a-z0-9.-]{250,256}"]) {
        let schema = json!({"type": "string", "pattern": DNS_SUBDOMAIN_PATTERN, "maxLength": 253});
        prop_assert_eq!(schema_admits(&schema, &json!(s)), is_dns_subdomain(&s), "{:?}", s);
    }
}

/// The bounds rule is the one the duration schema carries, and the edges sit where the parser
/// puts them.
#[test]
fn duration_edges() {
    let schema = schema_of::<KubeDuration>();
    assert_eq!(schema["x-kubernetes-validations"][0]["rule"], BOUNDS_RULE);
    assert_eq!(schema["pattern"], DURATION_PATTERN);
    assert_eq!(
        schema_of::<EndpointPattern>()["pattern"],
        crate::endpoint::ENDPOINT_PATTERN
    );
    for (text, ok) in [
        ("1s", true),
        ("0s", false),
        ("0h0m0s", false),
        ("100000h", true),
        ("100000h1s", false),
        ("99999h59m60s", true),
        ("999999h", false),
    ] {
        assert_eq!(schema_admits(&schema, &json!(text)), ok, "{text}");
        assert_eq!(text.parse::<KubeDuration>().is_ok(), ok, "{text}");
    }
}

/// Whether `s` is refused only because its day does not exist in its month (30 February): the
/// API server's own `date-time` check refuses those as well.
fn jiff_refuses_only_the_day(s: &str) -> bool {
    let (Some(y), Some(m), Some(d)) = (s.get(0..4), s.get(5..7), s.get(8..10)) else {
        return false;
    };
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i16>(), m.parse::<i8>(), d.parse::<i8>()) else {
        return false;
    };
    jiff::civil::Date::new(y, m, d).is_err()
}

/// The schema of `spec.expiresAt` carries the pattern.
#[test]
fn expires_at_carries_the_time_pattern() {
    let crd = serde_json::to_value(<crate::VaultKey as kube::CustomResourceExt>::crd())
        .unwrap_or_default();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["expiresAt"]["pattern"],
        crate::names::RFC3339_PATTERN
    );
}
