#!/usr/bin/env python3
"""Client-fault scenarios against the balancer (jobs/probe-client-faults.sh, issue 14).

Sub-commands:
  run --scenario NAME ...   runs one scenario while a canary client sends normal GETs, reads the
                            balancer's admin /metrics before and after, and prints one JSON object
  record --out DIR ...      appends the rows of a run (JSON lines) to <out>/probe-client-faults.csv
                            and rewrites <out>/probe-client-faults.md from the whole CSV

Scenarios (the client is always at fault; the balancer must never charge a backend):
  bad_chunked         POSTs with `Transfer-Encoding: chunked` and a bad chunk size `zz`: even
                      ones at once (the body is still being buffered), odd ones after 100 KB of
                      valid chunks (the body already streams to a backend). Expect 400 each.
  aborted_upload      uploads announcing Content-Length: 1000000 that send 100 KB and close the
                      socket: even ones with a FIN, odd ones with a RST (SO_LINGER 0).
  slow_body           slowhttptest -B with a small Content-Length (the body is buffered, the
                      balancer answers 408 after CLIENT_BODY_TIMEOUT, no backend is touched).
  slow_body_streamed  slowhttptest -B with a Content-Length over BUFFER_BODY_BYTES: the body
                      streams to a backend that waits for all of it, REQUEST_TIMEOUT expires
                      while the client still owes bytes -> 408, a client fault.
  stalled_reader      h1 clients (4 KiB receive buffers) request a large response, read nothing
                      and keep the socket open past IDLE_TIMEOUT.

Counters read from /metrics (matched by name, robust to renames of the per-backend counters):
ejections = sum of balancer_backend_ejections_total; backend failures = sum of every
balancer_backend_*_total counter whose name contains "error" or "fail"; client faults = sum of
balancer_client_faults_total by kind. Standard library only.
"""

import argparse
import csv
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

