"""The Haystack notifier tool: texts through the proxy with the Twilio SDK configured from the
Secret's env vars only. Usage: twilio_run.py N BODY_LENGTH. Prints JSON results."""
import json
import os
import sys

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

n, length = int(sys.argv[1]), int(sys.argv[2])
client = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"])
client.api.base_url = os.environ["TWILIO_API_BASE"]
results = []
for i in range(n):
    try:
        m = client.messages.create(to="+14155550100", from_="+14155550199", body="x" * length)
        results.append({"ok": m.sid, "segments": m.num_segments})
    except TwilioRestException as e:
        results.append({"error": e.code, "http_status": e.status, "message": e.msg})
print(json.dumps(results))
