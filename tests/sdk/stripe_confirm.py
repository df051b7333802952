"""Creates N PaymentIntents of AMOUNT without confirming them, then confirms each one that was
created. Prints JSON: what each create returned (its status, or the refusal) and each confirm.
Usage: stripe_confirm.py N AMOUNT."""
import json
import os
import sys

import stripe

n, amount = int(sys.argv[1]), int(sys.argv[2])
stripe.api_key = os.environ["STRIPE_API_KEY"]
stripe.api_base = os.environ["STRIPE_API_BASE"]


def attempt(call):
    try:
        return call(), None
    except stripe.error.RateLimitError as e:
        return None, {"rate_limited": e.error.code, "message": str(e)}


created, intents = [], []
for _ in range(n):
    pi, refused = attempt(lambda: stripe.PaymentIntent.create(amount=amount, currency="usd", payment_method="pm_card_visa"))
    created.append(refused or pi["status"])
    if pi:
        intents.append(pi)
results = []
for pi in intents:
    done, refused = attempt(lambda: stripe.PaymentIntent.confirm(pi["id"]))
    results.append(refused or {"ok": done["id"], "status": done["status"]})
print(json.dumps({"created": created, "confirms": results}))
