// The seeds' Hatchet flow from Node: issue a vault key with fetch (POST /vault/keys), fan out to
// CHILDREN children sharing it until the cap refuses, read its spend, revoke it (DELETE) and check
// the next call is refused. Usage: node hatchet_issue_flow.mjs CHILDREN PER_CHILD AMOUNT_CENTS BUDGET_USD RUN_ID
// Environment: KEYBRAKE_URL, KEYBRAKE_API_KEY. Prints a JSON summary.
import Stripe from "stripe";

const [children, perChild, amount, budget] = process.argv.slice(2, 6).map(Number);
const runId = process.argv[6];
const base = process.env.KEYBRAKE_URL;
const headers = { Authorization: `Bearer ${process.env.KEYBRAKE_API_KEY}`, "Content-Type": "application/json" };

const resp = await fetch(`${base}/vault/keys`, {
  method: "POST",
  headers,
  body: JSON.stringify({
    vendor: "stripe",
    daily_usd_cap: budget,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_in: "2h",
    agent_run_label: `hatchet/billing-agent/${runId}`,
  }),
});
if (resp.status !== 201) throw new Error(`issue failed: ${resp.status} ${await resp.text()}`);
const issued = await resp.json();

// Node stripe always sends /v1/... with no path prefix.
const url = new URL(base);
const stripe = new Stripe(issued.vault_key, {
  host: url.hostname, port: url.port, protocol: url.protocol.replace(":", ""), maxNetworkRetries: 2,
});

async function chargeCustomers(child) {
  const charged = [];
  let capped = 0;
  for (let c = 0; c < perChild; c++) {
    try {
      const pi = await stripe.paymentIntents.create(
        { amount, currency: "usd", payment_method: "pm_card_visa", confirm: true },
        { idempotencyKey: `${runId}-cus_${child}_${c}` },
      );
      charged.push(pi.id);
    } catch (e) {
      if (e.code === "cap_exhausted") capped += 1; // non-retriable
      else throw e;
    }
  }
  return { charged, capped };
}

const results = await Promise.all(Array.from({ length: children }, (_, i) => chargeCustomers(i)));
const shown = await (await fetch(`${base}/vault/keys/${issued.key_id}`, { headers })).json();
const revoked = await fetch(`${base}/vault/keys/${issued.key_id}`, { method: "DELETE", headers });
let after = "charged";
try {
  await stripe.paymentIntents.create({ amount, currency: "usd", payment_method: "pm_card_visa", confirm: true });
} catch (e) {
  after = e.code ?? e.type;
}
console.log(JSON.stringify({
  key_id: issued.key_id,
  charged: results.reduce((n, r) => n + r.charged.length, 0),
  capped: results.reduce((n, r) => n + r.capped, 0),
  spend_total_usd: shown.spend.total_usd,
  revoke_status: revoked.status,
  revoked_state: (await revoked.json()).state,
  after_revoke: after,
}));
