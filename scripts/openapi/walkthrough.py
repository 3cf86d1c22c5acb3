"""The main walk-through of rdev-api, driven through the client generated from /openapi.json alone.

    python walkthrough.py --base-url http://127.0.0.1:8080 --admin-key-file data/admin.key

scripts/check-openapi.sh generates the client (openapi-python-client, package rdev_api_client),
installs it into its venv and runs this against a fresh server. Every request goes through the
generated `sync_detailed` functions, every answer is read as the generated models: if the document
lies about an operation, a parameter, a status or a schema, a step here fails and says which.

Steps: create a project; submit `echo hi` with `?wait=` and an Idempotency-Key (200, succeeded,
exit 0, typed status and id); replay it (same command, `Idempotent-Replayed`) and reuse the key
with another body (409); page through the commands one at a time and filter them by status; read
the output; cancel a running command; the queue; a typed 404 and 400 problem; a scoped API key
used for what it may and may not do; the audit log filtered by action and project; a webhook
subscription, its test ping and its deliveries; the pod's logs; delete a project.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    from rdev_api_client import AuthenticatedClient
    from rdev_api_client.api.api_keys import create_api_key
    from rdev_api_client.api.audit import list_audit_log
    from rdev_api_client.api.commands import (
        cancel_command,
        get_command,
        get_command_output,
        get_queue,
        list_commands,
        submit_command,
    )
    from rdev_api_client.api.pods import get_pod_logs
    from rdev_api_client.api.projects import create_project, delete_project, get_project, list_projects
    from rdev_api_client.api.webhooks import (
        create_webhook,
        get_webhook_delivery,
        list_webhook_deliveries,
        list_webhooks,
        test_webhook,
    )
    from rdev_api_client.models import (
        CreateKeyRequest,
        CreateProjectRequest,
        CreateWebhookRequest,
        Problem,
        SubmitRequest,
    )
    from rdev_api_client.types import UNSET
except ImportError as exc:
    import importlib.util

    spec = importlib.util.find_spec("rdev_api_client")
    found = []
    if spec and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(f"{p.parent.name}.{p.stem}" for p in (root / "api").glob("*/*.py") if p.stem != "__init__")
    sys.exit(
        f"walkthrough: the generated client lacks what the walk-through uses: {exc}\n"
        f"  generated operations: {', '.join(found) or 'none (is rdev_api_client installed?)'}"
    )


class Failed(Exception):
    """A step's expectation did not hold."""


def value(x):
    """The wire value of an enum member (or the value itself)."""
    return x.value if isinstance(x, enum.Enum) else x


def describe(response) -> str:
    body = response.content[:400].decode("utf-8", "replace")
    return f"{int(response.status_code)} {response.headers.get('content-type', '')} {body}"


def expect(response, status: int, model=None, what: str = ""):
    """The parsed answer, after checking its status and model."""
    if int(response.status_code) != status:
        raise Failed(f"{what}: expected {status}, got {describe(response)}")
    if model is not None and not isinstance(response.parsed, model):
        raise Failed(f"{what}: expected a {model.__name__}, parsed {type(response.parsed).__name__}: {describe(response)}")
    return response.parsed


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def is_enum(x, what: str) -> None:
    check(isinstance(x, enum.Enum), f"{what} is {type(x).__name__} {x!r}, not an enum: the document should name the closed set")


def is_uuid(x, what: str) -> None:
    check(isinstance(x, uuid.UUID), f"{what} is {type(x).__name__} {x!r}, not a UUID: the document should say format: uuid")


def problem(response, status: int, code: str, what: str) -> Problem:
    p = expect(response, status, Problem, what)
    check(
        response.headers.get("content-type", "").startswith("application/problem+json"),
        f"{what}: content type {response.headers.get('content-type')}",
    )
    check(p.status == status, f"{what}: problem status {p.status}")
    is_enum(p.code, f"{what}: Problem.code")
    check(value(p.code) == code, f"{what}: problem code {value(p.code)!r}, expected {code!r}")
    return p


