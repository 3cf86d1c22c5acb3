#!/usr/bin/env python3
"""The end-to-end figures of docs/performance.md, each next to its baseline from the same run.

Runs against a started rdev-api (scripts/load.sh starts one, like `make run`) at BASE with the
admin key in KEY, the server's pid in PID (for CPU and RSS). Loopback only; every phase is
bounded. Prints one table: figure, measured, baseline, ratio or difference, target.

Phases: authenticated GET vs /healthz (wrk, saturation); GET /v1/me p99 at a fixed 1,000 req/s
(oha, coordinated-omission corrected); a command's round trip with ?wait= vs spawning `true`
here; commands per second end to end and enqueue->start; idle SSE streams' CPU and RSS; output ->
SSE event latency.
"""

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

BASE = os.environ.get("BASE", "http://127.0.0.1:8080")
KEY = os.environ["KEY"]
PID = int(os.environ["PID"])
SECS = int(os.environ.get("LOAD_SECONDS", "10"))
STREAMS = int(os.environ.get("LOAD_STREAMS", "1000"))
COMMANDS = int(os.environ.get("LOAD_COMMANDS", "1000"))
BASE2 = os.environ.get("BASE2")  # a second replica on the same Postgres (LOAD_STORE=postgres)
STORE = os.environ.get("STORE", "sqlite")
# Which phases run (comma-separated; all by default), for re-measuring one figure quickly.
PHASES = set(os.environ.get("LOAD_PHASES", "auth,round_trip,throughput,output,streams").split(","))


def host_port(base):
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
    if not (host.startswith("127.") or host == "localhost"):
        sys.exit("load tests only target loopback")
    return host, int(port)


HOST, PORT = host_port(BASE)
if BASE2:
    host_port(BASE2)

ROWS = []


def row(figure, measured, baseline, relation, target):
    ROWS.append((figure, measured, baseline, relation, target))
    print(f"  {figure}: {measured} (baseline {baseline}; {relation}; target {target})", file=sys.stderr, flush=True)


def call(method, path, body=None, key=KEY, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return json.loads(res.read() or b"null")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url, key=None, connections=32, threads=2):
    return wrk_all([url], key, connections, threads)


def wrk_all(urls, key=None, connections=32, threads=2):
    """Requests per second summed over one wrk per URL, all running at once."""
    runs = []
    for url in urls:
        args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{SECS}s", "--latency", url]
        if key:
            args[1:1] = ["-H", f"Authorization: Bearer {key}"]
        runs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    total = 0.0
    for run in runs:
        out, _ = run.communicate()
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return total


def oha_p99_ms(url, key=None):
    args = ["oha", "--no-tui", "--output-format", "json", "-q", "1000", "-z", f"{SECS}s", "-c", "32",
            "--latency-correction", url]
    if key:
        args[1:1] = ["-H", f"Authorization: Bearer {key}"]
    out = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return out["latencyPercentiles"]["p99"] * 1000


def phase_auth(load_key):
    print("== authenticated GET /v1/me vs GET /healthz (wrk, 32 connections)", file=sys.stderr)
    healthz = wrk(f"{BASE}/healthz")
    me = wrk(f"{BASE}/v1/me", load_key)
    row(f"GET /v1/me rps / GET /healthz rps, {STORE}", f"{me:.0f}/s", f"{healthz:.0f}/s", f"ratio {me / healthz:.2f}",
        ">= 0.5" if STORE == "sqlite" else ">= 0.4")
    if BASE2:
        print("== the same on both replicas at once (wrk per replica, 16 connections each)", file=sys.stderr)
        urls = [BASE, BASE2]
        healthz = wrk_all([f"{u}/healthz" for u in urls], connections=16, threads=1)
        me = wrk_all([f"{u}/v1/me" for u in urls], load_key, connections=16, threads=1)
        row("GET /v1/me rps / GET /healthz rps, two replicas", f"{me:.0f}/s", f"{healthz:.0f}/s",
            f"ratio {me / healthz:.2f}", ">= 0.4")
    if shutil.which("oha"):
        print("== p99 at a fixed 1,000 req/s (oha, latency correction)", file=sys.stderr)
        base_p99 = oha_p99_ms(f"{BASE}/healthz")
        me_p99 = oha_p99_ms(f"{BASE}/v1/me", load_key)
        row("GET /v1/me p99 at 1,000 req/s", f"{me_p99:.2f} ms", f"/healthz {base_p99:.2f} ms",
            f"+{me_p99 - base_p99:.2f} ms", "< 1 ms")
    else:
        row("GET /v1/me p99 at 1,000 req/s", "not measured", "-", "oha missing: cargo install oha --locked", "< 1 ms")


