#!/usr/bin/env python3
"""Helper of jobs/bench-tasks.sh (standard library only, except the PNG plot).

Sub-commands:

  latency --base URL --n N --gap-ms G --samples FILE
      submit N tasks one at a time (GET / with `Prefer: respond-async`, a gap of
      G ms after each), wait until all are terminal, read their time stamps
      with GET /_tasks/{id}; then N more with `Prefer: respond-async, wait=10`
      timed by the client until the result arrives. Print key=value lines
      (submit->finish p50/p99 ...); write the per-task submit->finish ms to FILE.
  burst --base URL --since-ms MS
      walk GET /_tasks?limit=1000&cursor=... (newest first) over the tasks
      submitted at or after MS; print key=value lines (count, rates from the
      tasks' own submitted/finished time stamps, ...).
  report --csv RAW --meta META --samples-dir DIR --md OUT.md --csv-out OUT.csv
         [--png OUT.png]
      medians over rounds, ratios to the plain GET/s of the same round,
      targets; Markdown, CSV (raw rows + ratio rows) and the plot.

The raw CSV has the columns round,phase,metric,value,unit (one row per round
per metric), written by jobs/bench-tasks.sh.
"""

import argparse
import csv
import http.client
import json
import math
import os
import statistics
import sys
import time
import urllib.parse
from datetime import datetime

TERMINAL = {"succeeded", "failed", "dead", "cancelled"}


