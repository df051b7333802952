"""The Haystack mailer tool: sends through the proxy with the Resend SDK, which reads
RESEND_API_URL from the environment (the Secret's). Usage: resend_run.py N RECIPIENTS."""
import json
import os
import sys

import resend

n, recipients = int(sys.argv[1]), int(sys.argv[2])
resend.api_key = os.environ["RESEND_API_KEY"]
results = []
for i in range(n):
    try:
        sent = resend.Emails.send({
            "from": "agent@example.com",
            "to": [f"user{j}@example.com" for j in range(recipients)],
            "subject": "receipt",
            "html": "<p>thanks</p>",
        })
        results.append({"ok": sent["id"]})
    except resend.exceptions.RateLimitError as e:
        results.append({"rate_limited": str(e), "class": type(e).__name__})
    except resend.exceptions.ResendError as e:
        results.append({"error": type(e).__name__, "message": str(e)})
print(json.dumps(results))
