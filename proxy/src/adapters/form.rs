//! Form parameters (`a=1&b%5Bc%5D=2`) read strictly, and written back in one canonical encoding.
//!
//! The proxy forwards its own encoding of what it parsed, never the caller's bytes, so the vendor
//! reads exactly the parameters that were costed and checked. Reading refuses whatever two
//! parsers could read differently: invalid percent escapes, bytes that are not UTF-8 once
//! decoded, empty names, names outside the vendor's grammar, and a name sent twice (also when
//! only its case differs) unless the vendor reads it as a list.

use std::collections::HashMap;

use super::error::BadRequest;

/// A vendor's parameter grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// Stripe: `snake_case` roots with bracketed sub-keys (`metadata[order id]`,
    /// `items[0][price]`, `expand[]`); a name ending in `[]` may repeat.
    Stripe,
    /// Twilio: `PascalCase` names (`To`, `Body`, `MediaUrl`), dotted parts allowed; the names
    /// listed may repeat (Twilio reads them as lists).
    Twilio(&'static [&'static str]),
    /// Resend query strings: `snake_case` names.
    Resend,
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte;
/// anything else about `%` is refused rather than guessed.
fn decode(part: &str) -> Result<String, BadRequest> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| {
                        bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()
                    })
                    .ok_or_else(|| {
                        BadRequest::Body("form data", format!("{part:?} has an invalid % escape"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| BadRequest::Body("form data", format!("{part:?} is not UTF-8 once decoded")))
}

fn stripe_name(name: &str) -> bool {
    let root_end = name.find('[').unwrap_or(name.len());
    let (root, mut rest) = name.split_at(root_end);
    let mut chars = root.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase())
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    // Each sub-key is `[...]` with no bracket inside (metadata keys are the caller's words).
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return false;
        };
        let Some(close) = inner.find(']') else {
            return false;
        };
        if inner[..close].contains('[') {
            return false;
        }
        rest = &inner[close + 1..];
    }
    true
}

fn twilio_name(name: &str) -> bool {
    name.split('.').enumerate().all(|(i, part)| {
        let mut chars = part.chars();
        let first = chars.next();
        (if i == 0 {
            first.is_some_and(|c| c.is_ascii_uppercase())
        } else {
            first.is_some_and(|c| c.is_ascii_alphanumeric())
        }) && chars.all(|c| c.is_ascii_alphanumeric())
    })
}

fn resend_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Grammar {
    fn allows(self, name: &str) -> bool {
        match self {
            Grammar::Stripe => stripe_name(name),
            Grammar::Twilio(_) => twilio_name(name),
            Grammar::Resend => resend_name(name),
        }
    }

    fn repeatable(self, name: &str) -> bool {
        match self {
            Grammar::Stripe => name.ends_with("[]"),
            Grammar::Twilio(lists) => lists.contains(&name),
            Grammar::Resend => false,
        }
    }

    fn example(self) -> &'static str {
        match self {
            Grammar::Stripe => "snake_case with [sub] keys, like metadata[order]",
            Grammar::Twilio(_) => "PascalCase, like To or MediaUrl",
            Grammar::Resend => "snake_case",
        }
    }
}

/// Parses form text under `grammar`.
pub fn parse(text: &[u8], grammar: Grammar) -> Result<Vec<(String, String)>, BadRequest> {
    let text = std::str::from_utf8(text)
        .map_err(|_| BadRequest::Body("form data", "it is not UTF-8".into()))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::new();
    let mut seen: HashMap<String, bool> = HashMap::new();
    let mut scalar_roots = std::collections::HashSet::new();
    let mut nested_roots = std::collections::HashSet::new();
    for piece in text.split('&') {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = decode(name)?;
        let value = decode(value)?;
        if name.is_empty() {
            return Err(BadRequest::Body(
                "form data",
                "it has an empty parameter name (a stray & or =)".into(),
            ));
        }
        if !grammar.allows(&name) {
            return Err(BadRequest::Name(name, grammar.example()));
        }
        // Vendors differ on case; a second spelling of a name is a second value.
        let repeatable = grammar.repeatable(&name);
        if let Some(&was_repeatable) = seen.get(&name.to_ascii_lowercase())
            && !(repeatable && was_repeatable)
        {
            return Err(BadRequest::Duplicate(name));
        }
        seen.insert(name.to_ascii_lowercase(), repeatable);
        // `amount=5&amount[x]=1`: one name as a value and as a hash is read two ways.
        if let Some((root, _)) = name.split_once('[') {
            nested_roots.insert(root.to_owned());
        } else {
            scalar_roots.insert(name.clone());
        }
        pairs.push((name, value));
    }
    if let Some(both) = scalar_roots.intersection(&nested_roots).next() {
        return Err(BadRequest::Duplicate(both.clone()));
    }
    Ok(pairs)
}

/// The canonical encoding of `pairs` (what is forwarded and fingerprinted).
pub fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The value of the parameter `name`, if sent.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TW: Grammar = Grammar::Twilio(&["MediaUrl"]);

    #[test]
    fn reads_what_the_sdks_send() {
        let p = parse(
            b"amount=1250&currency=usd&metadata[order id]=A%26B&expand[]=a&expand[]=b&description=a+b",
            Grammar::Stripe,
        )
        .unwrap();
        assert_eq!(field(&p, "metadata[order id]"), Some("A&B"));
        assert_eq!(field(&p, "description"), Some("a b"));
        assert_eq!(p.len(), 6);
        let t = parse(b"To=%2B1555&Body=hi&MediaUrl=a&MediaUrl=b", TW).unwrap();
        assert_eq!(field(&t, "To"), Some("+1555"));
        assert_eq!(parse(b"", Grammar::Stripe).unwrap(), Vec::new());
    }

    #[test]
    fn refuses_what_two_parsers_could_read_differently() {
        for (body, g) in [
            (&b"amount=1&amount=2"[..], Grammar::Stripe),
            (b"amount=1&Amount=2", Grammar::Stripe),
            (b"Body=a&BODY=b", TW),
            (b"body=x", TW),
            (b"To=1&To=2", TW),
            (b"amount=5&amount[x]=1", Grammar::Stripe),
            (b"amount=%", Grammar::Stripe),
            (b"amount=%4", Grammar::Stripe),
            (b"amount=%zz", Grammar::Stripe),
            (b"amount=%FF", Grammar::Stripe),
            (b"amount=1&&currency=usd", Grammar::Stripe),
            (b"=1", Grammar::Stripe),
            (b"Amount=1", Grammar::Stripe),
            (b"a[b[c]]=1", Grammar::Stripe),
            (b"a[b=1", Grammar::Stripe),
            (b"a]=1", Grammar::Stripe),
            (b"amount=\xff", Grammar::Stripe),
        ] {
            assert!(parse(body, g).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_canonical_encoding_reads_back_the_same() {
        let pairs = parse(b"metadata[a b]=x%3By&c=%2B1&d=", Grammar::Stripe).unwrap();
        let text = encode(&pairs);
        assert_eq!(parse(text.as_bytes(), Grammar::Stripe).unwrap(), pairs);
        assert!(!text.contains(';'));
    }
}
