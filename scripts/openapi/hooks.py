"""Schemathesis hooks for scripts/check-openapi.sh: keep the fuzz run able to go on, and on this machine.

Loaded through SCHEMATHESIS_HOOKS. Both hooks change only what a request would do to the world
outside the API's contract, never whether the request is valid; schemathesis re-validates a case
after `before_call`, so its checks still judge the request that was really sent.

- Keys: the fuzzer learns key ids from responses (`GET /v1/me`, `GET /v1/api-keys`) and feeds them
  to `DELETE /v1/api-keys/{id}` and `POST /v1/api-keys/{id}/rotate`. Revoking or rotating the key
  it authenticates with would turn every later request into a 401, so the ids in
  RDEV_PROTECTED_KEY_IDS are swapped for an id that names no key (a 404, refused for state). Every
  other key, including those the fuzzer creates, is revoked and rotated for real.
- Webhook targets: a subscription makes the server POST to its `url`, and the server resolves the
  host when the subscription is created. A generated `http(s)` URL is pointed at a sink on
  127.0.0.1, named `localhost`, that this module serves (the server runs with WEBHOOK_ALLOW_PRIVATE_TARGETS=true), so
  no delivery or lookup leaves the machine and a well-formed URL whose random host does not
  resolve is not refused for that. The SSRF guard itself is covered by the Rust tests.
- Cursors: a `cursor` is an opaque token, valid only as the server handed it out, so a generated
  one is refused with 400 although it matches the schema (issue 12 allows exactly this). A
  "schema-valid request rejected" finding is dropped when the 400 problem names no field but
  `cursor` and the cursor sent is not one the server returned in this run; refusing a cursor it
  did return stays a finding.
- Expiry in the past: `expires_at` of a new key must lie in the future, which depends on the clock,
  not on the schema. A 400 that names only `expires_at`, for a time that has passed, is dropped.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timezone
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import schemathesis

# A UUID that no key has: ids are UUID v7, this one is v4-shaped and all zeros.
ABSENT_KEY_ID = "00000000-0000-4000-8000-000000000000"
PROTECTED_KEY_IDS = {i.strip().lower() for i in os.environ.get("RDEV_PROTECTED_KEY_IDS", "").split(",") if i.strip()}
KEY_OPERATIONS = {("DELETE", "/v1/api-keys/{id}"), ("POST", "/v1/api-keys/{id}/rotate")}
WEBHOOK_OPERATIONS = {("POST", "/v1/webhooks"), ("PATCH", "/v1/webhooks/{id}")}
OPAQUE_FIELDS = {"cursor"}
RETURNED_CURSORS: set[str] = set()
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class _Sink(BaseHTTPRequestHandler):
    """Answers every delivery with 204."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


_sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
_sink.daemon_threads = True
threading.Thread(target=_sink.serve_forever, name="webhook-sink", daemon=True).start()
# By name: the document's URL pattern takes DNS names (an IP literal would turn a valid case into
# an invalid one); `localhost` resolves to loopback, which WEBHOOK_ALLOW_PRIVATE_TARGETS allows.
SINK = f"localhost:{_sink.server_address[1]}"


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    return bool(HOSTNAME.match(host))


def to_sink(url: str) -> str:
    """The same URL with its host and port replaced by the sink's, when it is a well-formed http(s) URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = hostport
    if not hostport.startswith("[") and ":" in hostport:
        host = hostport.rsplit(":", 1)[0]
    elif hostport.startswith("[") and "]:" in hostport:
        host = hostport.rsplit(":", 1)[0]
    if not _valid_host(host):
        return url
    netloc = f"{userinfo}@{SINK}" if userinfo else SINK
    return urlunsplit(("http", netloc, parts.path, parts.query, parts.fragment))


@schemathesis.hook
def before_call(context, case, kwargs):  # noqa: ARG001 - the hook's signature
    key = (case.method.upper(), case.path)
    if key in KEY_OPERATIONS:
        given = str(case.path_parameters.get("id", "")).strip().lower()
        if given in PROTECTED_KEY_IDS:
            case.path_parameters["id"] = ABSENT_KEY_ID
    elif key in WEBHOOK_OPERATIONS and isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body["url"] = to_sink(case.body["url"])


@schemathesis.hook
def after_call(context, case, response):  # noqa: ARG001 - the hook's signature
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - not JSON: nothing to learn
        return
    if isinstance(body, dict) and isinstance(body.get("next_cursor"), str):
        RETURNED_CURSORS.add(body["next_cursor"])


def _in_the_past(value) -> bool:
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    if at.tzinfo is None:
        return False
    return at <= datetime.now(timezone.utc)


@schemathesis.hook
def filter_failure(context, failure, case, response):  # noqa: ARG001 - the hook's signature
    """False drops the failure: a 400 only for an unknown cursor or an expiry that has passed."""
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return True
    try:
        fields = {e.get("field") for e in response.json().get("errors") or []}
    except Exception:  # noqa: BLE001 - not a problem document: keep the finding
        return True
    if not fields:
        return True
    if fields <= OPAQUE_FIELDS and str((case.query or {}).get("cursor")) not in RETURNED_CURSORS:
        return False
    body = case.body if isinstance(case.body, dict) else {}
    if fields == {"expires_at"} and _in_the_past(body.get("expires_at")):
        return False
    return True
