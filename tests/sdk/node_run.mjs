// The official Node SDKs through the proxy, configured from the Secret's env vars only.
// Usage: node node_run.mjs stripe N AMOUNT | twilio N LENGTH | resend N RECIPIENTS
// Prints JSON results, one per call.
import Stripe from "stripe";
import twilio from "twilio";
import { Resend } from "resend";

const [vendor, nText, sizeText] = process.argv.slice(2);
const n = Number(nText);
const size = Number(sizeText);
const results = [];

if (vendor === "stripe") {
  // Node stripe always sends /v1/... with no path prefix: the proxy must not need one.
  const base = new URL(process.env.STRIPE_API_BASE);
  const stripe = new Stripe(process.env.STRIPE_API_KEY, {
    host: base.hostname,
    port: base.port,
    protocol: base.protocol.replace(":", ""),
    maxNetworkRetries: 2,
  });
  for (let i = 0; i < n; i++) {
    try {
      const pi = await stripe.paymentIntents.create({ amount: size, currency: "usd", payment_method: "pm_card_visa", confirm: true });
      results.push({ ok: pi.id });
    } catch (e) {
      results.push({ error: e.type, code: e.code, status: e.statusCode, message: e.message });
    }
  }
} else if (vendor === "twilio") {
  const client = twilio(process.env.TWILIO_ACCOUNT_SID, process.env.TWILIO_AUTH_TOKEN);
  client.api.baseUrl = process.env.TWILIO_API_BASE;
  for (let i = 0; i < n; i++) {
    try {
      const m = await client.messages.create({ to: "+14155550100", from: "+14155550199", body: "x".repeat(size) });
      results.push({ ok: m.sid });
    } catch (e) {
      results.push({ error: e.constructor.name, code: e.code, status: e.status, message: e.message });
    }
  }
} else if (vendor === "resend") {
  // Node resend reads RESEND_BASE_URL when the client is created, and never throws.
  const resend = new Resend(process.env.RESEND_API_KEY);
  for (let i = 0; i < n; i++) {
    const to = Array.from({ length: size }, (_, j) => `user${j}@example.com`);
    const { data, error } = await resend.emails.send({ from: "agent@example.com", to, subject: "receipt", html: "<p>thanks</p>" });
    results.push(error ? { error: error.name, status: error.statusCode, message: error.message } : { ok: data.id });
  }
}
console.log(JSON.stringify(results));
