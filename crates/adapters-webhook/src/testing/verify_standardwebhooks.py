"""Verifies Standard Webhooks signatures with the reference Python library (PyPI
`standardwebhooks`), independently of the Rust signer. Reads one JSON object on stdin:
{"payload": str, "headers": {str: str}, "secrets": [str], "wrong_secret": str}.
Exits 0 after printing "verified N" when every secret verifies and the wrong one does not."""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

request = json.load(sys.stdin)
for secret in request["secrets"]:
    Webhook(secret).verify(request["payload"], request["headers"])
try:
    Webhook(request["wrong_secret"]).verify(request["payload"], request["headers"])
except WebhookVerificationError:
    pass
else:
    sys.exit("a wrong secret verified: the signature check is broken")
print(f"verified {len(request['secrets'])}")
