// The seeds' Hatchet fan-out (TypeScript SDK style) with plain promises and the official Node
// Stripe SDK: one vault key per run from POST /vault/keys, CHILDREN children sharing it, each
// retrying a step that failed after its charge went out (same Idempotency-Key: the proxy answers
// with the first charge, nothing is billed twice), and a cap refusal treated as final.
//
// Usage: node fanout.mjs CHILDREN PER_CHILD AMOUNT_CENTS BUDGET_USD RUN_ID
// Environment: KEYBRAKE_URL (the proxy), KEYBRAKE_API_KEY (a Kubernetes ServiceAccount token).
// Prints a JSON summary.
import Stripe from "stripe";

const [children, perChild, amount, budget, runId] = process.argv.slice(2);
const base = new URL(process.env.KEYBRAKE_URL);
const auth = { Authorization: `Bearer ${process.env.KEYBRAKE_API_KEY}` };

async function issueVaultKey() {
  const r = await fetch(`${base.origin}/vault/keys`, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({
      vendor: "stripe",
      daily_usd_cap: Number(budget),
      allowed_endpoints: ["POST /v1/payment_intents"],
      expires_in: "2h",
      agent_run_label: `node-fanout/${runId}`,
    }),
  });
  if (!r.ok) throw new Error(`POST /vault/keys: ${r.status} ${await r.text()}`);
  return r.json();
}

class StepFailed extends Error {}

// A step with retries, as a workflow engine runs it: transient errors are retried, a cap
// refusal is final.
async function withRetries(step, retries = 3) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await step(attempt);
    } catch (e) {
      if (e instanceof Stripe.errors.StripeRateLimitError && e.code === "cap_exhausted") {
        return { capped: true };
      }
      if (attempt >= retries || !(e instanceof StepFailed || e instanceof Stripe.errors.StripeConnectionError)) {
        throw e;
      }
    }
  }
}

const key = await issueVaultKey();
const stripe = new Stripe(key.vault_key, {
  host: base.hostname,
  port: base.port,
  protocol: base.protocol.replace(":", ""),
  maxNetworkRetries: 0,
});

async function child(c) {
  const results = [];
  for (let customer = 0; customer < Number(perChild); customer++) {
    results.push(
      await withRetries(async (attempt) => {
        const intent = await stripe.paymentIntents.create(
          { amount: Number(amount), currency: "usd", payment_method: "pm_card_visa", confirm: true },
          { idempotencyKey: `${runId}-${c}-${customer}` },
        );
        // Every child's first step dies after its charge went out, once: the retry must not bill again.
        if (customer === 0 && attempt === 0) throw new StepFailed("worker lost after the charge");
        return { charged: intent.id, replayed: attempt > 0 };
      }),
    );
    if (results.at(-1).capped) break;
  }
  return results;
}

const all = (await Promise.all(Array.from({ length: Number(children) }, (_, c) => child(c)))).flat();
console.log(
  JSON.stringify({
    key_id: key.key_id,
    charged: all.filter((r) => r.charged).length,
    retried_and_replayed: all.filter((r) => r.replayed).length,
    capped: all.filter((r) => r.capped).length,
  }),
);
