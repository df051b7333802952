//! Vendor amounts to micro-dollars: minor units, zero- and three-decimal currencies, and the
//! policy's exchange rates. Conversions round up: a fraction of a micro-dollar is never lost.

use keybrake_crds::{Usd, spend_policy::Pricing};

use super::error::BadRequest;

/// Currencies without a minor unit (Stripe's list).
const ZERO_DECIMAL: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Currencies with three decimals (Stripe's list).
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

/// Decimal places of a currency's minor unit.
pub fn exponent(currency: &str) -> u32 {
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    }
}

/// Dollars per unit of `currency`, from the policy (USD is always 1).
pub fn rate(currency: &str, pricing: &Pricing) -> Result<Usd, BadRequest> {
    if currency == "usd" {
        return Ok(Usd::from_dollars(1).unwrap_or(Usd::ZERO));
    }
    pricing
        .currency_usd_rates
        .get(currency)
        .copied()
        .ok_or_else(|| BadRequest::NoRate(currency.to_owned()))
}

/// An amount in `currency`'s minor units as dollars.
pub fn minor_to_usd(amount: u64, currency: &str, pricing: &Pricing) -> Result<Usd, BadRequest> {
    let currency = currency.to_ascii_lowercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(BadRequest::Invalid(
            "currency",
            format!("{currency:?} is not a three-letter currency code"),
        ));
    }
    let per_unit = u128::from(rate(&currency, pricing)?.micros());
    let divisor = 10u128.pow(exponent(&currency));
    let micros = (u128::from(amount) * per_unit).div_ceil(divisor);
    u64::try_from(micros)
        .ok()
        .and_then(Usd::from_micros)
        .ok_or_else(|| {
            BadRequest::Invalid(
                "amount",
                format!(
                    "{amount} {currency} is above the largest amount Keybrake counts ($1000000000)"
                ),
            )
        })
}

/// Parses a non-negative integer amount as sent in a form or JSON.
pub fn parse_amount(field: &'static str, text: &str) -> Result<u64, BadRequest> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRequest::Invalid(
            field,
            format!("{text:?} is not a non-negative whole number of the currency's smallest unit"),
        ));
    }
    text.parse()
        .map_err(|_| BadRequest::Invalid(field, format!("{text} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        let mut p = Pricing::default();
        p.currency_usd_rates
            .insert("eur".into(), "1.08".parse().unwrap());
        p.currency_usd_rates
            .insert("jpy".into(), "0.0067".parse().unwrap());
        p.currency_usd_rates
            .insert("kwd".into(), "3.25".parse().unwrap());
        p
    }

    #[test]
    fn converts_minor_units_with_the_policy_rates() {
        let p = pricing();
        assert_eq!(minor_to_usd(1250, "usd", &p).unwrap().to_string(), "12.50");
        assert_eq!(minor_to_usd(1000, "eur", &p).unwrap().to_string(), "10.80");
        assert_eq!(
            minor_to_usd(1000, "JPY", &p).unwrap().to_string(),
            "6.70",
            "jpy has no minor unit"
        );
        assert_eq!(
            minor_to_usd(1000, "kwd", &p).unwrap().to_string(),
            "3.25",
            "kwd has three decimals"
        );
        assert_eq!(minor_to_usd(1, "jpy", &p).unwrap().micros(), 6_700);
        // 1 eur cent = 10_800 micros exactly; 1 fils of kwd = 3_250 micros exactly; rounding up elsewhere.
        let mut odd = Pricing::default();
        odd.currency_usd_rates
            .insert("gbp".into(), "1.000001".parse().unwrap());
        assert_eq!(
            minor_to_usd(1, "gbp", &odd).unwrap().micros(),
            10_001,
            "rounded up, never down"
        );
    }

    #[test]
    fn refuses_what_cannot_be_counted() {
        let p = pricing();
        assert_eq!(
            minor_to_usd(1, "chf", &p).unwrap_err(),
            BadRequest::NoRate("chf".into())
        );
        assert!(matches!(
            minor_to_usd(u64::MAX, "usd", &p),
            Err(BadRequest::Invalid("amount", _))
        ));
        assert!(matches!(
            minor_to_usd(1, "dollars", &p),
            Err(BadRequest::Invalid("currency", _))
        ));
        for bad in ["-1", "1.5", "", "1e3", " 1"] {
            assert!(parse_amount("amount", bad).is_err(), "{bad}");
        }
        assert!(parse_amount("amount", "99999999999999999999999").is_err());
    }
}
