"""The seeds' Hatchet charge step, unchanged but for the base URL: charges customers through the
proxy with the vault key from the environment (as a pod mounting the Secret would) and reports
what happened as JSON lines. Usage: stripe_run.py STYLE N AMOUNT [IDEMPOTENCY_PREFIX]
STYLE is "global" (stripe.api_key, retries on) or "client" (StripeClient)."""
import json
import os
import sys

import stripe

# A proxy serving a privately issued certificate: stripe-python pins its own CA bundle and reads
# no variable for one, so this is the one line it needs (the key's Secret names the file).
if "KEYBRAKE_CA_FILE" in os.environ:
    stripe.ca_bundle_path = os.environ["KEYBRAKE_CA_FILE"]

style, n, amount = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prefix = sys.argv[4] if len(sys.argv) > 4 else None
results = []

if style == "global":
    stripe.api_key = os.environ["STRIPE_API_KEY"]
    stripe.api_base = os.environ["STRIPE_API_BASE"]
    stripe.max_network_retries = 2
    create = stripe.PaymentIntent.create
else:
    client = stripe.StripeClient(os.environ["STRIPE_API_KEY"], base_addresses={"api": os.environ["STRIPE_API_BASE"]})
    create = lambda **kw: client.payment_intents.create(  # noqa: E731
        params={k: v for k, v in kw.items() if k != "idempotency_key"},
        options={"idempotency_key": kw["idempotency_key"]} if "idempotency_key" in kw else {},
    )

if style == "customer":
    # An endpoint the key does not allow.
    stripe.api_key = os.environ["STRIPE_API_KEY"]
    stripe.api_base = os.environ["STRIPE_API_BASE"]
    try:
        stripe.Customer.create(email="a@example.com")
        results.append({"ok": "customer"})
    except stripe.error.PermissionError as e:
        results.append({"permission_error": str(e), "http_status": e.http_status})
    print(json.dumps(results))
    sys.exit(0)

for i in range(n):
    kwargs = {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    if prefix:
        kwargs["idempotency_key"] = f"{prefix}-{i}"
    try:
        pi = create(**kwargs)
        results.append({"ok": pi["id"], "status": pi["status"]})
    except stripe.error.RateLimitError as e:
        results.append({"rate_limited": e.error.code, "message": str(e), "cap_exhausted": "cap_exhausted" in str(e), "http_status": e.http_status})
    except stripe.error.AuthenticationError as e:
        results.append({"auth_error": str(e), "http_status": e.http_status})
    except stripe.error.PermissionError as e:
        results.append({"permission_error": str(e), "http_status": e.http_status})
    except stripe.error.StripeError as e:
        results.append({"other_error": type(e).__name__, "message": str(e), "http_status": e.http_status})

print(json.dumps(results))
