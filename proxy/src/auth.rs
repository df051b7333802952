//! The vault key as each SDK sends it: `Authorization: Bearer kb_...` (Stripe, Resend) or
//! `Authorization: Basic base64(AC<key id>:<secret>)` (Twilio).

use base64::Engine;
use hyper::header::{AUTHORIZATION, HeaderMap};
use keybrake_ledger::{Token, TokenError};

/// Why no usable vault key was presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header.
    #[error("no vault key: send it as `Authorization: Bearer <vault key>` (Basic for Twilio)")]
    Missing,
    /// More than one Authorization header.
    #[error("more than one Authorization header; send exactly one")]
    Duplicate,
    /// A scheme other than Bearer or Basic.
    #[error("unsupported Authorization scheme; use Bearer (Stripe, Resend) or Basic (Twilio)")]
    Scheme,
    /// Basic credentials that are not base64 `user:password`.
    #[error("malformed Basic credentials: expected base64 of <account sid>:<auth token>")]
    Basic,
    /// Not a vault token.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Reads the vault token from the request headers.
pub fn credential(headers: &HeaderMap) -> Result<Token, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Duplicate);
    }
    let text = value.to_str().map_err(|_| AuthError::Scheme)?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Scheme)?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(Token::parse_bearer(rest.trim())?),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| AuthError::Basic)?;
            let pair = String::from_utf8(raw).map_err(|_| AuthError::Basic)?;
            let (user, password) = pair.split_once(':').ok_or(AuthError::Basic)?;
            Ok(Token::parse_twilio(user, password)?)
        }
        _ => Err(AuthError::Scheme),
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;
    use keybrake_crds::Vendor;
    use keybrake_ledger::{KeyId, PolicyTag};

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_bearer_and_basic() {
        let t = Token::generate(Vendor::Stripe, KeyId::generate(&PolicyTag::of("a", "b")));
        assert_eq!(
            credential(&headers(&[&format!("Bearer {}", t.bearer())])).unwrap(),
            t
        );
        assert_eq!(
            credential(&headers(&[&format!("bearer  {} ", t.bearer())])).unwrap(),
            t
        );
        let tw = Token::generate(Vendor::Twilio, KeyId::generate(&PolicyTag::of("a", "b")));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            tw.twilio_sid(),
            tw.secret()
        ));
        assert_eq!(
            credential(&headers(&[&format!("Basic {basic}")])).unwrap(),
            tw
        );
    }

    #[test]
    fn refuses_missing_duplicate_and_malformed() {
        let t = Token::generate(Vendor::Stripe, KeyId::generate(&PolicyTag::of("a", "b")));
        let bearer = format!("Bearer {}", t.bearer());
        assert_eq!(credential(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            credential(&headers(&[&bearer, &bearer])),
            Err(AuthError::Duplicate)
        );
        assert_eq!(credential(&headers(&["Token abc"])), Err(AuthError::Scheme));
        assert_eq!(credential(&headers(&["Bearer"])), Err(AuthError::Scheme));
        assert!(matches!(
            credential(&headers(&["Bearer sk_live_real_key"])),
            Err(AuthError::Token(_))
        ));
        assert_eq!(credential(&headers(&["Basic !!!"])), Err(AuthError::Basic));
        let no_colon = base64::engine::general_purpose::STANDARD.encode("ACabc");
        assert_eq!(
            credential(&headers(&[&format!("Basic {no_colon}")])),
            Err(AuthError::Basic)
        );
    }

    proptest::proptest! {
        /// Any Authorization bytes are refused or parsed, never a panic; what parses is a token
        /// that prints back to what was sent.
        #[test]
        fn any_authorization_header_is_refused_or_a_token(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                headers.insert(hyper::header::AUTHORIZATION, v);
                if let Ok(token) = credential(&headers) {
                    proptest::prop_assert!(!token.secret().is_empty());
                }
            }
        }
    }
}