def die(msg):
    print(f"tasks.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(ts):
    """RFC 3339 UTC time stamp (ms precision) -> epoch ms; None stays None."""
    if ts is None:
        return None
    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


class Client:
    """One keep-alive HTTP/1.1 connection to the balancer."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def request(self, method, path, headers=None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.request(method, path, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, headers=None, want=200):
        status, body = self.request(method, path, headers)
        if status != want:
            die(f"{method} {path}: HTTP {status} (wanted {want}): {body[:200]!r}")
        return json.loads(body)


def submit(c):
    """One task (GET / with Prefer: respond-async); returns (id, client round trip ms)."""
    t0 = time.perf_counter()
    view = c.json("GET", "/", {"Prefer": "respond-async"}, want=202)
    return view["id"], (time.perf_counter() - t0) * 1000


def kv(**items):
    for k, v in items.items():
        print(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")


def cmd_latency(a):
    c = Client(a.base)
    ids, rtts = [], []
    for _ in range(a.n):
        tid, rtt = submit(c)
        ids.append(tid)
        rtts.append(rtt)
        time.sleep(a.gap_ms / 1000)
    views, deadline = {}, time.monotonic() + a.timeout
    while len(views) < len(ids):
        if time.monotonic() > deadline:
            die(f"{len(ids) - len(views)} of {len(ids)} latency tasks not terminal after {a.timeout}s")
        for tid in ids:
            if tid not in views:
                v = c.json("GET", f"/_tasks/{tid}")
                if v["status"] in TERMINAL:
                    views[tid] = v
        if len(views) < len(ids):
            time.sleep(0.05)
    bad = sum(1 for v in views.values() if v["status"] != "succeeded")
    lat, queue = [], []
    for tid in ids:
        v = views[tid]
        sub, start, fin = ms(v["submitted_at"]), ms(v["started_at"]), ms(v["finished_at"])
        lat.append(fin - sub)
        if start is not None:
            queue.append(start - sub)
    # The same, but each client waits for its result (`Prefer: wait`): the latency as a
    # client sees it, with a precise clock, including the wake-up and the result replay.
    waited = []
    for _ in range(a.n):
        t0 = time.perf_counter()
        status, body = c.request("GET", "/", {"Prefer": "respond-async, wait=10"})
        waited.append((time.perf_counter() - t0) * 1000)
        if status != 200 or body != b"ok":
            die(f"Prefer: wait: HTTP {status} {body[:100]!r} (wanted the origin's 200 ok)")
        time.sleep(a.gap_ms / 1000)
    with open(a.samples, "w") as f:
        f.write("".join(f"{x}\n" for x in lat))
    kv(latency_n=len(ids), latency_not_succeeded=bad,
       latency_p50_ms=float(pct(lat, 50)), latency_p99_ms=float(pct(lat, 99)),
       latency_max_ms=float(max(lat)), latency_mean_ms=statistics.fmean(lat),
       latency_queue_p50_ms=float(pct(queue, 50)) if queue else float("nan"),
       latency_submit_rtt_p50_ms=pct(rtts, 50), latency_submit_rtt_p99_ms=pct(rtts, 99),
       latency_wait_p50_ms=pct(waited, 50), latency_wait_p99_ms=pct(waited, 99))


def cmd_burst(a):
    c = Client(a.base)
    tasks, cursor = [], ""
    while True:
        q = "/_tasks?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        page = c.json("GET", q)
        older = False
        for v in page["tasks"]:
            sub = ms(v["submitted_at"])
            if sub < a.since_ms:
                older = True
                continue
            tasks.append((sub, ms(v["started_at"]), ms(v["finished_at"]), v["status"]))
        cursor = page.get("next_cursor")
        if older or not cursor:
            break
    if not tasks:
        die(f"no task submitted since {a.since_ms}")
    unfinished = [t for t in tasks if t[3] not in TERMINAL or t[2] is None]
    if unfinished:
        die(f"{len(unfinished)} of {len(tasks)} burst tasks are not terminal")
    n = len(tasks)
    first_sub = min(t[0] for t in tasks)
    last_sub = max(t[0] for t in tasks)
    last_fin = max(t[2] for t in tasks)
    after = [t for t in tasks if t[2] > last_sub]
    lat = [t[2] - t[0] for t in tasks]
    kv(burst_n=n, burst_not_succeeded=sum(1 for t in tasks if t[3] != "succeeded"),
       burst_submit_rps=n * 1000 / max(1, last_sub - first_sub),
       completion_rps=n * 1000 / max(1, last_fin - first_sub),
       burst_total_s=(last_fin - first_sub) / 1000,
       burst_completed_during_submit=n - len(after),
       drain_rps=len(after) * 1000 / max(1, last_fin - last_sub),
       burst_latency_p50_ms=float(pct(lat, 50)), burst_latency_p99_ms=float(pct(lat, 99)))


# ------------------------------------------------------------------ report
# key -> (label, how to format); keys are "phase:metric" or "metric" (any phase).
HEADLINE = [
    # key, label, abs target, ratio target
    ("A:plain_rps", "plain proxied GET/s (A)", None, None),
    ("B:submit_rps", "task submissions/s (B)", 5000, 0.4),
    ("C:completion_rps", "task completions/s (C: burst start → all terminal)", 2000, 0.15),
    ("D:latency_p50_ms", "submit→finish p50 ms, idle (D)", None, None),
    ("D:latency_p99_ms", "submit→finish p99 ms, idle (D)", None, None),
    ("C:redis_mib_per_10k", "Redis memory per 10k stored tasks, MiB (C)", None, None),
]


def fmt(v, unit=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if unit in ("count", "B", "bytes") or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def read_meta(path):
    out = []
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out.append((k, v))
    return out


def method(meta):
    """How each figure is measured, with this run's parameters (meta keys p.NAME)."""
    p = {k[2:]: v for k, v in meta.items() if k.startswith("p.")}
    c, d, bal, load = p.get("CONNS"), p.get("DURATION"), p.get("BAL_CPU"), p.get("LOAD_CPU")
    return [
        "Parameters: " + " ".join(f"{k}={v!r}" if " " in v or not v else f"{k}={v}"
                                  for k, v in p.items()) + ".",
        f"Pinning: the balancer on CPU {bal} (`taskset`, so it runs a current-thread runtime); "
        f"redis-server, the nginx origin (1 worker, `return 200 \"ok\"`), wrk and the Python "
        f"client share CPU {load}. Redis runs without persistence (`--save '' --appendonly no`"
        f"{' ' + p['REDIS_ARGS'] if p.get('REDIS_ARGS') else ''}, otherwise defaults) "
        "and is flushed whenever a balancer stops. Each round starts one balancer for A+B and "
        "a fresh one (new APP_IDENTIFIER) for D+C.",
        f"**A** plain: `wrk -t1 -c{c} -d{d} --latency /` after a {p.get('WARMUP')} warm-up run.",
        f"**B** submissions: the same with `-H 'Prefer: respond-async'`; the workers run the "
        "tasks meanwhile (submit_completed_during). submit_accepted = 2xx answers counted by "
        "wrk; submit_stored = growth of ZCARD idx:all 0.5 s after wrk ended (answers in flight "
        f"when wrk stops are stored but not counted, so stored may exceed accepted by up to "
        f"{c}); submit_lost = accepted but not stored.",
        f"**D** latency on an idle system: {p.get('LAT_TASKS')} tasks one at a time on one "
        f"keep-alive connection, {p.get('LAT_GAP_MS')} ms pause after each; latency = "
        "finished_at - submitted_at from GET /_tasks/{id} (the balancer's clock, 1 ms "
        "resolution: p50 values are whole ms); queue = started_at - submitted_at; submit_rtt = "
        "client time to the 202. latency_wait_* = the same number of tasks sent with "
        "`Prefer: respond-async, wait=10`, timed by the client until the stored result arrives "
        "(includes the pub/sub wake-up and the result replay; µs resolution).",
        f"**C** completions: a burst of {p.get('BURST')} tasks from `wrk -t1 -c{c} -s "
        "jobs/bench/tasks-burst.lua` (stops after that many answers; the requests still in "
        "flight are stored too, hence burst_n), then ZCARD idx:queued + idx:running polled "
        "every 0.05 s until 0. Rates from the tasks' own time stamps (GET /_tasks listing): "
        "completion_rps = burst_n / (first submitted -> last finished), i.e. burst start until "
        "all terminal, submissions and executions sharing the balancer's CPU; burst_submit_rps = "
        "burst_n / (first -> last submitted); drain_rps = tasks finished after the last "
        "submission / (last submitted -> last finished), the workers alone.",
        "Memory: Redis INFO used_memory once the burst is all terminal minus just before it, "
        "per task stored (task hashes with request and response, index entries, stream "
        "leftovers), scaled to 10k; task_hash_bytes = MEMORY USAGE of one finished task hash; "
        "stream_len_after = XLEN of the stream (entries are deleted when their task ends).",
        "CPU: cpu_*_pct = utime+stime of the process over the phase, % of one CPU "
        "(cpu_loadgen = wrk, Python and redis-cli: children of the script); *_us_per_op = "
        "that CPU time / operations (A requests, B tasks stored, C burst tasks). Softirq time "
        "(loopback TCP) is not in utime+stime; core_bal_busy_pct / core_load_busy_pct are the "
        "whole busy share of the balancer's and the load CPU (/proc/stat, every process, irq "
        "and softirq included): near 100 means that core is the bottleneck. drain_* = the same "
        "from the last burst answer until all tasks are terminal (workers alone, plus up to "
        "0.1 s of polling slack).",
        f"Noise: the machine is shared with other engineers' builds and tests. Before each "
        f"round the script waits up to {p.get('QUIET_WAIT')} s for other processes to use <= "
        f"{p.get('QUIET_PCT')}% of all CPUs (quiet_wait_s, other_load_at_start_pct); "
        "other_load_pct = CPU used during the phase by processes that are not part of the "
        "benchmark, as % of all CPUs. A busy CPU delays every hop of a task (Redis call, "
        "backend call) and lowers every rate here.",
    ]


def cmd_report(a):
    with open(a.csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        die("no rows in the raw CSV")
    data, units, order = {}, {}, []
    for r in rows:
        key = f"{r['phase']}:{r['metric']}"
        if key not in data:
            data[key], units[key] = {}, r["unit"]
            order.append(key)
        try:
            data[key][int(r["round"])] = float(r["value"])
        except ValueError:
            pass
    rounds = sorted({int(r["round"]) for r in rows})
    plain = data.get("A:plain_rps", {})
    ratios = {}
    for key in ("B:submit_rps", "C:completion_rps", "C:drain_rps", "C:burst_submit_rps"):
        ratios[key] = {r: data[key][r] / plain[r] for r in rounds
                       if r in data.get(key, {}) and plain.get(r)}
    med = {k: statistics.median(v.values()) if v else None for k, v in data.items()}
    rmed = {k: statistics.median(v.values()) if v else None for k, v in ratios.items()}

    # CSV: the raw rows plus the per-round ratios.
    with open(a.csv_out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "phase", "metric", "value", "unit"])
        for r in rows:
            w.writerow([r["round"], r["phase"], r["metric"], r["value"], r["unit"]])
        for key, per in ratios.items():
            ph, m = key.split(":")
            for rnd, v in sorted(per.items()):
                w.writerow([rnd, ph, f"{m}_vs_plain", f"{v:.4f}", "ratio"])

    if a.png:
        if os.path.exists(a.png):
            os.remove(a.png)
        write_png(a, data, med, rounds)
    meta = read_meta(a.meta)
    md = ["# Task submissions benchmark", ""]
    date = dict(meta).get("date", "?")
    md += [f"Generated by `jobs/bench-tasks.sh` on {date}. Median over {len(rounds)} round(s); "
           "each round runs A, B, D, C back to back (about a minute), so a ratio compares rates "
           "measured close together with the same pinning; ratios are medians of the per-round "
           "ratios. The machine is shared: see other_load_pct per phase below.", ""]
    md += ["| metric | median | per round | × plain GET/s | target | result |",
           "|---|---:|---|---:|---|---|"]
    verdicts = []
    for key, label, abs_t, ratio_t in HEADLINE:
        v = med.get(key)
        per = ", ".join(fmt(data.get(key, {}).get(r)) for r in rounds)
        rv = rmed.get(key)
        target, result = "", ""
        if abs_t is not None:
            target = f"≥ {abs_t:,} /s and ≥ {ratio_t}× plain"
            ok_abs = v is not None and v >= abs_t
            ok_rat = rv is not None and rv >= ratio_t
            result = (f"{'PASS' if ok_abs else 'FAIL'} (abs), "
                      f"{'PASS' if ok_rat else 'FAIL'} (ratio)")
            verdicts.append((label, ok_abs, ok_rat))
        md.append(f"| {label} | {fmt(v)} | {per} | {fmt(rv) + '×' if rv else ''} | {target} | {result} |")
    md += ["", "Where the CPU goes: CPU time per operation (utime+stime of the process over the "
           "phase / its operations; less sensitive to a busy machine than the rates; “if alone” = "
           "1e6 / µs) and how busy each core was (all processes, irq and softirq included; a core "
           "near 100% is the bottleneck). Balancer core = CPU the balancer is pinned to; load "
           "core = redis, nginx, wrk.", "",
           "| phase | operation | balancer µs/op | balancer if alone /s | redis µs/op | "
           "balancer core busy % | load core busy % |", "|---|---|---:|---:|---:|---:|---:|"]
    for ph, op, pre in (("A", "plain proxied GET", ""),
                        ("B", "submission (the balancer also ran the tasks finished meanwhile)", ""),
                        ("C", "task of the burst: submitted, run, recorded", ""),
                        ("C", "… drain only (last answer → all terminal)", "drain_")):
        b = med.get(f"{ph}:balancer_us_per_op") if not pre else None
        r = med.get(f"{ph}:redis_us_per_op") if not pre else None
        md.append(f"| {ph} | {op} | {fmt(b) if b else ''} | {fmt(1e6 / b) if b else ''} | "
                  f"{fmt(r) if r and ph != 'A' else ''} | {fmt(med.get(f'{ph}:{pre}core_bal_busy_pct'))} | "
                  f"{fmt(med.get(f'{ph}:{pre}core_load_busy_pct'))} |")
    md += [""]
    if os.path.exists(a.png or ""):
        md += [f"![rates and latency]({os.path.basename(a.png)})", ""]
    md += ["## All measurements", "",
           "Per phase; CPU shares are % of one CPU over the phase (from /proc/PID/stat "
           "utime+stime; softirq time of loopback TCP is not included); `other_load_pct` is the "
           "CPU taken by processes that are not part of the benchmark, as % of all CPUs.", "",
           "| phase | metric | unit | median | per round |", "|---|---|---|---:|---|"]
    for key in order:
        ph, m = key.split(":")
        per = ", ".join(fmt(data[key].get(r), units[key]) for r in rounds)
        md.append(f"| {ph} | {m} | {units[key]} | {fmt(med[key], units[key])} | {per} |")
    for key, per in ratios.items():
        ph, m = key.split(":")
        md.append(f"| {ph} | {m}_vs_plain | ratio | {fmt(rmed[key])} | "
                  + ", ".join(fmt(per.get(r)) for r in rounds) + " |")
    md += ["", "## Environment", ""]
    md += [f"- **{k}**: {v}" for k, v in meta if k != "date" and not k.startswith("p.")]
    md += ["", "## Method", ""] + [f"- {line}" for line in method(dict(meta))] + [""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    for label, ok_abs, ok_rat in verdicts:
        print(f"{label}: absolute {'PASS' if ok_abs else 'FAIL'}, ratio {'PASS' if ok_rat else 'FAIL'}",
              file=sys.stderr)


def write_png(a, data, med, rounds):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tasks.py: matplotlib missing; no plot", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    bars = [("A:plain_rps", "plain GET/s", None, None),
            ("B:submit_rps", "submissions/s", 5000, 0.4),
            ("C:completion_rps", "completions/s", 2000, 0.15)]
    plain = med.get("A:plain_rps") or 0
    for i, (key, label, abs_t, ratio_t) in enumerate(bars):
        v = med.get(key) or 0
        ax1.bar(i, v, color=["#888888", "#4c72b0", "#55a868"][i], width=0.6)
        pts = [data.get(key, {}).get(r) for r in rounds]
        ax1.plot([i] * len(pts), pts, "k.", ms=6)
        ax1.text(i - 0.28, v, f"{v:,.0f}", ha="left", va="bottom", fontsize=9)
        if abs_t:
            ax1.hlines(abs_t, i - 0.4, i + 0.4, colors="red", lw=2,
                       label="absolute target" if i == 1 else None)
            ax1.hlines(ratio_t * plain, i - 0.4, i + 0.4, colors="red", linestyles="dashed", lw=2,
                       label="ratio target × plain (median)" if i == 1 else None)
    ax1.set_xticks(range(len(bars)), [b[1] for b in bars])
    ax1.set_ylabel("per second (bars: median, dots: rounds)")
    ax1.set_title("Rates against nginx `return 200`")
    ax1.legend(loc="upper right", fontsize=8)
    for r in rounds:
        path = os.path.join(a.samples_dir, f"latency-r{r}.txt")
        if os.path.exists(path):
            with open(path) as f:
                xs = sorted(float(x) for x in f if x.strip())
            if xs:
                ys = [(k + 1) / len(xs) for k in range(len(xs))]
                ax2.step(xs, ys, where="post", label=f"round {r}")
    for key, ls in (("D:latency_p50_ms", ":"), ("D:latency_p99_ms", "--")):
        if med.get(key) is not None:
            ax2.axvline(med[key], color="gray", linestyle=ls,
                        label=f"{key.split('_')[1]} median {med[key]:.0f} ms")
    ax2.set_xlabel("submit → finish, ms (server time stamps, 1 ms resolution)")
    ax2.set_ylabel("fraction of tasks")
    ax2.set_title("Latency on an idle system (D)")
    ax2.legend(fontsize=8, loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("latency")
    s.add_argument("--base", required=True)
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--gap-ms", type=float, default=20)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--samples", required=True)
    s = sub.add_parser("burst")
    s.add_argument("--base", required=True)
    s.add_argument("--since-ms", type=int, required=True)
    s = sub.add_parser("report")
    for opt in ("--csv", "--meta", "--samples-dir", "--md", "--csv-out"):
        s.add_argument(opt, required=True)
    s.add_argument("--png")
    a = p.parse_args()
    {"latency": cmd_latency, "burst": cmd_burst, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
