//! What a policy's keys may reach besides money: whose objects, which customers and which
//! parameters. Everything here widens the default, which is the narrowest: a key acts only on
//! objects it created through the proxy, names only customers it created, and sends no parameter
//! that reaches another account, another object or the merchant's own prices.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointPattern;

/// Which keys may act on an object by id (`/v1/payment_intents/{id}/capture`, `GET
/// /v1/customers/{id}`, a `payment_intent` named in a refund).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum ObjectScope {
    /// Only the key that created the object through the proxy.
    #[default]
    Key,
    /// Also every key of the same `runLabel` (a run's child workflows with keys of their own).
    Run,
}

/// Which customers a call may name (`customer` on a PaymentIntent, a subscription or an invoice
/// item, and a customer's saved `payment_method`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum CustomerScope {
    /// Only customers created through the proxy within the object scope.
    #[default]
    Created,
    /// Any customer of the account, and its saved payment methods (billing runs that charge
    /// the merchant's existing customers).
    Any,
}

/// Parameters that are refused by default, turned on for the endpoints named.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParameterGrant {
    /// The endpoint, as in `allowedEndpoints` (`"POST /v1/payment_intents"`).
    pub endpoint: EndpointPattern,
    /// Parameter names as the vendor spells them, top level (`on_behalf_of`, `expand`,
    /// `transfer_data`); a name turns on the parameter and everything nested under it.
    #[schemars(length(min = 1, max = 64))]
    pub parameters: Vec<ParameterName>,
}

/// A vendor parameter name: letters, digits and `_`, as every vendor's API spells them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct ParameterName(#[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"))] pub String);

/// What a policy's keys may reach besides money (`spec.scope`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    // Fields in alphabetical order: the schema default (`{customers, objects}`) is then written
    // the same whether or not serde_json preserves insertion order in the build that writes it.
    /// Which customers a call may name: `Created` (default) or `Any`.
    #[serde(default)]
    pub customers: CustomerScope,
    /// Endpoints whose calls may act on objects no key of the scope created: a refund worker's
    /// `"POST /v1/refunds"`. Such a call reaches any object of the account; give these
    /// endpoints only to keys that need them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub existing_objects: Vec<EndpointPattern>,
    /// Who may act on an object by id: `Key` (default), the key that created it; `Run`, also
    /// the other keys of its `runLabel`.
    #[serde(default)]
    pub objects: ObjectScope,
    /// Parameters refused by default (connected accounts, `expand`, coupons, discounts,
    /// default payment methods), turned on per endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub parameters: Vec<ParameterGrant>,
}

impl Scope {
    /// Whether the parameter `name` (top level) is turned on for `method path`.
    pub fn parameter_granted(&self, method: &str, path: &str, name: &str) -> bool {
        self.parameters
            .iter()
            .any(|g| g.endpoint.matches(method, path) && g.parameters.iter().any(|p| p.0 == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_narrowest_and_grants_match_their_endpoint() {
        let s: Scope = serde_json::from_str("{}").unwrap();
        assert_eq!(s.objects, ObjectScope::Key);
        assert_eq!(s.customers, CustomerScope::Created);
        assert!(s.existing_objects.is_empty());
        let s: Scope = serde_json::from_value(serde_json::json!({
            "objects": "Run",
            "customers": "Any",
            "existingObjects": ["POST /v1/refunds"],
            "parameters": [{"endpoint": "POST /v1/payment_intents", "parameters": ["on_behalf_of"]}],
        }))
        .unwrap();
        assert_eq!(s.existing_objects.len(), 1);
        assert!(s.parameter_granted("POST", "/v1/payment_intents", "on_behalf_of"));
        assert!(!s.parameter_granted("POST", "/v1/charges", "on_behalf_of"));
        assert!(!s.parameter_granted("POST", "/v1/payment_intents", "transfer_data"));
        assert!(serde_json::from_str::<Scope>(r#"{"objects":"Anyone"}"#).is_err());
    }
}
