//! Why a request is not forwarded: [`BadRequest`], with its machine code and whether it is a
//! policy decision or a request to fix.

/// A request the proxy will not forward because it cannot read or cost it exactly as the vendor
/// would; the message names the problem so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// A field with a value that cannot be used.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// A field sent twice, which would let the vendor and the proxy read different values.
    #[error("{0} is sent more than once; send it once")]
    Duplicate(String),
    /// A body that is not what the content type says.
    #[error("the request body is not valid {0}: {1}")]
    Body(&'static str, String),
    /// A parameter name outside the vendor's grammar.
    #[error("parameter name {0:?} is not one the vendor's API uses ({1})")]
    Name(String, &'static str),
    /// Parameters where the vendor's SDKs never put them for this method.
    #[error("{0}")]
    Placement(&'static str),
    /// A content type the adapter does not read.
    #[error("content type {0:?} is not accepted here; send {1}")]
    ContentType(String, &'static str),
    /// A header that is refused.
    #[error("the {0} header {1}")]
    Header(String, &'static str),
    /// A currency the policy has no exchange rate for.
    #[error(
        "no exchange rate for currency {0:?} in the SpendPolicy's pricing.currencyUsdRates; the call cannot be costed"
    )]
    NoRate(String),
    /// A call whose cost the proxy cannot bound, and the policy did not opt into.
    #[error(
        "{0}; the SpendPolicy must opt in with its worst case in pricing.worstCases to allow it"
    )]
    Unbounded(String),
    /// A call the proxy never forwards.
    #[error("{0}")]
    Refused(String),
    /// A parameter the endpoint does not take through the proxy, or a gated one (`grant`: the
    /// name the SpendPolicy's `spec.scope.parameters` would turn on).
    #[error("{}", not_allowed(.parameter, .endpoint, .grant))]
    NotAllowed {
        /// The parameter as sent (`payment_intent_data[transfer_data][destination]`).
        parameter: String,
        /// The endpoint, as an allowlist pattern.
        endpoint: String,
        /// The name to grant, when a grant can turn the parameter on.
        grant: Option<String>,
    },
}

impl BadRequest {
    /// The machine code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            BadRequest::Header(..) => "header_not_allowed",
            BadRequest::NoRate(_) => "currency_without_rate",
            BadRequest::Unbounded(_) => "cost_unbounded",
            BadRequest::Refused(_) => "call_not_metered",
            BadRequest::NotAllowed { .. } => "parameter_not_allowed",
            _ => "invalid_request",
        }
    }

    /// Whether this is a policy decision (403) rather than a request to fix (400).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            BadRequest::Header(..)
                | BadRequest::Unbounded(_)
                | BadRequest::Refused(_)
                | BadRequest::NotAllowed { .. }
        )
    }
}

/// The words of a [`BadRequest::NotAllowed`]: with the name to grant when the parameter is one
/// the policy can turn on.
fn not_allowed(parameter: &str, endpoint: &str, grant: &Option<String>) -> String {
    match grant {
        None => format!(
            "{parameter} is not a parameter of {endpoint} that the proxy forwards: only those Stripe documents for the endpoint are"
        ),
        Some(g) => format!(
            "{parameter} on {endpoint} is off unless the SpendPolicy turns it on (parameters that reach connected accounts, expand linked objects, apply discounts or set default payment methods are): add {{endpoint: \"{endpoint}\", parameters: [\"{g}\"]}} to spec.scope.parameters"
        ),
    }
}