CSV_NAME = "probe-client-faults.csv"
MD_NAME = "probe-client-faults.md"
FIELDS = [
    "date_utc", "label", "git", "scenario", "clients", "ejections", "backend_failures",
    "client_faults", "canary_ok", "canary_total", "fault_kinds", "clients_saw", "peak_in_flight",
]
SCENARIOS = ["bad_chunked", "aborted_upload", "slow_body", "slow_body_streamed", "stalled_reader"]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def log(msg):
    print(f"[client_faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ metrics
def scrape(admin):
    """Returns [(name, {label: value}, float)] from the admin /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), dict(LABEL.findall(m.group(3) or "")), value))
    return out


def is_backend_failure(name):
    return (name.startswith("balancer_backend_") and name.endswith("_total")
            and ("error" in name or "fail" in name))


def summarise(samples):
    """The counters this probe reports, from one scrape."""
    s = {"ejections": 0.0, "backend_failures": 0.0, "faults": Counter(), "failure_names": set(),
         "ejected_now": 0.0, "connections_active": 0.0, "in_flight": 0.0}
    for name, labels, value in samples:
        if name == "balancer_backend_ejections_total":
            s["ejections"] += value
        elif is_backend_failure(name):
            s["backend_failures"] += value
            s["failure_names"].add(name)
        elif name == "balancer_client_faults_total":
            s["faults"][labels.get("kind", "?")] += value
        elif name == "balancer_backend_ejected":
            s["ejected_now"] += value
        elif name == "balancer_connections_active":
            s["connections_active"] = value
        elif name == "balancer_backend_in_flight":
            s["in_flight"] += value
    return s


def per_backend(samples, prefix):
    return {(n, l.get("backend", "?")): v for n, l, v in samples if n.startswith(prefix)}


# ------------------------------------------------------------------------------- canary
class Canary(threading.Thread):
    """Normal GETs on a keep-alive connection, every INTERVAL seconds; counts 200 + body."""

    def __init__(self, port, path, interval=0.05):
        super().__init__(daemon=True)
        self.port, self.path, self.interval = port, path, interval
        self.stop = threading.Event()
        self.ok = 0
        self.total = 0
        self.failures = Counter()

    def run(self):
        import http.client
        conn = None
        while not self.stop.is_set():
            self.total += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path, headers={"Host": "canary"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and body.startswith(b"ok"):
                    self.ok += 1
                else:
                    self.failures[f"status {resp.status}"] += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.failures[type(e).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.stop.wait(self.interval)
        if conn is not None:
            conn.close()


class Sampler(threading.Thread):
    """Reads /metrics every INTERVAL seconds: the most requests in flight to backends at once
    (shows whether a scenario's requests reached a backend at all)."""

    def __init__(self, admin, interval=0.25):
        super().__init__(daemon=True)
        self.admin, self.interval = admin, interval
        self.stop = threading.Event()
        self.peak = 0.0

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, summarise(scrape(self.admin))["in_flight"])
            except OSError as e:
                log(f"WARNING: /metrics: {e}")
            self.stop.wait(self.interval)


# ---------------------------------------------------------------------------- scenarios
def connect(port, rcvbuf=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_status(sock):
    """The status code of the first response on SOCK, or a word saying why there is none."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return "closed" if not data else "truncated"
            data += chunk
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return type(e).__name__
    parts = data.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 else "garbage"


def bad_chunked(port, clients, path, **_):
    seen = Counter()
    head = (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: text/plain\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    good = b"".join(b"2800\r\n" + b"a" * 0x2800 + b"\r\n" for _ in range(10))  # 10 x 10 KiB
    for i in range(clients):
        try:
            with connect(port) as s:
                body = b"zz\r\nhello\r\n0\r\n\r\n"
                if i % 2:  # streamed: a backend already has the head and 100 KiB
                    s.sendall(head + good)
                    time.sleep(0.2)
                    s.sendall(body)
                else:
                    s.sendall(head + body)
                seen[read_status(s)] += 1
        except OSError as e:
            seen[type(e).__name__] += 1
    return seen


def aborted_upload(port, clients, path, **_):
    seen = Counter()
    head = (f"POST {path} HTTP/1.1\r\nHost: probe\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 1000000\r\n\r\n").encode()
    part = b"u" * 100_000
    for i in range(clients):
        try:
            s = connect(port)
            s.sendall(head + part)
            time.sleep(0.3)  # the balancer is streaming it to a backend by now
            if i % 2:
                linger = struct.pack("ii", 1, 0)  # on, 0 s: close() sends a RST
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                seen["closed_rst"] += 1
            else:
                seen["closed_fin"] += 1
            s.close()
        except OSError as e:
            seen[type(e).__name__] += 1
        time.sleep(0.1)
    return seen


def slow_body(port, clients, path, content_length, duration, tmp, **_):
    cmd = ["slowhttptest", "-B", "-c", str(clients), "-i", "1", "-r", "50", "-s",
           str(content_length), "-t", "POST", "-l", str(duration), "-x", "10", "-p", "3",
           "-u", f"http://127.0.0.1:{port}{path}"]
    log("running: " + " ".join(cmd))
    out_path = os.path.join(tmp, f"slowhttptest-{content_length}.log")
    with open(out_path, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                            timeout=duration + 60, check=False).returncode
    with open(out_path, errors="replace") as f:
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", f.read())  # colours, screen clears
    seen = Counter()
    if rc:
        seen[f"slowhttptest_exit_{rc}"] = 1
    # Status blocks ("connected: N", "closed: N", "service available: YES|NO") every tick,
    # then "Test ended on Nth second" and "Exit status: ...".
    connected = [int(n) for n in re.findall(r"^\s*connected:\s+(\d+)", text, re.M)]
    if connected:
        seen["connected_max"] = max(connected)
    avail = re.findall(r"service available:\s+(\S+)", text)
    seen["probe_unavailable_ticks"] = sum(1 for a in avail if a.upper() != "YES")
    ended = re.findall(r"Test ended on (\d+)", text)
    if ended:
        seen["ended_s"] = int(ended[-1])
    status = re.findall(r"Exit status:\s*(.+)", text)
    if status:
        seen["exit:" + re.sub(r"\W+", "_", status[-1].strip().lower())] = 1
    return seen


def stalled_reader(port, clients, big_path, hold, **_):
    seen = Counter()
    socks = []
    received = []
    req = f"GET {big_path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode()
    for _ in range(clients):
        try:
            s = connect(port, rcvbuf=4096)
            s.sendall(req)
            socks.append(s)
        except OSError as e:
            seen[type(e).__name__] += 1
    log(f"stalled_reader: {len(socks)} clients hold for {hold}s without reading")
    time.sleep(hold)
    for s in socks:
        # Drain what the kernel holds: EOF or a reset means the balancer let the client go.
        s.setblocking(False)
        state, got = "open", 0
        try:
            while got < (64 << 20):
                data = s.recv(1 << 20)
                if not data:
                    state = "closed_by_balancer"
                    break
                got += len(data)
        except BlockingIOError:
            state = "open"
        except ConnectionResetError:
            state = "reset_by_balancer"
        seen[state] += 1
        received.append(got)
        s.close()
    if received:  # response bytes each client had been sent (kernel buffers included)
        seen["min_kib"] = min(received) >> 10
        seen["max_kib"] = max(received) >> 10
    return seen


RUNNERS = {
    "bad_chunked": bad_chunked,
    "aborted_upload": aborted_upload,
    "slow_body": slow_body,
    "slow_body_streamed": slow_body,
    "stalled_reader": stalled_reader,
}


def wait_quiet(admin, keep, limit):
    """Waits until at most KEEP connections are open (the scenario's are gone) and no request
    is in flight to a backend (every backend connection of the scenario was released)."""
    deadline = time.monotonic() + limit
    while True:
        s = summarise(scrape(admin))
        if s["connections_active"] <= keep and s["in_flight"] == 0:
            return True
        if time.monotonic() >= deadline:
            log(f"WARNING: not quiet after {limit}s: {s['connections_active']:.0f} connections, "
                f"{s['in_flight']:.0f} in flight")
            return False
        time.sleep(0.25)


def cmd_run(a):
    before = scrape(a.admin)
    canary = Canary(a.port, a.canary_path)
    canary.start()
    sampler = Sampler(a.admin)
    sampler.start()
    time.sleep(1.0)  # the canary has a baseline before the faults start
    t0 = time.monotonic()
    kwargs = dict(port=a.port, clients=a.clients, path=a.path, big_path=a.big_path,
                  hold=a.hold, duration=a.duration, tmp=a.tmp,
                  content_length=a.content_length)
    seen = RUNNERS[a.scenario](**kwargs)
    took = time.monotonic() - t0
    sampler.stop.set()
    sampler.join(5)
    # 2 = the canary's keep-alive connection and the admin connection of the scrape itself
    quiet = wait_quiet(a.admin, 2, a.quiet_limit)
    time.sleep(a.settle)
    canary.stop.set()
    canary.join(15)
    after = scrape(a.admin)
    b, c = summarise(before), summarise(after)
    faults = c["faults"] - b["faults"]
    eject_delta = per_backend(after, "balancer_backend_ejections_total")
    eject_before = per_backend(before, "balancer_backend_ejections_total")
    fail_delta = {k: v - per_backend(before, k[0]).get(k, 0.0)
                  for k, v in per_backend(after, "balancer_backend_").items()
                  if is_backend_failure(k[0])}
    result = {
        "scenario": a.scenario,
        "clients": a.clients,
        "ejections": int(c["ejections"] - b["ejections"]),
        "backend_failures": int(c["backend_failures"] - b["backend_failures"]),
        "client_faults": int(sum(faults.values())),
        "canary_ok": canary.ok,
        "canary_total": canary.total,
        "fault_kinds": " ".join(f"{k}={int(v)}" for k, v in sorted(faults.items()) if v),
        "clients_saw": " ".join(f"{k}={v}" for k, v in sorted(seen.items())),
        "peak_in_flight": int(sampler.peak),
        "detail": {
            "seconds": round(took, 1),
            "quiet": quiet,
            "ejected_now": c["ejected_now"],
            "failure_counters": sorted(c["failure_names"]),
            "ejections_by_backend": {k[1]: v - eject_before.get(k, 0.0)
                                     for k, v in eject_delta.items()},
            "failures_by_backend": {f"{k[0]}[{k[1]}]": v for k, v in fail_delta.items()},
            "canary_failures": dict(canary.failures),
        },
    }
    if not c["failure_names"]:
        log("WARNING: /metrics has no balancer_backend_*error*/*fail* counter; "
            "backend failures cannot be read")
        result["backend_failures"] = -1
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------- record
def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cmd_record(a):
    os.makedirs(a.out, exist_ok=True)
    csv_path = os.path.join(a.out, CSV_NAME)
    rows = read_rows(csv_path)
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    with open(a.results) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            rows.append({k: r.get(k, "") for k in FIELDS} | {
                "date_utc": date, "label": a.label, "git": a.git})
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    write_md(os.path.join(a.out, MD_NAME), rows, a.config)


def verdict(r):
    try:
        bad = (int(r["ejections"]) != 0 or int(r["backend_failures"]) != 0
               or int(r["canary_ok"]) != int(r["canary_total"]))
    except (KeyError, ValueError):
        return "?"
    return "FAIL" if bad else "ok"


def write_md(path, rows, config):
    lines = [
        "# Client faults are never charged to backends (issue 14)",
        "",
        "Written by `jobs/probe-client-faults.sh` (scenarios in `jobs/bench/client_faults.py`); "
        "one row per scenario and run, appended to `probe-client-faults.csv`. A scenario passes "
        "when it caused no ejection, no backend failure and no failed canary request.",
        "",
        "## Method",
        "",
        "- Two nginx origins on loopback (one worker), each: `GET /canary` → `ok`, "
        "`GET /big` → a file of `BIG_BYTES` (4 MiB by default), `POST /upload` → nginx reads "
        "the **whole** body (proxy_pass to itself with request buffering, as an application "
        "would) and then answers `ok`.",
        f"- The balancer (release build, snapshot copy) with `STATIC_BACKENDS` = both origins, "
        f"tasks off (`REDIS_HOST=`), {config}.",
        "- During every scenario a canary client sends `GET /canary` every 50 ms on a keep-alive "
        "connection (a success is 200 + `ok`). After the scenario the probe waits until the "
        "balancer has no client connection open but the canary's (and the scrape's) and no "
        "request in flight to a backend, then 1 s more, and reads the admin `/metrics` again.",
        "- Counters are deltas over the scenario: *ejections* = Σ "
        "`balancer_backend_ejections_total`; *backend failures* = Σ of every "
        "`balancer_backend_*_total` counter named `*error*`/`*fail*` (today "
        "`balancer_backend_errors_total`: transport failures, timeouts and 5xx); *client faults* = "
        "Σ `balancer_client_faults_total` (kinds in the last columns).",
        "",
        "| scenario | clients | what the clients do | expected |",
        "|---|---|---|---|",
        "| bad_chunked | 20 | `Transfer-Encoding: chunked`, chunk size `zz`; even: at once, odd: "
        "after 100 KiB of valid chunks (the body already streams to a backend) | 400 each, "
        "`bad_request_body` |",
        "| aborted_upload | 12 | `Content-Length: 1000000`, send 100 KB, close (even: FIN, odd: "
        "RST) | `bad_request_body` |",
        "| slow_body | 200 | `slowhttptest -B -c 200 -i 1 -r 50 -s 8192 -x 10 -p 3 -l 20`: a "
        "small body, buffered by the balancer | 408 after `CLIENT_BODY_TIMEOUT`, "
        "`request_body_timeout` |",
        "| slow_body_streamed | 200 | the same with `-s 200000` (over `BUFFER_BODY_BYTES`): the "
        "body streams to a backend that waits for all of it | 408 when `REQUEST_TIMEOUT` expires "
        "with the body unfinished, `request_body_timeout` |",
        "| stalled_reader | 20 | HTTP/1.1 `GET /big` with a 4 KiB receive buffer, read nothing, "
        "hold past `IDLE_TIMEOUT` | the balancer closes the client connection and releases "
        "the backend connection (in flight back to 0) |",
        "",
        "Before the fix (issue 14): 20 bad-chunk POSTs ejected both backends (twice each); 12 "
        "aborted uploads caused a 40 s ejection; one slow-body run produced 180 ejections.",
        "",
        "## Results",
        "",
        "| date (UTC) | label | git | scenario | clients | ejections | backend failures | "
        "client faults | canary ok / total | fault kinds | clients saw | peak in flight | "
        "verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['date_utc']} | {r['label']} | `{r['git']}` | {r['scenario']} | {r['clients']} "
            f"| {r['ejections']} | {r['backend_failures']} | {r['client_faults']} "
            f"| {r['canary_ok']} / {r['canary_total']} | {r.get('fault_kinds', '')} "
            f"| {r.get('clients_saw', '')} | {r.get('peak_in_flight', '')} | {verdict(r)} |")
    lines += [
        "",
        "*clients saw*: status codes of the responses (bad_chunked), how the socket was closed "
        "(aborted_upload), slowhttptest's report (slow_body*: the most connections open at "
        "once, the second the test ended, its exit status, `probe_unavailable_ticks` = status "
        "ticks in which its own probe request got no answer within `-p`), or whether the "
        "balancer had closed the connection when the hold ended and how many KiB each client "
        "had been sent by then (stalled_reader). *peak in flight*: the most requests in flight "
        "to the backends at once during the scenario (`balancer_backend_in_flight`, read every "
        "250 ms, so short sequential requests show as 1; the canary's own requests take about a "
        "millisecond and may show as 1 too): 0 means the scenario's requests never reached a "
        "backend.",
        "",
        "On HTTP/1.1 a client that takes nothing also leaves its own connection idle, so the "
        "client connection's `IDLE_TIMEOUT` can end it before the backend connection's stall "
        "watchdog (1–1.5 × `IDLE_TIMEOUT` after the last frame) fires: the backend connection "
        "is then released with the response, and `stalled_reader` is not counted. What this "
        "probe checks is that nothing is charged to a backend and nothing stays in flight.",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--scenario", required=True, choices=SCENARIOS)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--admin", type=int, required=True)
    r.add_argument("--clients", type=int, required=True)
    r.add_argument("--path", default="/upload")
    r.add_argument("--big-path", default="/big")
    r.add_argument("--canary-path", default="/canary")
    r.add_argument("--content-length", type=int, default=8192)
    r.add_argument("--duration", type=int, default=20, help="slowhttptest -l")
    r.add_argument("--hold", type=float, default=10.0, help="stalled_reader hold, seconds")
    r.add_argument("--settle", type=float, default=1.0)
    r.add_argument("--quiet-limit", type=float, default=30.0)
    r.add_argument("--tmp", default="/tmp")
    rec = sub.add_parser("record")
    rec.add_argument("--out", required=True)
    rec.add_argument("--label", required=True)
    rec.add_argument("--git", required=True)
    rec.add_argument("--results", required=True, help="JSON lines from `run`")
    rec.add_argument("--config", required=True, help="the balancer settings, for the method")
    a = p.parse_args()
    if a.cmd == "run":
        cmd_run(a)
    else:
        cmd_record(a)


if __name__ == "__main__":
    main()
