#!/usr/bin/env python3
"""Reads what the chaos suite (jobs/chaos.sh) fetched and prints plain lines for it.

Usage: query.py COMMAND FILE [ARGS]

  pool STATS              "<active> <ready> <sundown> <total>" from the agent's /stats
                          (active = not SUNDOWN; ready = active with ready_ms)
  ids STATS [all|ready|sundown]
                          container ids, sorted, one per line (default all)
  sundown STATS           "<id> <in_flight>" of each SUNDOWN container
  health HEALTH           "<docker> <redis> <desired> <active> <balancers>" from /health
                          (booleans as 1/0)
  count EVENTS SINCE_MS KIND...
                          "<kind>=<n>" for each KIND, events at or after SINCE_MS
  has EVENTS SINCE_MS ID KIND...
                          exit 0 when an event of one of the KINDs about container ID
                          happened at or after SINCE_MS
  event-lines EVENTS SINCE_MS
                          the events at or after SINCE_MS, oldest first, one line each
                          (local time with milliseconds)
  trickle LOG             "<requests> <failed>" of a trickle log ("<epoch s> <status>"
                          lines; failed = anything but 200); on stderr, the failures as
                          spans of consecutive failed requests (first, last, count, statuses)
"""
import json
import sys
import time


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def clock(ms):
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{int(ms) % 1000:03d}"


def active(rows):
    return [r for r in rows if r.get("utilization_category") != "SUNDOWN"]


def ready(rows):
    return [r for r in active(rows) if r.get("ready_ms") is not None]


def events_since(data, since):
    return [e for e in data if e.get("at_ms", 0) >= since]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    cmd, path, args = argv[1], argv[2], argv[3:]
    if cmd == "trickle":
        total = failed = 0
        spans = []  # [first, last, count, {status: n}] of consecutive failed requests
        in_span = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 2:
                    continue
                total += 1
                at, status = float(parts[0]), parts[1]
                if status == "200":
                    in_span = False
                    continue
                failed += 1
                if not in_span:
                    spans.append([at, at, 0, {}])
                    in_span = True
                span = spans[-1]
                span[1], span[2] = at, span[2] + 1
                span[3][status] = span[3].get(status, 0) + 1
        for first, last, count, statuses in spans:
            what = ", ".join(f"{n} x {'curl failed (000)' if s == '000' else 'HTTP ' + s}"
                             for s, n in sorted(statuses.items()))
            print(f"    failed from {clock(first * 1000)} to {clock(last * 1000)} "
                  f"({last - first:.1f} s): {count} request(s), {what}", file=sys.stderr)
        print(total, failed)
        return
    data = load(path)
    if cmd == "pool":
        print(len(active(data)), len(ready(data)), len(data) - len(active(data)), len(data))
    elif cmd == "ids":
        which = args[0] if args else "all"
        rows = {"all": data, "ready": ready(data),
                "sundown": [r for r in data if r not in active(data)]}[which]
        for cid in sorted(r["id"] for r in rows):
            print(cid)
    elif cmd == "sundown":
        for r in data:
            if r.get("utilization_category") == "SUNDOWN":
                print(r["id"], r.get("in_flight") or 0)
    elif cmd == "health":
        print(int(bool(data.get("docker"))), int(bool(data.get("redis"))), data.get("desired"),
              data.get("active"), data.get("balancers"))
    elif cmd == "count":
        recent = events_since(data, int(args[0]))
        print(" ".join(f"{k}={sum(1 for e in recent if e.get('kind') == k)}" for k in args[1:]))
    elif cmd == "has":
        since, cid, kinds = int(args[0]), args[1], args[2:]
        found = any(e.get("kind") in kinds and (e.get("details") or {}).get("id") == cid
                    for e in events_since(data, since))
        sys.exit(0 if found else 1)
    elif cmd == "event-lines":
        for e in reversed(events_since(data, int(args[0]))):
            print(f"{clock(e.get('at_ms', 0))} {e.get('kind')}: {e.get('reason')}")
    else:
        sys.exit(f"unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
