"""A LangGraph tool-calling agent (the seeds' further reading names LangChain) charging through
Keybrake: one vault key per run from POST /vault/keys, a LangChain tool calling Stripe, and a
ToolNode in a StateGraph. No LLM is reachable where this runs, so scripted_model below stands in
for a chat model with bound tools: it asks for one charge per overdue account, as a model
following "process all overdue accounts" would. To use a real model, replace it with
`ChatOpenAI(model="gpt-4o").bind_tools([charge_customer])` (or any chat model with tool calling).

Usage: billing_agent.py MODE BUDGET_USD ACCOUNTS AMOUNT_CENTS
  MODE default: ToolNode's default error handling (langgraph 1.2): an exception from a tool other
                than a bad-arguments error propagates, so the first cap refusal ends graph.invoke.
  MODE handle:  ToolNode(handle_tool_errors=True): every tool exception becomes a ToolMessage the
                model reads, and a model that keeps asking keeps calling the refused tool.
Environment: KEYBRAKE_URL (the proxy), KEYBRAKE_API_KEY (a Kubernetes ServiceAccount token).
Prints a JSON summary."""
import json
import os
import sys
import uuid

import requests
import stripe
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

KEYBRAKE_URL = os.environ["KEYBRAKE_URL"]
HEADERS = {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}


def issue_vault_key(run_id: str, budget_usd: float) -> dict:
    r = requests.post(
        f"{KEYBRAKE_URL}/vault/keys",
        headers=HEADERS,
        json={
            "vendor": "stripe",
            "daily_usd_cap": budget_usd,
            "allowed_endpoints": ["POST /v1/payment_intents"],
            "expires_in": "1h",
            "agent_run_label": f"langgraph-billing/{run_id}",
        },
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def build(mode: str, vault_key: str, accounts: int, amount_cents: int):
    @tool
    def charge_customer(customer_id: str, amount_cents: int) -> str:
        """Charge a customer via Stripe for a given amount in cents."""
        stripe.api_key = vault_key
        stripe.api_base = KEYBRAKE_URL
        intent = stripe.PaymentIntent.create(
            amount=amount_cents,
            currency="usd",
            payment_method="pm_card_visa",
            confirm=True,
            metadata={"customer": customer_id},
            idempotency_key=f"{customer_id}-{amount_cents}",
        )
        return intent["id"]

    turn = {"n": 0}

    def scripted_model(state: MessagesState) -> dict:
        """A stand-in for an LLM: one charge per account, whatever the tool answered."""
        turn["n"] += 1
        if turn["n"] > accounts:
            return {"messages": [AIMessage(content="All overdue accounts processed.")]}
        call = {
            "name": "charge_customer",
            "args": {"customer_id": f"acct-{turn['n']}", "amount_cents": amount_cents},
            "id": f"call-{turn['n']}",
        }
        return {"messages": [AIMessage(content="", tool_calls=[call])]}

    tools = ToolNode([charge_customer], handle_tool_errors=True) if mode == "handle" else ToolNode([charge_customer])
    graph = StateGraph(MessagesState)
    graph.add_node("model", scripted_model)
    graph.add_node("tools", tools)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def run(mode: str, budget: float, accounts: int, amount_cents: int) -> dict:
    run_id = str(uuid.uuid4())
    key = issue_vault_key(run_id, budget)
    app = build(mode, key["vault_key"], accounts, amount_cents)
    summary = {"run_id": run_id, "key_id": key["key_id"]}
    try:
        state = app.invoke(
            {"messages": [HumanMessage(content="Process all overdue accounts")]},
            {"recursion_limit": 4 * accounts + 4},
        )
        results = [m for m in state["messages"] if isinstance(m, ToolMessage)]
        summary["stopped"] = False
        summary["charges"] = sum(1 for m in results if m.status != "error")
        summary["cap_refusals_seen_by_model"] = sum(
            1 for m in results if m.status == "error" and "cap_exhausted" in str(m.content)
        )
    except stripe.error.RateLimitError as e:
        summary["stopped"] = True
        summary["cap_exhausted"] = e.error is not None and e.error.code == "cap_exhausted"
    return summary


if __name__ == "__main__":
    mode, budget, accounts, amount = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run(mode, budget, accounts, amount)))
