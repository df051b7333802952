"""The seeds' Haystack agent loop: a tool that texts (Twilio) and a tool that emails (Resend),
each with its own vault key and cap, called in turns until the agent's step limit. Usage:
haystack_agent.py STEPS. Reads TWILIO_* and RESEND_* from the environment. Prints JSON."""
import json
import os
import sys

import resend
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

steps = int(sys.argv[1])
sms = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"])
sms.api.base_url = os.environ["TWILIO_API_BASE"]
resend.api_key = os.environ["RESEND_API_KEY"]
log = {"sms_sent": 0, "sms_capped": 0, "emails_sent": 0, "emails_capped": 0}
for step in range(steps):
    try:
        sms.messages.create(to="+14155550100", from_="+14155550199", body=f"step {step}: your invoice is overdue")
        log["sms_sent"] += 1
    except TwilioRestException as e:
        if e.status == 429 and "cap_exhausted" in e.msg:
            log["sms_capped"] += 1
        else:
            raise
    try:
        resend.Emails.send({"from": "agent@example.com", "to": ["user@example.com"], "subject": f"step {step}", "html": "<p>overdue</p>"})
        log["emails_sent"] += 1
    except resend.exceptions.RateLimitError as e:
        if "cap_exhausted" in str(e):
            log["emails_capped"] += 1
        else:
            raise
print(json.dumps(log))
