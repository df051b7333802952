"""The seeds' Hatchet fan-out: one parent run's vault key shared by WORKERS child runs in
parallel, each charging its customers with a run-scoped Idempotency-Key; a cap exhaustion is a
non-retriable step failure. Running it twice is a retried run: the same keys, no new charges.
Usage: hatchet_fanout.py WORKERS CUSTOMERS_PER_WORKER AMOUNT RUN_ID. Prints a JSON summary."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import stripe

workers, per_worker, amount, run_id = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stripe.api_key = os.environ["STRIPE_API_KEY"]
stripe.api_base = os.environ["STRIPE_API_BASE"]
stripe.max_network_retries = 2


def child(worker):
    charged, capped = [], 0
    for c in range(per_worker):
        customer = f"cus_{worker}_{c}"
        try:
            pi = stripe.PaymentIntent.create(
                amount=amount, currency="usd", payment_method="pm_card_visa", confirm=True,
                idempotency_key=f"{run_id}-{customer}",
            )
            charged.append(pi["id"])
        except stripe.error.RateLimitError as e:
            if "cap_exhausted" in str(e) and e.error.code == "cap_exhausted":
                capped += 1  # VENDOR_CAP_EXHAUSTED: non-retriable
            else:
                raise
    return charged, capped


with ThreadPoolExecutor(max_workers=workers) as pool:
    results = list(pool.map(child, range(workers)))
charged = sorted(i for r in results for i in r[0])
print(json.dumps({"charged": len(charged), "capped": sum(r[1] for r in results), "ids": charged}))
