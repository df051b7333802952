"""The seed's Haystack billing agent, run against Keybrake: one vault key per pipeline run from
POST /vault/keys, the seed's StripeCharger component wrapped in a ComponentTool, and an Agent in a
Pipeline. A second tool texts through Twilio with its own key (one key per vendor).

Only the base URL and the key differ from the seed. No LLM is reachable where this runs, so
ScriptedChatGenerator below stands in for OpenAIChatGenerator: it asks for one charge per overdue
account, then one SMS, as a model following "process all overdue accounts" would. To use a real
model, pass `OpenAIChatGenerator(model="gpt-4o")` (or any Haystack chat generator) instead.

Usage: billing_agent.py MODE BUDGET_USD ACCOUNTS AMOUNT_CENTS
  MODE stop:     Agent(raise_on_tool_invocation_failure=True): the first cap refusal raises
                 out of pipeline.run and the tool-call loop stops.
  MODE continue: Haystack's default: a failed tool call becomes a message the model reads, and a
                 model that keeps asking keeps calling the refused tool until max_agent_steps.
Environment: KEYBRAKE_URL (the proxy), KEYBRAKE_API_KEY (a Kubernetes ServiceAccount token).
Prints a JSON summary."""
import json
import os
import sys
import uuid

import requests
import stripe
from haystack import Pipeline, component
from haystack.components.agents import Agent
from haystack.dataclasses import ChatMessage, ToolCall
from haystack.tools import ComponentTool
from twilio.rest import Client

KEYBRAKE_URL = os.environ["KEYBRAKE_URL"]
HEADERS = {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}


def issue_vault_key(vendor: str, run_id: str, budget_usd: float, endpoints: list) -> dict:
    """POST /vault/keys, as the seed does (with the proxy's URL)."""
    r = requests.post(
        f"{KEYBRAKE_URL}/vault/keys",
        headers=HEADERS,
        json={
            "vendor": vendor,
            "daily_usd_cap": budget_usd,
            "allowed_endpoints": endpoints,
            "expires_in": "1h",
            "agent_run_label": f"haystack-billing/{run_id}",
        },
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


@component
class StripeCharger:
    """The seed's component, unchanged but for the base URL."""

    def __init__(self, vault_key: str):
        self.vault_key = vault_key  # scoped key passed at construction time

    @component.output_types(result=dict)
    def run(self, customer_id: str, amount_cents: int) -> dict:
        stripe.api_key = self.vault_key
        stripe.api_base = KEYBRAKE_URL
        intent = stripe.PaymentIntent.create(
            amount=amount_cents,
            currency="usd",
            payment_method="pm_card_visa",
            confirm=True,
            metadata={"customer": customer_id},
            idempotency_key=f"{customer_id}-{amount_cents}",
        )
        return {"result": {"id": intent["id"], "status": intent["status"]}}


@component
class TwilioNotifier:
    """Texts a customer through Twilio, with the Twilio key of the same run."""

    def __init__(self, account_sid: str, vault_key: str):
        self.account_sid, self.vault_key = account_sid, vault_key

    @component.output_types(result=dict)
    def run(self, to: str, body: str) -> dict:
        client = Client(self.account_sid, self.vault_key)
        client.api.base_url = KEYBRAKE_URL
        message = client.messages.create(to=to, from_="+14155550199", body=body)
        return {"result": {"sid": message.sid}}


@component
class ScriptedChatGenerator:
    """A stand-in for an LLM (none is reachable here): asks for one charge per overdue account,
    whatever the tool answered before, then one SMS, then stops. Clearly not a model."""

    def __init__(self, accounts: int, amount_cents: int):
        self.accounts, self.amount_cents = accounts, amount_cents
        self.turn = 0

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage], tools=None, **kwargs) -> dict:
        self.turn += 1
        if self.turn <= self.accounts:
            call = ToolCall(
                tool_name="charge_customer",
                arguments={"customer_id": f"acct-{self.turn}", "amount_cents": self.amount_cents},
            )
        elif self.turn == self.accounts + 1:
            call = ToolCall(
                tool_name="notify_customer",
                arguments={"to": "+14155550100", "body": "your overdue invoices were processed"},
            )
        else:
            return {"replies": [ChatMessage.from_assistant("All overdue accounts processed.")]}
        return {"replies": [ChatMessage.from_assistant(tool_calls=[call])]}


def run_billing_pipeline(mode: str, budget_usd: float, accounts: int, amount_cents: int) -> dict:
    run_id = str(uuid.uuid4())
    stripe_key = issue_vault_key("stripe", run_id, budget_usd, ["POST /v1/payment_intents"])
    twilio_key = issue_vault_key(
        "twilio", run_id, 1, ["POST /2010-04-01/Accounts/*/Messages.json"]
    )
    stripe_tool = ComponentTool(
        component=StripeCharger(vault_key=stripe_key["vault_key"]),
        name="charge_customer",
        description="Charge a customer via Stripe for a given amount in cents",
    )
    sms_tool = ComponentTool(
        component=TwilioNotifier(twilio_key["account_sid"], twilio_key["vault_key"]),
        name="notify_customer",
        description="Text a customer",
    )
    agent = Agent(
        chat_generator=ScriptedChatGenerator(accounts, amount_cents),
        tools=[stripe_tool, sms_tool],
        max_agent_steps=accounts + 3,
        raise_on_tool_invocation_failure=(mode == "stop"),
    )
    pipeline = Pipeline()
    pipeline.add_component("agent", agent)
    summary = {"run_id": run_id, "stripe_key": stripe_key["key_id"], "twilio_key": twilio_key["key_id"]}
    try:
        result = pipeline.run(
            {"agent": {"messages": [ChatMessage.from_user("Process all overdue accounts")]}}
        )
        messages = result["agent"]["messages"]
        tool_results = [m.tool_call_result for m in messages if m.tool_call_result]
        summary["stopped"] = False
        summary["tool_errors"] = sum(1 for t in tool_results if t.error)
        summary["cap_refusals_seen_by_model"] = sum(
            1 for t in tool_results if t.error and "cap_exhausted" in t.result
        )
        summary["charges"] = sum(
            1 for t in tool_results if not t.error and t.origin.tool_name == "charge_customer"
        )
    except Exception as e:  # what the Agent raises with raise_on_tool_invocation_failure=True
        summary["stopped"] = True
        summary["error"] = type(e).__name__
        summary["cap_exhausted"] = "cap_exhausted" in str(e)
    return summary


if __name__ == "__main__":
    mode, budget, accounts, amount = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run_billing_pipeline(mode, budget, accounts, amount)))
