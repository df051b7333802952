//! Endpoint allowlists: `"POST /v1/payment_intents"`, `"GET /v1/customers/*"`.
//!
//! A pattern is an HTTP method and an absolute path whose segments are literals or `*` (exactly
//! one non-empty segment). Matching is deliberately strict, because an allowlist that matches too
//! much is a hole: the method is compared case-insensitively (HTTP clients send upper case), the
//! path case-sensitively (vendors route `/v1/Charges` elsewhere or nowhere), a query string is
//! ignored, and one trailing slash is ignored on both sides. Paths that could mean something else
//! upstream (`..`, `.`, empty segments, encoded slashes or dots) never match.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces on each allowlist entry: exactly what the parser accepts
/// (segments that are `*` or literals of safe characters, never `.`, `..` or empty, one
/// trailing slash at most), so the API server refuses what the binaries could not read. The
/// agreement is tested over generated inputs (`agreement.rs`).
pub const ENDPOINT_PATTERN: &str = r"^(GET|POST|PUT|PATCH|DELETE|HEAD) /((\*|[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.\.[A-Za-z0-9._~-]+)(/(\*|[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.\.[A-Za-z0-9._~-]+))*/?)?$";

/// The longest entry the schema admits.
pub const MAX_LEN: usize = 512;

/// HTTP methods an allowlist may name.
pub const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Why a text is not an endpoint pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not `METHOD /path`.
    #[error(
        "endpoint {0:?} is not of the form \"METHOD /path\", e.g. \"POST /v1/payment_intents\""
    )]
    Shape(String),
    /// A method outside [`METHODS`].
    #[error("endpoint {0:?} has method {1:?}; use one of GET, POST, PUT, PATCH, DELETE, HEAD")]
    Method(String, String),
    /// A query, fragment, empty or dot segment, or a character outside the safe set.
    #[error("endpoint {0:?}: {1}")]
    Path(String, &'static str),
}

/// One segment of a pattern path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Any,
}

/// A parsed `METHOD /path` allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPattern {
    method: String,
    segments: Vec<Segment>,
}

impl EndpointPattern {
    /// The method, in upper case.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path's segments: `Some(literal)`, or `None` for `*`.
    pub fn segments(&self) -> impl Iterator<Item = Option<&str>> {
        self.segments.iter().map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            Segment::Any => None,
        })
    }

    /// Whether a request with this method and path (query allowed) is allowed by the pattern.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if !method.eq_ignore_ascii_case(&self.method) {
            return false;
        }
        let Some(segments) = request_segments(path) else {
            return false;
        };
        segments.len() == self.segments.len()
            && self.segments.iter().zip(&segments).all(|(p, s)| match p {
                Segment::Any => true,
                Segment::Literal(l) => l == s,
            })
    }

    /// Whether every request this pattern allows is also allowed by `wider` (used to check that a
    /// VaultKey only narrows its policy's allowlist).
    pub fn is_covered_by(&self, wider: &EndpointPattern) -> bool {
        self.method == wider.method
            && self.segments.len() == wider.segments.len()
            && self
                .segments
                .iter()
                .zip(&wider.segments)
                .all(|(mine, theirs)| matches!(theirs, Segment::Any) || mine == theirs)
    }
}

/// Whether any pattern in `list` allows the request.
pub fn any_matches(list: &[EndpointPattern], method: &str, path: &str) -> bool {
    list.iter().any(|p| p.matches(method, path))
}

/// Splits a request path into segments, or `None` when it must never match anything.
fn request_segments(path: &str) -> Option<Vec<&str>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rest = path.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let suspicious = |s: &&str| {
        s.is_empty() || *s == "." || *s == ".." || {
            let lower = s.to_ascii_lowercase();
            lower.contains("%2f")
                || lower.contains("%5c")
                || lower.contains("%2e")
                || s.contains('\\')
        }
    };
    if segments.iter().any(suspicious) {
        return None;
    }
    Some(segments)
}

fn safe_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')
}

