//! The scope stage: which of the objects a call names the ledger must find to be the key's own,
//! after what the SpendPolicy's `spec.scope` widens. Pure; the ledger does the check itself, in
//! the same script as the caps, so it holds for the check before a prefetch too.

use keybrake_crds::scope::{CustomerScope, ObjectScope, Scope};

use crate::{
    adapters::{
        Request,
        reach::{self, Named},
    },
    refusal::Refusal,
};

/// What the ledger checks: objects that must be the key's own, and whether its run's count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owned {
    /// Object ids, each checked against its recorded creator.
    pub objects: Vec<String>,
    /// Objects created by keys of the same run label count as the key's own.
    pub run: bool,
    /// `scope.existingObjects` lets the call reach objects no key created.
    pub existing: bool,
}

/// Whether `scope.existingObjects` lets `call` reach objects no key created. `*` stands for one
/// object id of the vendor here, as in the allowlist the reserve script reads: a pattern never
/// widens a word of the vendor's API (`GET /v1/customers/*` is not `/v1/customers/search`).
pub fn reaches_existing(call: &Request, scope: &Scope) -> bool {
    let segs = call.segments();
    scope.existing_objects.iter().any(|pattern| {
        pattern.matches(&call.method, &call.path)
            && pattern
                .segments()
                .zip(&segs)
                .all(|(p, s)| p.is_some() || reach::is_id(call.vendor, s))
    })
}

/// The objects of `call` that must be the key's own under `scope`, or the refusal of a listing.
pub fn owned(call: &Request, scope: &Scope) -> Result<Owned, Refusal> {
    let reach = reach::reach(call);
    let existing = reaches_existing(call, scope);
    if reach.listing && !existing {
        return Err(Refusal::ListingNotOwned {
            method: call.method.clone(),
            path: call.path.clone(),
        });
    }
    let mut objects: Vec<String> = reach
        .named
        .into_iter()
        .filter_map(|n| match n {
            Named::Object(id) if !existing => Some(id),
            Named::Customer(id) if scope.customers == CustomerScope::Created => Some(id),
            _ => None,
        })
        .collect();
    objects.sort();
    objects.dedup();
    Ok(Owned {
        objects,
        run: scope.objects == ObjectScope::Run,
        existing,
    })
}

#[cfg(test)]
mod tests {
    use keybrake_crds::Vendor;

    use super::*;
    use crate::adapters::testing::call;

    fn scope(v: serde_json::Value) -> Scope {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_default_scope_checks_every_named_object() {
        let c = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&customer=cus_9s6X&payment_method=pm_1Saved",
        );
        let o = owned(&c, &Scope::default()).unwrap();
        assert_eq!(o.objects, ["cus_9s6X", "pm_1Saved"]);
        assert!(!o.run);
        let any = scope(serde_json::json!({"customers": "Any", "objects": "Run"}));
        let o = owned(&c, &any).unwrap();
        assert!(o.objects.is_empty());
        assert!(o.run);
    }

    #[test]
    fn existing_objects_widen_only_their_endpoint() {
        let refund = call(
            Vendor::Stripe,
            "POST",
            "/v1/refunds",
            "payment_intent=pi_3Nco&customer=cus_9s6X",
        );
        let worker = scope(serde_json::json!({"existingObjects": ["POST /v1/refunds"]}));
        // The customer still follows the customer scope.
        assert_eq!(owned(&refund, &worker).unwrap().objects, ["cus_9s6X"]);
        let capture = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents/pi_3Nco/capture",
            "",
        );
        assert_eq!(owned(&capture, &worker).unwrap().objects, ["pi_3Nco"]);
        let list = call(Vendor::Stripe, "GET", "/v1/charges", "limit=3");
        let r = owned(&list, &worker).unwrap_err();
        assert_eq!(r.code(), "object_not_owned");
        // `*` widens an object id, never a word of the API.
        let reader = scope(serde_json::json!({"existingObjects": ["GET /v1/customers/*"]}));
        let read = |path: &str| call(Vendor::Stripe, "GET", path, "");
        assert!(reaches_existing(&read("/v1/customers/cus_9s6X"), &reader));
        assert!(!reaches_existing(&read("/v1/customers/search"), &reader));
        let lister = scope(serde_json::json!({"existingObjects": ["GET /v1/charges"]}));
        assert!(owned(&list, &lister).unwrap().objects.is_empty());
    }
}
