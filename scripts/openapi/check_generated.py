"""Checks that openapi-python-client generated one function module per operation of the document.

    python check_generated.py OPENAPI_JSON PACKAGE_DIR

Every operation must have an operationId, unique in the document, and the generated package must
hold `api/<tag>/<operationId as a Python identifier>.py` with `sync_detailed`, whose request is the
operation's method and path. Prints one line per problem and exits 1 when there is any.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from openapi_python_client.strings import PythonIdentifier

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# openapi-python-client's default `field_prefix`, used when an operationId is not a valid identifier.
FIELD_PREFIX = "field_"


def shape(path: str) -> str:
    """A path with its parameters blanked: the generator renames them to Python identifiers."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def main(document: Path, package: Path) -> int:
    spec = json.loads(document.read_text(encoding="utf-8"))
    problems: list[str] = []

    operations: list[tuple[str, str, str | None]] = []
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                operations.append((method, path, item[method].get("operationId")))

    by_id: dict[str, list[str]] = defaultdict(list)
    for method, path, op_id in operations:
        if not op_id:
            problems.append(f"{method.upper()} {path}: no operationId")
        else:
            by_id[op_id].append(f"{method.upper()} {path}")
    for op_id, users in sorted(by_id.items()):
        if len(users) > 1:
            problems.append(f"operationId {op_id!r} is used by {len(users)} operations: {', '.join(users)}")

    generated: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for module in sorted((package / "api").glob("*/*.py")):
        if module.name == "__init__.py":
            continue
        text = module.read_text(encoding="utf-8")
        method = re.search(r'"method":\s*"([a-z]+)"', text)
        url = re.search(r'"url":\s*f?"([^"]+)"', text)
        if not method or not url or "def sync_detailed(" not in text:
            problems.append(f"{module.relative_to(package)}: not an endpoint module (no method, url or sync_detailed)")
            continue
        generated[(method.group(1), shape(url.group(1)))].append(module)

    for method, path, op_id in operations:
        label = f"{method.upper()} {path}"
        modules = generated.get((method, shape(path)), [])
        if not modules:
            problems.append(f"{label} ({op_id}): no function module was generated")
            continue
        if op_id:
            expected = str(PythonIdentifier(op_id, FIELD_PREFIX))
            stems = [m.stem for m in modules]
            if expected not in stems:
                names = ", ".join(str(m.relative_to(package)) for m in modules)
                problems.append(f"{label}: operationId {op_id!r} should give {expected}.py, generated {names}")

    for line in problems:
        print(f"  {line}")
    if problems:
        print(f"{len(problems)} problem(s) with the generated operations", file=sys.stderr)
        return 1
    print(f"all {len(operations)} operations generated, one module per operationId")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