impl FromStr for EndpointPattern {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<EndpointPattern, EndpointError> {
        if text.len() > MAX_LEN {
            return Err(EndpointError::Shape(text.to_owned()));
        }
        let (method, path) = text
            .split_once(' ')
            .ok_or_else(|| EndpointError::Shape(text.to_owned()))?;
        if method.is_empty() || path.is_empty() {
            return Err(EndpointError::Shape(text.to_owned()));
        }
        if !METHODS.contains(&method) {
            return Err(EndpointError::Method(text.to_owned(), method.to_owned()));
        }
        let path_err = |why| EndpointError::Path(text.to_owned(), why);
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| path_err("the path must start with /"))?;
        if path.contains(['?', '#']) {
            return Err(path_err(
                "a pattern has no query string or fragment; queries are ignored when matching",
            ));
        }
        if rest == "/" {
            return Err(path_err("the path has an empty segment (//)"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for seg in rest.split('/') {
                segments.push(match seg {
                    "" => return Err(path_err("the path has an empty segment (//)")),
                    "." | ".." => return Err(path_err("the path has a . or .. segment")),
                    "*" => Segment::Any,
                    s if s.contains('*') => {
                        return Err(path_err(
                            "* stands for a whole segment, like /v1/customers/*",
                        ));
                    }
                    s if s.chars().all(safe_segment_char) => Segment::Literal(s.to_owned()),
                    _ => {
                        return Err(path_err(
                            "segments may hold only letters, digits, '.', '_', '~', '-' or be *",
                        ));
                    }
                });
            }
        }
        Ok(EndpointPattern {
            method: method.to_owned(),
            segments,
        })
    }
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.method)?;
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            match s {
                Segment::Any => f.write_str("/*")?,
                Segment::Literal(l) => write!(f, "/{l}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for EndpointPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EndpointPattern, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EndpointPattern {
    fn schema_name() -> Cow<'static, str> {
        "EndpointPattern".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": ENDPOINT_PATTERN,
            "maxLength": MAX_LEN,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> EndpointPattern {
        s.parse().unwrap()
    }

    #[test]
    fn literal_paths_match_exactly() {
        let p = pat("POST /v1/payment_intents");
        assert!(p.matches("POST", "/v1/payment_intents"));
        assert!(!p.matches("POST", "/v1/payment_intents/pi_1"));
        assert!(!p.matches("POST", "/v1"));
        assert!(!p.matches("GET", "/v1/payment_intents"));
    }

    #[test]
    fn star_is_exactly_one_non_empty_segment() {
        let p = pat("GET /v1/customers/*");
        assert!(p.matches("GET", "/v1/customers/cus_123"));
        assert!(!p.matches("GET", "/v1/customers"));
        assert!(!p.matches("GET", "/v1/customers/"));
        assert!(!p.matches("GET", "/v1/customers//"));
        assert!(!p.matches("GET", "/v1/customers/cus_1/sources"));
        let twilio = pat("POST /2010-04-01/Accounts/*/Messages.json");
        assert!(twilio.matches("POST", "/2010-04-01/Accounts/AC123/Messages.json"));
    }

    #[test]
    fn trailing_slashes_are_ignored_once_on_both_sides() {
        let p = pat("POST /v1/payment_intents/");
        assert_eq!(p, pat("POST /v1/payment_intents"));
        assert!(p.matches("POST", "/v1/payment_intents/"));
        assert!(p.matches("POST", "/v1/payment_intents"));
        assert!(!p.matches("POST", "/v1/payment_intents//"));
    }

    #[test]
    fn query_strings_and_fragments_are_ignored() {
        let p = pat("GET /v1/customers/*");
        assert!(p.matches("GET", "/v1/customers/cus_1?expand[]=sources"));
        assert!(p.matches("GET", "/v1/customers/cus_1#x"));
        assert!(!p.matches("GET", "/v1/customers?id=/x/y"));
    }

    #[test]
    fn method_is_case_insensitive_and_path_is_not() {
        let p = pat("POST /v1/charges");
        assert!(p.matches("post", "/v1/charges"));
        assert!(!p.matches("POST", "/v1/Charges"));
        assert!(!p.matches("POST", "/V1/charges"));
    }

    #[test]
    fn paths_that_could_mean_something_else_never_match() {
        let p = pat("GET /v1/customers/*");
        for path in [
            "/v1/customers/..",
            "/v1/customers/.",
            "/v1/customers/a%2Fb",
            "/v1/customers/a%2fb",
            "/v1/customers/%2e%2e",
            "/v1/customers/a\\b",
            "v1/customers/x",
            "",
        ] {
            assert!(!p.matches("GET", path), "{path}");
        }
        assert!(!pat("GET /v1/x/*").matches("GET", "/v1/x/../customers"));
    }

    #[test]
    fn refuses_malformed_patterns_with_the_reason() {
        let err = |s: &str| s.parse::<EndpointPattern>().unwrap_err().to_string();
        assert!(err("POST").contains("METHOD /path"));
        assert!(err("/v1/charges").contains("METHOD /path"));
        assert!(err("post /v1/charges").contains("use one of"));
        assert!(err("FETCH /v1/charges").contains("use one of"));
        assert!(err("POST v1/charges").contains("start with /"));
        assert!(err("POST /v1//charges").contains("empty segment"));
        assert!(err("POST /v1/../charges").contains(".."));
        assert!(err("POST /v1/ch*").contains("whole segment"));
        assert!(err("POST /v1/charges?x=1").contains("query"));
        assert!(err("POST /v1/ch%2Farges").contains("segments may hold"));
        assert!(err("POST  /v1/charges").contains("start with /"));
    }

    #[test]
    fn root_and_display_round_trip() {
        for s in [
            "GET /",
            "POST /v1/payment_intents",
            "GET /v1/customers/*",
            "POST /emails/batch",
        ] {
            assert_eq!(pat(s).to_string(), s);
        }
        assert!(pat("GET /").matches("GET", "/"));
    }

    #[test]
    fn coverage_only_narrows() {
        let wide = pat("GET /v1/customers/*");
        assert!(pat("GET /v1/customers/cus_1").is_covered_by(&wide));
        assert!(pat("GET /v1/customers/*").is_covered_by(&wide));
        assert!(!pat("POST /v1/customers/cus_1").is_covered_by(&wide));
        assert!(!pat("GET /v1/customers").is_covered_by(&wide));
        assert!(!pat("GET /v1/customers/*").is_covered_by(&pat("GET /v1/customers/cus_1")));
    }

    #[test]
    fn any_matches_checks_the_whole_list() {
        let list = vec![pat("POST /v1/payment_intents"), pat("GET /v1/customers/*")];
        assert!(any_matches(&list, "GET", "/v1/customers/c"));
        assert!(!any_matches(&list, "DELETE", "/v1/customers/c"));
        assert!(!any_matches(&[], "GET", "/"));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_and_matching_never_panic(p in "\\PC{0,60}", m in "[A-Za-z]{0,8}", path in "\\PC{0,80}") {
            if let Ok(pat) = p.parse::<EndpointPattern>() {
                let _ = pat.matches(&m, &path);
                prop_assert_eq!(pat.to_string().parse::<EndpointPattern>().unwrap(), pat);
            }
        }

        #[test]
        fn a_star_never_matches_a_dot_segment(seg in "\\.{1,2}") {
            let pat: EndpointPattern = "GET /v1/*".parse().unwrap();
            let path = format!("/v1/{seg}");
            prop_assert!(!pat.matches("GET", &path));
        }
    }
}