class Sink(BaseHTTPRequestHandler):
    """A webhook target on loopback: records what it receives, answers 204."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Sink.received.append({"headers": dict(self.headers), "body": json.loads(body or b"null")})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def walk(base_url: str, admin_key: str) -> None:
    admin = AuthenticatedClient(base_url=base_url, token=admin_key, timeout=90.0)
    suffix = uuid.uuid4().hex[:8]
    name, other = f"walk-{suffix}", f"walk-other-{suffix}"

    def step(message: str) -> None:
        print(f"  ok  {message}")

    # Projects.
    created = expect(
        create_project.sync_detailed(client=admin, body=CreateProjectRequest(name=name, image="debian:stable")),
        201,
        what="create_project",
    )
    check(created.name == name, f"create_project: name {created.name!r}")
    is_uuid(created.id, "ProjectView.id")
    expect(
        create_project.sync_detailed(client=admin, body=CreateProjectRequest(name=other, image="debian:stable")),
        201,
        what="create_project (second)",
    )
    got = expect(get_project.sync_detailed(name, client=admin), 200, type(created), "get_project")
    check(got.id == created.id, "get_project: another id")
    page = expect(list_projects.sync_detailed(client=admin), 200, what="list_projects")
    listed = [p for p in page.items if p.name == name]
    check(len(listed) == 1, f"list_projects: {name} listed {len(listed)} times")
    check(
        type(listed[0]) is type(created),
        f"list_projects: items are {type(listed[0]).__name__}, not {type(created).__name__} (page items should be a $ref)",
    )
    step(f"create_project, get_project, list_projects ({type(created).__name__})")

    # Submit with wait and an Idempotency-Key.
    key = f"walk-{uuid.uuid4()}"
    body = SubmitRequest(command=["echo", "hi"])
    first = submit_command.sync_detailed(name, client=admin, body=body, wait=30, idempotency_key=key)
    cmd = expect(first, 200, what="submit_command ?wait=30")
    is_uuid(cmd.id, "CommandBody.id")
    is_enum(cmd.status, "CommandBody.status")
    check(value(cmd.status) == "succeeded", f"submit_command: status {value(cmd.status)!r} ({cmd.error!r})")
    check(cmd.exit_code == 0, f"submit_command: exit_code {cmd.exit_code!r}")
    check(
        first.headers.get("location") == f"/v1/commands/{cmd.id}", f"submit_command: Location {first.headers.get('location')!r}"
    )
    step(f"submit_command echo hi: {int(first.status_code)}, status {cmd.status!r}, exit 0")

    replay = submit_command.sync_detailed(name, client=admin, body=body, wait=30, idempotency_key=key)
    again = expect(replay, 200, type(cmd), "submit_command replay")
    check(again.id == cmd.id, f"replay: another command {again.id} (first {cmd.id})")
    check(
        replay.headers.get("idempotent-replayed") == "true",
        f"replay: Idempotent-Replayed {replay.headers.get('idempotent-replayed')!r}",
    )
    reuse = submit_command.sync_detailed(name, client=admin, body=SubmitRequest(command=["echo", "other"]), idempotency_key=key)
    problem(reuse, 409, "conflict", "submit_command with the key of another request")
    step("Idempotency-Key: replayed (Idempotent-Replayed: true), reused with another body 409")

    # More commands, then page through them one at a time.
    ids = {cmd.id}
    for word in ("two", "three"):
        more = expect(
            submit_command.sync_detailed(name, client=admin, body=SubmitRequest(command=["echo", word]), wait=30),
            200,
            what="submit_command",
        )
        ids.add(more.id)
    seen, cursor = [], UNSET
    for _ in range(20):
        page = expect(list_commands.sync_detailed(name, client=admin, limit=1, cursor=cursor), 200, what="list_commands limit=1")
        check(len(page.items) <= 1, f"list_commands limit=1: {len(page.items)} items")
        seen += [c.id for c in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    check(sorted(map(str, seen)) == sorted(map(str, ids)), f"list_commands paging: saw {seen}, submitted {ids}")
    succeeded = type(cmd.status)("succeeded")
    page = expect(list_commands.sync_detailed(name, client=admin, status=succeeded), 200, what="list_commands status=succeeded")
    check(
        {c.id for c in page.items} == ids and all(value(c.status) == "succeeded" for c in page.items),
        "list_commands status=succeeded: wrong items",
    )
    step(f"list_commands: {len(seen)} commands one page at a time, status filter")

    got = expect(get_command.sync_detailed(cmd.id, client=admin), 200, type(cmd), "get_command")
    check(got.id == cmd.id and value(got.status) == "succeeded", "get_command: another command")
    out = expect(get_command_output.sync_detailed(cmd.id, client=admin), 200, what="get_command_output")
    check(out.stdout == "hi\n", f"get_command_output: stdout {out.stdout!r}")
    step("get_command, get_command_output: stdout 'hi\\n'")

    # Cancel a running command.
    slow = expect(
        submit_command.sync_detailed(name, client=admin, body=SubmitRequest(script="sleep 10"), wait=0),
        202,
        what="submit_command sleep 10 ?wait=0",
    )
    cancelled = expect(cancel_command.sync_detailed(slow.id, client=admin), 200, type(cmd), "cancel_command")
    deadline = time.monotonic() + 20
    while value(cancelled.status) not in ("cancelled",) and time.monotonic() < deadline:
        time.sleep(0.3)
        cancelled = expect(get_command.sync_detailed(slow.id, client=admin), 200, type(cmd), "get_command after cancel")
    check(value(cancelled.status) == "cancelled", f"cancel_command: status {value(cancelled.status)!r} after 20 s")
    step("submit sleep 10 (202), cancel_command: cancelled")

    queue = expect(get_queue.sync_detailed(client=admin), 200, what="get_queue")
    check(isinstance(queue.capacity, int) and queue.capacity >= 1, f"get_queue: capacity {queue.capacity!r}")
    depth = queue.depth
    for priority in ("critical", "high", "normal", "low"):
        check(
            isinstance(getattr(depth, priority, None), int),
            f"get_queue: depth.{priority} is not a named integer field ({type(depth).__name__})",
        )
    step(f"get_queue: capacity {queue.capacity}, depth {depth.to_dict()}")

    # Typed problems.
    problem(get_command.sync_detailed(uuid.uuid4(), client=admin), 404, "not_found", "get_command of an unknown id")
    bad = problem(
        submit_command.sync_detailed(name, client=admin, body=SubmitRequest(command=["true"], timeout_seconds=0)),
        400,
        "validation_failed",
        "submit_command timeout_seconds=0",
    )
    check(any(e.field == "timeout_seconds" for e in (bad.errors or [])), f"400 problem: errors {bad.errors!r}")
    step("problems: 404 not_found, 400 validation_failed on timeout_seconds, as Problem")

    # A scoped key: reads one project's commands, may not submit, cannot see the other project.
    new_key = CreateKeyRequest.from_dict(
        {"name": f"walk-reader-{suffix}", "scopes": ["commands:read", "projects:read"], "projects": [name]}
    )
    created_key = expect(create_api_key.sync_detailed(client=admin, body=new_key), 201, what="create_api_key")
    check(created_key.key.startswith("rdev_"), "create_api_key: no secret")
    is_uuid(created_key.id, "CreatedKey.id")
    for scope in created_key.scopes:
        is_enum(scope, "CreatedKey.scopes[]")
    reader = AuthenticatedClient(base_url=base_url, token=created_key.key, timeout=30.0)
    page = expect(list_commands.sync_detailed(name, client=reader), 200, what="list_commands with the scoped key")
    check({c.id for c in page.items} >= ids, "list_commands with the scoped key: commands missing")
    problem(
        submit_command.sync_detailed(name, client=reader, body=SubmitRequest(command=["true"])),
        403,
        "forbidden",
        "submit_command with a read-only key",
    )
    problem(get_project.sync_detailed(other, client=reader), 404, "not_found", "get_project of a project outside the key")
    step("create_api_key (commands:read, projects:read on one project): reads 200, submit 403, other project 404")

    # Audit log, filtered.
    action = "POST /v1/projects/{name}/commands"
    page = expect(list_audit_log.sync_detailed(client=admin, action=action, project=name, limit=200), 200, what="list_audit_log")
    check(len(page.items) >= 5, f"list_audit_log action+project: {len(page.items)} records, expected the walk-through's submits")
    check(all(r.action == action and r.project == name for r in page.items), "list_audit_log: a record outside the filter")
    for r in page.items:
        is_enum(r.outcome, "AuditRecordBody.outcome")
    step(f"list_audit_log action={action!r} project={name}: {len(page.items)} records")

    # Webhooks: a subscription to a sink on loopback, a test ping, its deliveries.
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        url = f"http://localhost:{sink.server_address[1]}/hook"
        hook = expect(
            create_webhook.sync_detailed(client=admin, body=CreateWebhookRequest.from_dict({"url": url, "projects": [name]})),
            201,
            what="create_webhook",
        )
        check(hook.secret.startswith("whsec_"), "create_webhook: no secret")
        is_uuid(hook.id, "WebhookWithSecret.id")
        page = expect(list_webhooks.sync_detailed(client=admin), 200, what="list_webhooks")
        check(any(w.id == hook.id for w in page.items), "list_webhooks: the subscription is missing")
        expect(test_webhook.sync_detailed(hook.id, client=admin), 202, what="test_webhook")
        deadline, delivered = time.monotonic() + 30, None
        while time.monotonic() < deadline and delivered is None:
            page = expect(
                list_webhook_deliveries.sync_detailed(hook.id, client=admin, limit=50), 200, what="list_webhook_deliveries"
            )
            delivered = next((d for d in page.items if value(d.event_type) == "ping" and value(d.status) == "succeeded"), None)
            if delivered is None:
                time.sleep(0.5)
        check(
            delivered is not None,
            f"list_webhook_deliveries: no succeeded ping within 30 s ({[(value(d.event_type), value(d.status)) for d in page.items]})",
        )
        is_enum(delivered.status, "DeliveryView.status")
        detail = expect(get_webhook_delivery.sync_detailed(delivered.id, client=admin), 200, what="get_webhook_delivery")
        check(len(detail.attempt_log) >= 1, "get_webhook_delivery: no attempt")
        check(
            any(
                r["body"] and r["body"].get("type") == "ping" and "webhook-signature" in {k.lower() for k in r["headers"]}
                for r in Sink.received
            ),
            "the sink received no signed ping",
        )
        step("create_webhook, list_webhooks, test_webhook, list_webhook_deliveries: ping succeeded, get_webhook_delivery")
    finally:
        sink.shutdown()

    logs = expect(get_pod_logs.sync_detailed(name, client=admin, tail=10), 200, what="get_pod_logs tail=10")
    check(isinstance(logs.lines, list), "get_pod_logs: no lines")
    step(f"get_pod_logs tail=10: {len(logs.lines)} lines")

    expect(delete_project.sync_detailed(other, client=admin), 204, what="delete_project")
    problem(get_project.sync_detailed(other, client=admin), 404, "not_found", "get_project after delete")
    step("delete_project: 204, then 404")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--admin-key-file", required=True, type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    try:
        walk(args.base_url, args.admin_key_file.read_text().strip())
    except Failed as exc:
        print(f"walkthrough: FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an exception from the generated client is a finding too: say where
        import traceback

        traceback.print_exc()
        print(f"walkthrough: FAILED with {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"walkthrough: passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
