#!/usr/bin/env python3
"""Reads the JSON the end-to-end test (jobs/e2e.sh) fetched and prints plain lines for it.

Usage: inspect.py COMMAND FILE [ARGS]

  pool STATS            "<active> <ready> <scored> <sundown> <total>" from the agent's /stats:
                        active = not SUNDOWN; ready = active with ready_ms; scored = ready
                        with numeric scores and a category LU/MU/HU
  table STATS           one line per container: short id, name, category, scores
  ready-ids STATS       ids of the active, ready containers, one per line
  avg STATS             mean overall_score of the scored active containers ("-" if none)
  events EVENTS KIND SINCE_MS
                        ids (details.id, "-" when none) of the events of KIND at or
                        after SINCE_MS
  event-lines EVENTS N  the N newest events, one line each
  hostnames FILE        distinct "hostname" values of a file of /echo bodies, one per line
"""
import json
import sys

SCORES = ("cpu_score", "memory_score", "network_score", "availability_score", "overall_score")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def active(rows):
    return [r for r in rows if r.get("utilization_category") != "SUNDOWN"]


def ready(rows):
    return [r for r in active(rows) if r.get("ready_ms") is not None]


def scored(rows):
    return [
        r
        for r in ready(rows)
        if all(is_number(r.get(k)) for k in SCORES)
        and r.get("utilization_category") in ("LU", "MU", "HU")
    ]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    cmd, path = argv[1], argv[2]
    if cmd == "hostnames":
        names = set()
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    names.add(json.loads(line).get("hostname", "?"))
        for name in sorted(names):
            print(name)
        return
    data = load(path)
    if cmd == "pool":
        print(len(active(data)), len(ready(data)), len(scored(data)), len(data) - len(active(data)), len(data))
    elif cmd == "table":
        for r in data:
            s = " ".join(
                f"{k.split('_')[0]}={r[k]:.1f}" if is_number(r.get(k)) else f"{k.split('_')[0]}=-"
                for k in SCORES
            )
            print(f"{r['id'][:12]} {r.get('name')} {r.get('utilization_category')} "
                  f"ready={'yes' if r.get('ready_ms') else 'no'} in_flight={r.get('in_flight')} {s}")
    elif cmd == "ready-ids":
        for r in ready(data):
            print(r["id"])
    elif cmd == "avg":
        rows = scored(data)
        print(f"{sum(r['overall_score'] for r in rows) / len(rows):.1f}" if rows else "-")
    elif cmd == "events":
        kind, since = argv[3], int(argv[4])
        for e in data:
            if e.get("kind") == kind and e.get("at_ms", 0) >= since:
                print((e.get("details") or {}).get("id") or "-")
    elif cmd == "event-lines":
        for e in data[: int(argv[3])]:
            print(f"{e.get('at_ms')} {e.get('kind')}: {e.get('reason')}")
    else:
        sys.exit(f"unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
