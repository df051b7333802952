"""The seeds' Hatchet billing run as Celery tasks on a Redis broker (Hatchet's engine needs its
own server; Celery has the same shape and runs anywhere): the run issues one vault key
(POST /vault/keys), a group of child tasks shares it, steps retry on transient errors with
`autoretry_for`/`max_retries`, Idempotency-Keys come from the run id so a retried step never
charges twice, and a cap refusal is final (returned, never retried).

Worker:  celery -A billing_flow worker --pool=threads --concurrency=8
Run:     python3 billing_flow.py CHILDREN PER_CHILD AMOUNT_CENTS BUDGET_USD RUN_ID [REVOKE_AFTER]
         REVOKE_AFTER: revoke the key (DELETE /vault/keys/{id}) once that many charges went through.
Environment: CELERY_BROKER (redis://...), KEYBRAKE_URL (the proxy), KEYBRAKE_API_KEY (a
Kubernetes ServiceAccount token). Prints a JSON summary."""
import json
import os
import sys
import time

import requests
import stripe
from celery import Celery, group

app = Celery("billing_flow", broker=os.environ["CELERY_BROKER"], backend=os.environ["CELERY_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, result_expires=3600)

KEYBRAKE_URL = os.environ["KEYBRAKE_URL"]
HEADERS = {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}


class WorkerLost(Exception):
    """A transient failure after the charge was sent (a worker killed mid-step): Celery retries."""


@app.task(bind=True, autoretry_for=(WorkerLost, stripe.error.APIConnectionError), max_retries=3, default_retry_delay=0)
def charge(self, vault_key: str, run_id: str, child: int, customer: int, amount: int, flaky: bool) -> dict:
    stripe.api_key = vault_key
    stripe.api_base = KEYBRAKE_URL
    try:
        intent = stripe.PaymentIntent.create(
            amount=amount,
            currency="usd",
            payment_method="pm_card_visa",
            confirm=True,
            # The run id makes the key stable across Celery's retries of this step.
            idempotency_key=f"{run_id}-{child}-{customer}",
        )
    except stripe.error.RateLimitError as e:
        if e.error and e.error.code == "cap_exhausted":
            return {"capped": True}  # final: retrying cannot help
        raise
    except stripe.error.AuthenticationError as e:
        if e.error and e.error.code == "vault_key_revoked":
            return {"revoked": True}  # final: the run was stopped
        raise
    if flaky and self.request.retries == 0:
        raise WorkerLost("the worker died after the charge was sent")
    return {"charged": intent["id"], "replayed": self.request.retries > 0}


def issue_vault_key(run_id: str, budget_usd: float) -> dict:
    r = requests.post(
        f"{KEYBRAKE_URL}/vault/keys",
        headers=HEADERS,
        json={
            "vendor": "stripe",
            "daily_usd_cap": budget_usd,
            "allowed_endpoints": ["POST /v1/payment_intents"],
            "expires_in": "2h",
            "agent_run_label": f"celery-billing/{run_id}",
        },
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def run(children: int, per_child: int, amount: int, budget: float, run_id: str, revoke_after: int | None) -> dict:
    key = issue_vault_key(run_id, budget)
    # Every child's first step is "flaky": its worker dies after the charge and Celery retries it.
    jobs = group(
        charge.s(key["vault_key"], run_id, child, customer, amount, customer == 0)
        for child in range(children)
        for customer in range(per_child)
    )
    if revoke_after is None:
        results = jobs.apply_async().get(timeout=120)
    else:
        pending = jobs.apply_async()
        while sum(1 for r in pending.results if r.ready() and "charged" in (r.result or {})) < revoke_after:
            time.sleep(0.02)
        requests.delete(f"{KEYBRAKE_URL}/vault/keys/{key['key_id']}", headers=HEADERS, timeout=30).raise_for_status()
        results = pending.get(timeout=120)
    return {
        "key_id": key["key_id"],
        "charged": sum(1 for r in results if "charged" in r),
        "retried_and_replayed": sum(1 for r in results if r.get("replayed")),
        "capped": sum(1 for r in results if r.get("capped")),
        "revoked": sum(1 for r in results if r.get("revoked")),
        "ids": sorted(r["charged"] for r in results if "charged" in r),
    }


if __name__ == "__main__":
    children, per_child, amount, budget, run_id = (
        int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    revoke_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    print(json.dumps(run(children, per_child, amount, budget, run_id, revoke_after)))
