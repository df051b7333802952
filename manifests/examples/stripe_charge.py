"""The seeds' Hatchet charge step, unchanged but for the base URL: three $200 PaymentIntents
with the vault key from the environment (STRIPE_API_KEY and STRIPE_API_BASE, as the VaultKey's
Secret provides them)."""
import os

import stripe

stripe.api_key = os.environ["STRIPE_API_KEY"]
stripe.api_base = os.environ["STRIPE_API_BASE"]

for customer in ["cus_1", "cus_2", "cus_3"]:
    try:
        pi = stripe.PaymentIntent.create(
            amount=20000, currency="usd", payment_method="pm_card_visa", confirm=True,
            idempotency_key=f"run-7f3a-{customer}",
        )
        print(f"charged {customer}: {pi.id} {pi.status}")
    except stripe.error.RateLimitError as e:
        if "cap_exhausted" in str(e):
            print(f"refused {customer}: {e.error.code}")
        else:
            raise
    except stripe.error.AuthenticationError as e:
        print(f"refused {customer}: {e.error.code}")
