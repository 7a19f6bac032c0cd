#!/usr/bin/env python3
"""Helpers for jobs/bench-callgrind.sh (standard library only).

Subcommands:
  latest-dump DIR PID    print the path of the newest numbered dump
                         DIR/callgrind.out.PID.N (highest N); exit 1 if none
  ir FILE                print the Ir total of one callgrind dump ("totals:"
                         line, falling back to "summary:")
  per-request FILE N     print every event of a dump divided by N requests
  fix-calls IN OUT       copy a dump, rewriting "calls=0" to "calls=1" (see
                         fix_calls) so callgrind_annotate's self costs are right
  parse-h2load FILE N    check h2load output: exactly N requests done and
                         succeeded, none failed/errored; print
                         "total started done succeeded failed errored timeout"
  append ...             append one row to the results CSV (header if new)
  report --csv CSV --md MD
                         rewrite the Markdown report from all CSV rows
"""

import argparse
import csv
import os
import re
import sys

FIELDS = [
    "date_utc", "label", "git", "protocol", "requests", "conns", "streams",
    "instructions", "instructions_per_request",
]


def die(msg):
    print(f"callgrind.py: {msg}", file=sys.stderr)
    sys.exit(1)


def latest_dump(directory, pid):
    pat = re.compile(r"^callgrind\.out\.%s\.(\d+)$" % re.escape(str(pid)))
    best = None
    for name in os.listdir(directory):
        m = pat.match(name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), name)
    if best is None:
        die(f"no callgrind.out.{pid}.N in {directory}")
    print(os.path.join(directory, best[1]))


def read_events(path):
    """Return (events, totals, summary) of a dump; totals or summary may be None."""
    events = None
    totals = summary = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                totals = [int(x) for x in line.split()[1:]]
            elif line.startswith("summary:"):
                summary = [int(x) for x in line.split()[1:]]
    if events is None:
        die(f"{path}: no 'events:' line (not a callgrind dump?)")
    return events, totals, summary


def read_ir(path):
    """Return (totals, summary) Ir of a dump; either may be None."""
    events, totals, summary = read_events(path)
    if "Ir" not in events:
        die(f"{path}: no Ir event (events: {' '.join(events)})")
    i = events.index("Ir")

    def pick(v):
        return v[i] if v is not None and len(v) > i else None

    return pick(totals), pick(summary)


def ir(path):
    totals, summary = read_ir(path)
    value = totals if totals is not None else summary
    if value is None:
        die(f"{path}: neither 'totals:' nor 'summary:' line")
    print(value)


def per_request(path, requests):
    """Print every event of a dump divided by the requests, e.g. with --cache-sim=yes
    "Ir=19689.0 Dr=... D1mr=... DLmr=..." (D1mr/D1mw: L1 data read/write misses,
    DLmr/DLmw: last-level ones; valgrind's simulated caches, not the CPU's)."""
    events, totals, summary = read_events(path)
    values = totals if totals is not None else summary
    if values is None or requests <= 0:
        die(f"{path}: no totals, or no requests")
    print(" ".join(f"{e}={v / requests:.1f}" for e, v in zip(events, values)))


def fix_calls(src, dst):
    """callgrind_annotate (3.19) treats the cost line after "calls=0 ..." as
    the caller's *self* cost. A dump taken mid-run (callgrind_control -d after
    -z) writes calls=0 for calls that started before the zero and were still
    running (main -> runtime -> ...), so without this the whole run shows up
    as self cost of __libc_start_main. Only call counts of those frames
    change; every cost stays as recorded."""
    with open(src, encoding="utf-8", errors="surrogateescape") as fi, \
            open(dst, "w", encoding="utf-8", errors="surrogateescape") as fo:
        for line in fi:
            if line.startswith("calls=0 "):
                line = "calls=1 " + line[len("calls=0 "):]
            fo.write(line)


def parse_h2load(path, expected):
    text = open(path, encoding="utf-8", errors="replace").read()
    m = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    if not m:
        die(f"{path}: no 'requests:' summary line in h2load output")
    total, started, done, ok, failed, errored, timeout = map(int, m.groups())
    print(total, started, done, ok, failed, errored, timeout)
    m2 = re.search(r"^status codes: (\d+) 2xx", text, re.M)
    if m2 and int(m2.group(1)) != expected:
        die(f"{path}: {m2.group(1)} 2xx responses, expected {expected}")
    if not (done == ok == expected and failed == errored == timeout == 0):
        die(f"{path}: expected {expected} succeeded requests, got "
            f"{ok} succeeded / {failed} failed / {errored} errored / {timeout} timeout")