def phase_round_trip(project):
    print("== a command's round trip: POST ?wait=10 with `true`, one at a time", file=sys.stderr)
    spawn = []
    for _ in range(200):
        t = time.perf_counter()
        subprocess.run(["true"], check=True)
        spawn.append((time.perf_counter() - t) * 1000)
    trips = []
    for _ in range(200):
        t = time.perf_counter()
        done = call("POST", f"/v1/projects/{project}/commands?wait=10", {"command": ["true"]})
        trips.append((time.perf_counter() - t) * 1000)
        assert done["status"] == "succeeded", done
    p50, base = statistics.median(trips), statistics.median(spawn)
    row("round trip ?wait= `true` p50", f"{p50:.1f} ms (p99 {pct(trips, 99):.1f})", f"spawn `true` {base:.1f} ms",
        f"+{p50 - base:.1f} ms", "<= +2 ms (+4 ms sandboxed)")


async def http(method, path, body=None, key=KEY):
    reader, writer = await asyncio.open_connection(HOST, PORT)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n"
                 .encode() + data)
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        payload = dechunk(payload)
    return json.loads(payload or b"null")


def dechunk(payload):
    out = b""
    while payload:
        size, _, rest = payload.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        payload = rest[n + 2:]
    return out


async def phase_throughput(project):
    print(f"== {COMMANDS} commands `true` end to end, 32 clients", file=sys.stderr)
    started = time.perf_counter()
    ids = []
    sem = asyncio.Semaphore(32)

    async def submit():
        async with sem:
            v = await http("POST", f"/v1/projects/{project}/commands", {"command": ["true"]})
            ids.append(v["id"])

    await asyncio.gather(*(submit() for _ in range(COMMANDS)))
    waits = []
    for cid in ids:
        while True:
            v = await http("GET", f"/v1/commands/{cid}?wait=30")
            if v["status"] not in ("queued", "running"):
                break
        waits.append(v)
    elapsed = time.perf_counter() - started
    ok = sum(1 for v in waits if v["status"] == "succeeded")
    row("commands/s end to end (`true`, process executor)", f"{COMMANDS / elapsed:.0f}/s", f"{ok}/{COMMANDS} succeeded",
        f"{elapsed:.1f} s in all", ">= 300/s")
    def ms(a, b):
        from datetime import datetime
        return (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds() * 1000
    q2s = [ms(v["queued_at"], v["started_at"]) for v in waits if v.get("started_at")]
    row("enqueue -> start", f"p50 {statistics.median(q2s):.1f} ms, p99 {pct(q2s, 99):.1f} ms", "-", "under the burst", "report")


async def open_stream(cid, arrivals=None, base=None):
    host, port = host_port(base or BASE)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/commands/{cid}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
    await writer.drain()
    if arrivals is None:
        return writer
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.time_ns()
        buf += chunk
        for stamp in re.findall(rb'"data":"(\d{19})\\n"', buf):
            arrivals.append((now - int(stamp)) / 1e6)
        buf = buf[buf.rfind(b"\n\n") + 2:] if b"\n\n" in buf else buf
        if b"event: exit" in chunk:
            break
    writer.close()
    return None


async def phase_streams(project):
    print(f"== {STREAMS} idle SSE streams: CPU and RSS", file=sys.stderr)
    long = await http("POST", f"/v1/projects/{project}/commands", {"command": ["sleep", "120"]})
    await asyncio.sleep(1)
    rss_before, cpu_before, t = rss_mib(PID), cpu_seconds(PID), time.perf_counter()
    await asyncio.sleep(5)
    idle_cpu = (cpu_seconds(PID) - cpu_before) / (time.perf_counter() - t)
    writers = await asyncio.gather(*(open_stream(long["id"]) for _ in range(STREAMS)))
    await asyncio.sleep(2)
    cpu0, t0 = cpu_seconds(PID), time.perf_counter()
    await asyncio.sleep(10)
    cpu = (cpu_seconds(PID) - cpu0) / (time.perf_counter() - t0)
    rss = rss_mib(PID)
    row(f"{STREAMS} idle SSE streams, CPU", f"{cpu * 100:.1f} % of a core", f"no streams {idle_cpu * 100:.1f} %",
        f"+{(cpu - idle_cpu) * 100:.1f} points", "< 5 %")
    row(f"{STREAMS} idle SSE streams, RSS", f"{rss:.0f} MiB", f"before {rss_before:.0f} MiB",
        f"+{rss - rss_before:.0f} MiB", "< 200 MiB at 10,000")
    for w in writers:
        w.close()
    await http("POST", f"/v1/commands/{long['id']}/cancel")
    await asyncio.sleep(1)


async def phase_output_latency(project):
    print("== output -> SSE event latency (with two replicas: a stream on each)", file=sys.stderr)
    script = "for i in $(seq 40); do date +%s%N; sleep 0.05; done"
    v = await http("POST", f"/v1/projects/{project}/commands", {"script": script})
    here, there = [], []
    streams = [open_stream(v["id"], here)]
    if BASE2:
        streams.append(open_stream(v["id"], there, BASE2))
    await asyncio.gather(*streams)
    if not BASE2:
        if here:
            row("output -> SSE event, same replica", f"p50 {statistics.median(here):.1f} ms",
                f"p99 {pct(here, 99):.1f} ms", f"{len(here)} lines", "< 5 ms")
        return
    # The queue picks the replica that runs the command, so which stream is the local one is not
    # known here: the faster is reported as the same-replica figure, the slower as across.
    fast, slow = sorted([here, there], key=lambda a: statistics.median(a) if a else float("inf"))
    if fast:
        row("output -> SSE event, same replica", f"p50 {statistics.median(fast):.1f} ms",
            f"p99 {pct(fast, 99):.1f} ms", f"{len(fast)} lines (the faster stream)", "< 5 ms")
    if slow:
        row("output -> SSE event, across replicas", f"p50 {statistics.median(slow):.1f} ms",
            f"p99 {pct(slow, 99):.1f} ms", f"{len(slow)} lines (the slower stream)", "< 15 ms")


def main():
    load_key = call("POST", "/v1/api-keys", {"name": "load", "scopes": ["projects:read"], "rate_limit_rps": 100000})["key"]
    row("idle RSS", f"{rss_mib(PID):.0f} MiB", "-", "started, one key and no load yet", "< 30 MiB")
    project = f"load{int(time.time())}"
    call("POST", "/v1/projects", {"name": project, "image": "alpine:3.20", "max_concurrent_commands": 1000})
    if "auth" in PHASES:
        phase_auth(load_key)
    if "round_trip" in PHASES:
        phase_round_trip(project)
    if "throughput" in PHASES:
        asyncio.run(phase_throughput(project))
    if "output" in PHASES:
        asyncio.run(phase_output_latency(project))
    if "streams" in PHASES:
        asyncio.run(phase_streams(project))
    print("\n| figure | measured | baseline (same run) | relation | target |\n|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
