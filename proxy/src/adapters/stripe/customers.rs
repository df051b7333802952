//! Customers: creating or editing one is free, but not with the parameters that change what
//! its next invoice charges.

use keybrake_crds::Usd;

use crate::adapters::{
    error::BadRequest,
    request::{Plan, Request},
};

/// Customer parameters that change what its next invoice charges, or that subscribed it under
/// API versions from before 2018 (`plan`, `quantity`, `trial_end`).
const CUSTOMER_REFUSED: [&str; 6] = [
    "balance",
    "cash_balance",
    "account_balance",
    "plan",
    "quantity",
    "trial_end",
];

/// Creating or editing a customer.
pub(super) fn edit(call: &Request) -> Result<Plan, BadRequest> {
    if let Some((name, _)) = call.pairs().iter().find(|(k, _)| {
        let root = k.split('[').next().unwrap_or_default();
        CUSTOMER_REFUSED.contains(&root)
    }) {
        return Err(BadRequest::Refused(format!(
            "{name} on a customer changes what its next invoice charges, outside any cap"
        )));
    }
    Ok(Plan::Known(Usd::ZERO))
}
