"""The seeds' `issue_vault_key` step, unchanged but for the base URL: one key per workflow run
from the issuance API, used with the official Stripe SDK, then revoked with one DELETE.
Reads KEYBRAKE_PROXY_URL and KEYBRAKE_API_KEY (a ServiceAccount token; `keybrake dev` writes both
to .keybrake/env)."""
import os

import requests
import stripe

base = os.environ["KEYBRAKE_PROXY_URL"]
headers = {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}

resp = requests.post(
    f"{base}/vault/keys",
    headers=headers,
    json={
        "vendor": "stripe",
        "daily_usd_cap": 50,
        "allowed_endpoints": ["POST /v1/payment_intents"],
        "expires_in": "1h",
        "agent_run_label": "hatchet/billing-agent/demo-1",
    },
)
resp.raise_for_status()
key = resp.json()
print(f"issued {key['key_id']} ({key['state']}, {key['cap']}, expires {key['expires_at']})")

stripe.api_key = key["vault_key"]
stripe.api_base = f"{base}/stripe"
for amount in (3000, 3000):
    try:
        pi = stripe.PaymentIntent.create(amount=amount, currency="usd",
                                         payment_method="pm_card_visa", confirm=True)
        print(f"charged ${amount / 100:.2f}: {pi.id}")
    except stripe.error.RateLimitError as e:
        print(f"refused: {e.user_message}")

gone = requests.delete(f"{base}/vault/keys/{key['key_id']}", headers=headers).json()
print(f"revoked {gone['key_id']}: state {gone['state']}, spent ${gone['spend']['total_usd']}")