def append(args):
    new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
    if not new:
        with open(args.csv, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if header != FIELDS:
            die(f"{args.csv}: unexpected header {header}; expected {FIELDS}")
    row = {
        "date_utc": args.date, "label": args.label, "git": args.git,
        "protocol": args.protocol, "requests": args.requests,
        "conns": args.conns, "streams": args.streams,
        "instructions": args.instructions,
        "instructions_per_request": "%.1f" % (args.instructions / args.requests),
    }
    with open(args.csv, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)


def fmt_int(s):
    try:
        return f"{round(float(s)):,}"
    except ValueError:
        return s


def md_cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def report(args):
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = [
        "# Balancer: CPU instructions per proxied request (callgrind)",
        "",
        "Written by `jobs/bench-callgrind.sh`; one row per protocol and run, "
        "newest last (source: `bench-callgrind.csv`).",
        "",
        "The balancer runs under `valgrind --tool=callgrind`, pinned to one CPU "
        "so it uses its single-thread runtime, in front of three nginx origins on "
        "loopback. For each protocol a warm-up load is sent first; then the "
        "instruction counters are zeroed with `callgrind_control -z`, `h2load` "
        "sends exactly `requests` requests over `conns` connections (`streams` "
        "concurrent requests per connection; h1 = HTTP/1.1 keep-alive, h2c = "
        "HTTP/2 prior knowledge), and `callgrind_control -d` dumps the count. "
        "`instructions` is the dump's total Ir for the whole process (all "
        "threads, including libc and the kernel-call wrappers but not the "
        "kernel itself), so it covers connection setup and teardown as well, "
        "amortised over the run. The count is exact and does not depend on "
        "machine load, but identical runs still differ a little (up to about "
        "1%, likely from event batching, hash seeds, allocator state), so treat "
        "differences of a percent or so as noise.",
        "",
        "Rows labelled `reference: ...` measure nginx or HAProxy the same way "
        "(`jobs/bench-callgrind.sh --proxy nginx|haproxy`): configured from the "
        "templates `jobs/bench-proxy.sh` uses, one process (nginx with "
        "`master_process off`, HAProxy with `nbthread 1`), started afresh for "
        "each protocol. Their `git` column is the checkout the script ran from, "
        "not a build of theirs.",
        "",
        "| date (UTC) | label | git | protocol | requests | conns | streams "
        "| instructions | instructions / request |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append("| " + " | ".join([
            md_cell(r.get("date_utc", "")), md_cell(r.get("label", "")),
            md_cell(r.get("git", "")), md_cell(r.get("protocol", "")),
            md_cell(r.get("requests", "")), md_cell(r.get("conns", "")),
            md_cell(r.get("streams", "")),
            fmt_int(r.get("instructions", "")),
            fmt_int(r.get("instructions_per_request", "")),
        ]) + " |")
    out.append("")
    tmp = args.md + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    os.replace(tmp, args.md)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("latest-dump")
    sp.add_argument("dir")
    sp.add_argument("pid")
    sp = sub.add_parser("ir")
    sp.add_argument("file")
    sp = sub.add_parser("per-request")
    sp.add_argument("file")
    sp.add_argument("requests", type=int)
    sp = sub.add_parser("fix-calls")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = sub.add_parser("parse-h2load")
    sp.add_argument("file")
    sp.add_argument("expected", type=int)
    sp = sub.add_parser("append")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--date", required=True)
    sp.add_argument("--label", required=True)
    sp.add_argument("--git", required=True)
    sp.add_argument("--protocol", required=True)
    sp.add_argument("--requests", type=int, required=True)
    sp.add_argument("--conns", type=int, required=True)
    sp.add_argument("--streams", type=int, required=True)
    sp.add_argument("--instructions", type=int, required=True)
    sp = sub.add_parser("report")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--md", required=True)
    a = p.parse_args()
    if a.cmd == "latest-dump":
        latest_dump(a.dir, a.pid)
    elif a.cmd == "ir":
        ir(a.file)
    elif a.cmd == "per-request":
        per_request(a.file, a.requests)
    elif a.cmd == "fix-calls":
        fix_calls(a.src, a.dst)
    elif a.cmd == "parse-h2load":
        parse_h2load(a.file, a.expected)
    elif a.cmd == "append":
        append(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
