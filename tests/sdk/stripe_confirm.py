"""Creates N unconfirmed PaymentIntents of AMOUNT (no money moves), then confirms each: the
amount moves at confirm. Prints JSON results of the confirms. Usage: stripe_confirm.py N AMOUNT."""
import json
import os
import sys

import stripe

n, amount = int(sys.argv[1]), int(sys.argv[2])
stripe.api_key = os.environ["STRIPE_API_KEY"]
stripe.api_base = os.environ["STRIPE_API_BASE"]
intents = [stripe.PaymentIntent.create(amount=amount, currency="usd", payment_method="pm_card_visa") for _ in range(n)]
results = []
for pi in intents:
    try:
        done = stripe.PaymentIntent.confirm(pi["id"])
        results.append({"ok": done["id"], "status": done["status"]})
    except stripe.error.RateLimitError as e:
        results.append({"rate_limited": e.error.code, "message": str(e)})
print(json.dumps({"created": [pi["status"] for pi in intents], "confirms": results}))
