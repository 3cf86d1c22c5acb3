"""One line per schemathesis finding, from its JUnit report, then its own summary.

    python fuzz_summary.py SCHEMATHESIS_LOG REPORT_DIR

A line: operation, check, the status answered, the problem's detail, and the request as a curl
command (base URL and the filtered Authorization header left out). The full text of every finding
stays in the log and the reports.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def shorten(curl: str) -> str:
    curl = re.sub(r" -H 'Authorization: \[Filtered\]'", "", curl)
    curl = re.sub(r"https?://127\.0\.0\.1:\d+", "", curl)
    return curl if len(curl) <= 240 else curl[:237] + "..."


def detail(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:160]
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("title") or doc)[:160]
    return json.dumps(doc)[:160]


def findings(report: Path) -> list[str]:
    lines = []
    root = ET.parse(report).getroot()
    for case in root.iter("testcase"):
        operation = case.get("name", "?")
        for element in list(case.iter("failure")) + list(case.iter("error")):
            text = element.text or element.get("message") or ""
            checks = re.findall(r"^- (.+)$", text, re.M) or [element.get("message") or element.tag]
            status = re.search(r"^\[(\d{3})\] ", text, re.M)
            body = re.search(r"^\s+`(.*)`\s*$", text, re.M)
            # A stateful finding lists the whole sequence; the failing request is the last.
            curls = re.findall(r"^\s+(curl .+)$", text, re.M)
            curl = curls[-1] if curls else None
            parts = [
                f"{operation}",
                " + ".join(checks),
                f"-> {status.group(1)}" if status else "",
                detail(body.group(1)) if body else "",
                f"| {shorten(curl)}" if curl else "",
            ]
            if element.tag == "error":
                parts.insert(1, "ERROR:")
                parts.append(text.strip().splitlines()[0][:200] if text.strip() else "")
            lines.append("  " + "  ".join(p for p in parts if p))
    return lines


def main(log: Path, report_dir: Path) -> int:
    reports = sorted(report_dir.glob("junit*.xml"))
    if reports:
        lines = findings(reports[-1])
        print(f"schemathesis findings ({len(lines)}; full text in {log}):" if lines else "schemathesis: no findings")
        for line in sorted(lines):
            print(line)
    else:
        print(f"no JUnit report in {report_dir}; the end of {log}:")
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    at = text.rfind("=== SUMMARY ===")
    tail = text[text.rfind("\n", 0, at) + 1 :] if at >= 0 else text[-4000:]
    print(tail.rstrip())
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
