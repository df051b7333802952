"""The seeds' Hatchet flow against the issuance API, with `requests` as in the seed: issue a vault
key for the run (POST /vault/keys), fan out to CHILDREN child runs that share it, each charging its
customers with a run-scoped Idempotency-Key until the cap refuses (non-retriable), read the key's
spend (GET), revoke it (DELETE) and check the very next call is refused.
Usage: hatchet_issue_flow.py CHILDREN PER_CHILD AMOUNT_CENTS BUDGET_USD RUN_ID
Environment: KEYBRAKE_URL (the proxy, the only thing changed from the seed) and KEYBRAKE_API_KEY
(a Kubernetes ServiceAccount token). Prints a JSON summary."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import requests
import stripe

children, per_child, amount, budget, run_id = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
base = os.environ["KEYBRAKE_URL"]
headers = {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}


def issue_vault_key():
    resp = requests.post(
        f"{base}/vault/keys",
        headers=headers,
        json={
            "vendor": "stripe",
            "daily_usd_cap": budget,
            "allowed_endpoints": ["POST /v1/payment_intents"],
            "expires_in": "2h",
            "agent_run_label": f"hatchet/billing-agent/{run_id}",
        },
    )
    resp.raise_for_status()
    return resp.json()


issued = issue_vault_key()
vault_key = issued["vault_key"]
stripe.api_key = vault_key
stripe.api_base = f"{base}/stripe"
stripe.max_network_retries = 2


def charge_customers(child):
    """A spawn_workflow() child: the parent's vault key comes in its input."""
    charged, capped = [], 0
    for c in range(per_child):
        customer = f"cus_{child}_{c}"
        try:
            pi = stripe.PaymentIntent.create(
                amount=amount, currency="usd", payment_method="pm_card_visa", confirm=True,
                idempotency_key=f"{run_id}-{customer}",
            )
            charged.append(pi["id"])
        except stripe.error.RateLimitError as e:
            if "cap_exhausted" in str(e):
                capped += 1  # VENDOR_CAP_EXHAUSTED: non-retriable, the step fails
            else:
                raise
    return charged, capped


with ThreadPoolExecutor(max_workers=children) as pool:
    results = list(pool.map(charge_customers, range(children)))

shown = requests.get(f"{base}/vault/keys/{issued['key_id']}", headers=headers).json()
listed = requests.get(f"{base}/vault/keys", headers=headers,
                      params={"run_label": f"hatchet/billing-agent/{run_id}"}).json()
revoked = requests.delete(f"{base}/vault/keys/{issued['key_id']}", headers=headers)
try:
    stripe.PaymentIntent.create(amount=amount, currency="usd", payment_method="pm_card_visa",
                                confirm=True)
    after = "charged"
except stripe.error.AuthenticationError as e:
    after = e.error.code if e.error else str(e)

print(json.dumps({
    "key_id": issued["key_id"],
    "issued_state": issued["state"],
    "token_prefix": vault_key[:10],
    "charged": sum(len(r[0]) for r in results),
    "capped": sum(r[1] for r in results),
    "spend_total_usd": shown["spend"]["total_usd"],
    "listed": [k["key_id"] for k in listed["keys"]],
    "revoke_status": revoked.status_code,
    "revoked_state": revoked.json()["state"],
    "after_revoke": after,
}))
