#!/usr/bin/env python3
"""Helpers and results writer for jobs/bench-proxy.sh.

Sub-commands (standard library only, except the optional PNG plot):

  free-ports N          print N distinct free TCP ports on 127.0.0.1
  parse-wrk FILE        parse `wrk --latency` output; print one line:
                        "rps p50_ms p99_ms requests socket_errors non2xx"
  parse-h2load OUT LOG  parse h2load's output and its --log-file (per-request
                        lines: start µs, status, duration µs); print the same
                        line as parse-wrk, p50/p99 computed exactly from LOG
  report --csv RAW --meta META --md OUT.md [--png OUT.png]
                        aggregate the raw per-run CSV (median over rounds)
                        and write the Markdown report and the plot
  rounds CSV [CSV ...]  per round, the balancer's req/s, p99 and CPU per
                        request divided by the better of nginx and HAProxy
                        in that same round, for each run (CSV) and together
                        (a Markdown table on stdout)
  ab BASE CSV [CSV ...] for jobs/bench-ab.sh CSVs: per connection count and
                        target, the median over rounds (all CSVs pooled) of
                        target / BASE for req/s, CPU per request and p99, and
                        of target - BASE for user and system time per request

The raw CSV has one row per measured run (see RAW_FIELDS); `mode` and
`streams` are optional on input (older CSVs: mode h1, 1 stream).
"""

import argparse
import csv
import math
import os
import re
import socket
import statistics
import sys

RAW_FIELDS = [
    "mode", "round", "conns", "streams", "target", "order_pos", "attempt", "duration_s", "requests",
    "rps", "p50_ms", "p99_ms", "socket_errors", "non2xx", "cpu_ticks",
    "cpu_us_per_req", "peak_rss_kib", "other_cpu_pct", "status",
]

# Columns that older CSVs (before modes existed) lack, with their implied value.
OPTIONAL_FIELDS = {"mode": "h1", "streams": "1"}

# Preferred display order; unknown targets / modes go after these.
TARGET_ORDER = ["direct", "nginx", "haproxy", "balancer"]
MODE_ORDER = ["h1", "h2c", "cores2"]
MODE_TITLES = {
    "h1": "HTTP/1.1, proxy on 1 pinned core",
    "h2c": "h2c (HTTP/2 prior knowledge), proxy on 1 pinned core",
    "cores2": "HTTP/1.1, proxy with 2 workers on 2 shared cores",
}
OTHERS = ("nginx", "haproxy")  # "best other" = the better of these

UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def die(msg):
    print(f"results.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------
# free ports

def free_ports(n):
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # keep bound so the kernel gives distinct ports
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    print(" ".join(str(p) for p in ports))


# --------------------------------------------------------------------------
# wrk output

def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparseable latency {text!r}")
    return float(m.group(1)) * UNIT_TO_MS[m.group(2)]


def parse_wrk_text(text):
    out = {}
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T' line in wrk output")
    out["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if not m:
        raise ValueError("no 'Requests/sec:' line in wrk output")
    out["rps"] = float(m.group(1))
    dist = dict(re.findall(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([0-9.]+(?:us|ms|s|m|h))\s*$",
                           text, re.M))
    if "50" not in dist or "99" not in dist:
        raise ValueError("no latency distribution (was wrk run with --latency?)")
    out["p50_ms"] = to_ms(dist["50"])
    out["p99_ms"] = to_ms(dist["99"])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    return out


def parse_wrk(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        r = parse_wrk_text(text)
    except ValueError as e:
        die(f"{path}: {e}")
    print(f"{r['rps']:.2f} {r['p50_ms']:.4f} {r['p99_ms']:.4f} "
          f"{r['requests']} {r['socket_errors']} {r['non2xx']}")


# --------------------------------------------------------------------------
# h2load output

def parse_h2load_text(text):
    out = {}
    m = re.search(r"^finished in [0-9.]+\w*, ([0-9.]+) req/s", text, re.M)
    if not m:
        raise ValueError("no 'finished in T, N req/s' line in h2load output")
    out["rps"] = float(m.group(1))
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", text, re.M)
    if not m:
        raise ValueError("no 'requests: ... succeeded, ... failed, ... errored' line in h2load output")
    total, started, done, succeeded, failed, errored = (int(x) for x in m.groups())
    out.update(total=total, started=started, done=done, succeeded=succeeded,
               failed=failed, errored=errored)
    return out


def nearest_rank(sorted_vals, pct):
    """Exact percentile, nearest-rank definition: the smallest value with at
    least pct% of the samples at or below it."""
    k = max(1, math.ceil(pct / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def read_h2load_log(path):
    """Durations (µs) of the requests that got a response (status != -1)."""
    durs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            try:
                status, dur = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            if status > 0:
                durs.append(dur)
    return durs


def parse_h2load(out_path, log_path):
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        r = parse_h2load_text(text)
    except ValueError as e:
        die(f"{out_path}: {e}")
    try:
        durs = read_h2load_log(log_path)
    except OSError as e:
        die(f"{log_path}: {e}")
    if not durs:
        die(f"{log_path}: no completed request in the h2load log")
    durs.sort()
    p50 = nearest_rank(durs, 50) / 1000.0
    p99 = nearest_rank(durs, 99) / 1000.0
    # failed = every stream without a 2xx/3xx status, errored = the streams
    # that got no response at all (reset, connection closed, timeout).
    non2xx = max(0, r["failed"] - r["errored"])
    print(f"{r['rps']:.2f} {p50:.4f} {p99:.4f} {r['done']} {r['errored']} {non2xx}")


# --------------------------------------------------------------------------
# report

def read_meta(path):
    meta = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "=" not in line:
                continue
            k, v = line.split("=", 1)
            meta.append((k, v))
    return meta


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def keep_last_attempts(rows):
    """A disturbed run may have been repeated; only the last attempt counts."""
    last = {}
    for r in rows:
        key = (r["mode"], r["round"], r["conns"], r["target"])
        if key not in last or int(r["attempt"] or 1) >= int(last[key]["attempt"] or 1):
            last[key] = r
    return list(last.values())


def aggregate(rows):
    """Median over rounds per (mode, target, conns). Returns dict keyed by that."""
    rows = keep_last_attempts(rows)
    # VmHWM is a lifetime peak: one value per (mode, target), the max over its runs.
    peak = {}
    for r in rows:
        v = fnum(r["peak_rss_kib"])
        if v is not None:
            k = (r["mode"], r["target"])
            peak[k] = max(peak.get(k, 0.0), v)
    groups = {}
    for r in rows:
        groups.setdefault((r["mode"], r["target"], int(r["conns"])), []).append(r)
    agg = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]

        def med(field, ok=ok):
            vals = [fnum(r[field]) for r in ok]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        other = [fnum(r["other_cpu_pct"]) for r in ok]
        other = [v for v in other if v is not None]
        errors = sum(int(r["socket_errors"] or 0) + int(r["non2xx"] or 0) for r in ok)
        streams = sorted({int(r["streams"] or 1) for r in rs})
        agg[key] = {
            "runs": len(rs),
            "ok_runs": len(ok),
            "statuses": sorted({r["status"] for r in rs if r["status"] != "ok"}),
            "streams": streams[-1] if streams else 1,
            "rps": med("rps"),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "cpu_us_per_req": med("cpu_us_per_req"),
            "peak_rss_mib": (peak[key[:2]] / 1024.0) if key[:2] in peak else None,
            "other_max": max(other) if other else None,
            "errors": errors,
            "requests": sum(int(r["requests"] or 0) for r in ok),
            "rps_all": [fnum(r["rps"]) for r in sorted(ok, key=lambda r: int(r["round"]))],
        }
    return agg


def round_ratios(rows, mode, c):
    """Per round: {field: balancer / best other in that round} for RATIO_FIELDS, by the
    same definition as the run's medians (`balancer_ratios` on that round's rows alone).

    The rounds of one run interleave the targets, so within a round they shared the
    machine's state: these ratios show how steady the comparison is, which the medians
    over rounds hide."""
    by_round = {}
    for r in keep_last_attempts(rows):
        if r["mode"] == mode and int(r["conns"]) == c and r["status"] == "ok":
            by_round.setdefault(int(r["round"]), {})[(mode, r["target"], c)] = {
                field: fnum(r[field]) for field, *_ in RATIO_FIELDS}
    return [(rnd, {field: ratio
                   for (field, *_), (_, ratio, *_) in zip(RATIO_FIELDS,
                                                          balancer_ratios(got, mode, c))
                   if ratio is not None})
            for rnd, got in sorted(by_round.items()) if (mode, "balancer", c) in got]


def per_field(per):
    """The per-round ratios of `round_ratios` as one list per RATIO_FIELDS entry."""
    return [[r[field] for _, r in per if field in r] for field, *_ in RATIO_FIELDS]


def spread(vals):
    """'a, b, c (median m)' of ratios, or 'n/a'."""
    if not vals:
        return "n/a"
    listed = ", ".join(f"{v:.2f}x" for v in vals)
    return f"{listed} (median {statistics.median(vals):.2f}x)" if len(vals) > 1 else listed


def round_line(rows, mode, c, streams):
    per = round_ratios(rows, mode, c)
    if not per:
        return None
    parts = [f"{label} {spread(vals)}"
             for (_, label, *_), vals in zip(RATIO_FIELDS, per_field(per))]
    return f"c={conns_label(c, streams)}, per round: " + "; ".join(parts)


def ordered(names, order):
    known = [t for t in order if t in names]
    return known + sorted(n for n in names if n not in order)


def targets_sorted(names):
    return ordered(names, TARGET_ORDER)


def modes_sorted(names):
    return ordered(names, MODE_ORDER)


def fmt(v, spec, none="n/a"):
    return none if v is None else format(v, spec)


def conns_label(c, streams):
    return f"{c}x{streams}" if streams and streams > 1 else f"{c}"


def best_other(agg, mode, c, field, higher_better):
    """(value, target) of the better of nginx and HAProxy for field, or None."""
    cands = []
    for t in OTHERS:
        a = agg.get((mode, t, c))
        if a and a[field] is not None:
            cands.append((a[field], t))
    if not cands:
        return None
    return max(cands) if higher_better else min(cands)


RATIO_FIELDS = (
    # field, label, higher is better, value format, unit
    ("rps", "req/s", True, ",.0f", "req/s"),
    ("p99_ms", "p99", False, ".3f", "ms"),
    ("cpu_us_per_req", "CPU µs/request", False, ".2f", "µs/req"),
)


def balancer_ratios(agg, mode, c):
    """[(label, ratio or None, best target, best value, fmt, unit, higher_better)]."""
    bal = agg.get((mode, "balancer", c))
    out = []
    for field, label, hib, spec, unit in RATIO_FIELDS:
        best = best_other(agg, mode, c, field, hib)
        mine = bal[field] if bal else None
        if best is None or mine is None or not best[0]:
            out.append((label, None, best[1] if best else None, best[0] if best else None,
                        spec, unit, hib))
        else:
            out.append((label, mine / best[0], best[1], best[0], spec, unit, hib))
    return out


def ratio_line(agg, mode, c):
    parts = []
    for label, ratio, bt, bv, spec, unit, hib in balancer_ratios(agg, mode, c):
        if ratio is None:
            parts.append(f"n/a {label}")
        else:
            parts.append(f"**{ratio:.2f}x {label}** (best other: {bt} {format(bv, spec)} {unit})")
    return "balancer / best other: " + ", ".join(parts)


def write_table(lines, agg, mode, targets, conns):
    lines.append("| target | conns | req/s | p50 ms | p99 ms | peak RSS MiB | CPU µs/req "
                 "| errors | req/s vs nginx | p99 vs nginx | other load % | runs ok |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        base = agg.get((mode, "nginx", c))
        for t in targets:
            a = agg.get((mode, t, c))
            if a is None:
                continue
            if base and base["rps"] and a["rps"] is not None:
                r_rps = f"{a['rps'] / base['rps']:.2f}x"
            else:
                r_rps = "n/a"
            if base and base["p99_ms"] and a["p99_ms"] is not None:
                r_p99 = f"{a['p99_ms'] / base['p99_ms']:.2f}x"
            else:
                r_p99 = "n/a"
            is_direct = t == "direct"
            runs = f"{a['ok_runs']}/{a['runs']}"
            if a["statuses"]:
                runs += " (" + ",".join(a["statuses"]) + ")"
            lines.append(
                f"| {t} | {conns_label(c, a['streams'])} | {fmt(a['rps'], ',.0f')} "
                f"| {fmt(a['p50_ms'], '.3f')} "
                f"| {fmt(a['p99_ms'], '.3f')} "
                f"| {'-' if is_direct else fmt(a['peak_rss_mib'], '.1f')} "
                f"| {'-' if is_direct else fmt(a['cpu_us_per_req'], '.2f')} "
                f"| {a['errors']} | {r_rps} | {r_p99} | {fmt(a['other_max'], '.0f')} | {runs} |")


def write_md(agg, rows, meta, md_path, png_name):
    modes = modes_sorted({m for m, _, _ in agg})
    metad = dict(meta)
    lines = []
    lines.append("# RustyBalancer proxy benchmark")
    lines.append("")
    lines.append(f"Generated by `jobs/bench-proxy.sh` on {metad.get('date', '?')}.")
    lines.append("")
    lines.append("Median over rounds; errors = socket errors + non-2xx/3xx responses summed "
                 "over all rounds; peak RSS = the proxy's lifetime VmHWM after all its runs "
                 "in that mode (same for every conns row); ratios are against nginx "
                 "at the same connection count (req/s: higher is better, p99: lower is better). "
                 "RSS and CPU are not applicable to `direct` (no proxy). "
                 "\"other load\" = worst CPU share (of all CPUs) taken by processes that are not "
                 "part of the benchmark during a kept run; above ~10% treat the row as noisy. "
                 "\"balancer / best other\" divides the balancer's figure by the better of nginx "
                 "and HAProxy for that metric (highest req/s, lowest p99, lowest CPU): above "
                 "1.00x is better for req/s, below 1.00x is better for p99 and CPU.")
    lines.append("")
    if any(("balancer" in {t for m2, t, _ in agg if m2 == m}) for m in modes):
        lines.append("## Summary: balancer / best of nginx and HAProxy")
        lines.append("")
        for m in modes:
            conns = sorted({c for m2, t, c in agg if m2 == m and t == "balancer"})
            for c in conns:
                a = agg[(m, "balancer", c)]
                lines.append(f"- **{m}** c={conns_label(c, a['streams'])}: {ratio_line(agg, m, c)}")
        lines.append("")
    for m in modes:
        targets = targets_sorted({t for m2, t, _ in agg if m2 == m})
        conns = sorted({c for m2, _, c in agg if m2 == m})
        lines.append(f"## Mode `{m}`: {MODE_TITLES.get(m, m)}")
        lines.append("")
        desc = metad.get(f"{m} description")
        if desc:
            lines.append(desc + ".")
            lines.append("")
        lc = metad.get(f"{m} load command")
        if lc:
            lines.append(f"Load: `{lc}`. Pinning: {metad.get(f'{m} pinning', '?')}.")
            lines.append("")
        write_table(lines, agg, m, targets, conns)
        lines.append("")
        if "balancer" in targets:
            for c in conns:
                if (m, "balancer", c) not in agg:
                    continue
                a = agg[(m, "balancer", c)]
                lines.append(f"- c={conns_label(c, a['streams'])}: {ratio_line(agg, m, c)}")
            lines.append("")
            lines.append("Balancer / best other within each round (the targets of a round "
                         "ran back to back):")
            lines.append("")
            for c in conns:
                a = agg.get((m, "balancer", c))
                line = round_line(rows, m, c, a["streams"]) if a else None
                if line:
                    lines.append(f"- {line}")
            lines.append("")
        lines.append("Per-round req/s (to judge noise):")
        lines.append("")
        for c in conns:
            for t in targets:
                a = agg.get((m, t, c))
                if a is None:
                    continue
                vals = ", ".join(f"{v:,.0f}" for v in a["rps_all"] if v is not None)
                lines.append(f"- {t} c={conns_label(c, a['streams'])}: {vals or 'none'}")
        lines.append("")
    if png_name:
        lines.append(f"![req/s and p99 per target and mode]({png_name})")
        lines.append("")
    lines.append("## Environment and parameters")
    lines.append("")
    for k, v in meta:
        if k == "date":
            continue
        lines.append(f"- **{k}**: `{v}`" if v else f"- **{k}**: (none)")
    lines.append("")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_png(agg, png_path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("results.py: warning: matplotlib not importable, skipping plot", file=sys.stderr)
        return False
    modes = modes_sorted({m for m, _, _ in agg})
    # One colour per target across all panels (h2c has no `direct`).
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", [None])
    all_targets = targets_sorted({t for _, t, _ in agg})
    color = {t: palette[i % len(palette)] for i, t in enumerate(all_targets)}
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.3 * len(modes)), squeeze=False)
    for row, m in enumerate(modes):
        targets = targets_sorted({t for m2, t, _ in agg if m2 == m})
        conns = sorted({c for m2, _, c in agg if m2 == m})
        width = 0.8 / max(1, len(targets))
        for ax, field, title, scale in (
            (axes[row][0], "rps", "throughput (k req/s, higher is better)", 1000.0),
            (axes[row][1], "p99_ms", "p99 latency (ms, lower is better)", 1.0),
        ):
            for i, t in enumerate(targets):
                xs, ys = [], []
                for j, c in enumerate(conns):
                    a = agg.get((m, t, c))
                    v = a[field] if a else None
                    xs.append(j + (i - (len(targets) - 1) / 2) * width)
                    ys.append((v / scale) if v is not None else 0.0)
                bars = ax.bar(xs, ys, width, label=t, color=color[t])
                for b, y in zip(bars, ys):
                    if y:
                        ax.annotate(f"{y:.1f}" if y < 100 else f"{y:.0f}",
                                    (b.get_x() + b.get_width() / 2, y),
                                    ha="center", va="bottom", fontsize=7)
            labels = []
            for c in conns:
                streams = max((agg[k]["streams"] for k in agg if k[0] == m and k[2] == c),
                              default=1)
                labels.append(f"{c} conns x {streams} streams" if streams > 1 else f"{c} conns")
            ax.set_xticks(range(len(conns)))
            ax.set_xticklabels(labels)
            ax.set_title(f"[{m}] {title}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].legend(fontsize=8)
        axes[row][0].set_ylabel(MODE_TITLES.get(m, m), fontsize=8)
    fig.suptitle("RustyBalancer vs nginx vs HAProxy (3 origins on loopback), one row per mode")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


def read_rows(path):
    """The raw rows of one run's CSV, with the optional columns filled in."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        die(f"{path}: {e.strerror}")
    if not rows:
        die(f"{path}: no rows")
    for r in rows:
        for k, v in OPTIONAL_FIELDS.items():
            if not r.get(k):
                r[k] = v
    missing = [k for k in RAW_FIELDS if k not in rows[0]]
    if missing:
        die(f"{path}: missing columns {missing}")
    return rows


def rounds(args):
    """A Markdown table: per run and (mode, conns), the per-round ratios of the balancer
    to the better of nginx and HAProxy; then all runs' rounds together."""
    runs = [(path, read_rows(path)) for path in args.csv]
    print("| run | mode | conns | " + " | ".join(f"{label} per round" for _, label, *_ in RATIO_FIELDS)
          + " |")
    print("|---|---|---:|" + "---|" * len(RATIO_FIELDS))
    pooled = {}
    for path, rows in runs:
        keys = {(r["mode"], int(r["conns"]), int(r["streams"] or 1)) for r in rows
                if r["target"] == "balancer"}
        order = modes_sorted({m for m, _, _ in keys})
        for mode, c, streams in sorted(keys, key=lambda k: (order.index(k[0]), k[1])):
            cells = []
            for (field, *_), vals in zip(RATIO_FIELDS, per_field(round_ratios(rows, mode, c))):
                pooled.setdefault((mode, c, streams), {}).setdefault(field, []).extend(vals)
                cells.append(spread(vals))
            print(f"| {path} | {mode} | {conns_label(c, streams)} | " + " | ".join(cells) + " |")
    for (mode, c, streams), fields in pooled.items():
        cells = []
        for field, *_ in RATIO_FIELDS:
            vals = sorted(fields.get(field, []))
            if vals:
                cells.append(f"{vals[0]:.2f}–{vals[-1]:.2f}x, median "
                             f"{statistics.median(vals):.2f}x over {len(vals)}")
            else:
                cells.append("n/a")
        print(f"| all | {mode} | {conns_label(c, streams)} | " + " | ".join(cells) + " |")


def report(args):
    rows = read_rows(args.csv)
    agg = aggregate(rows)
    meta = read_meta(args.meta)
    png_ok = False
    if args.png:
        png_ok = write_png(agg, args.png)
    write_md(agg, rows, meta, args.md, os.path.basename(args.png) if png_ok else None)
    # Short summary to stderr for the console.
    modes = modes_sorted({m for m, _, _ in agg})
    tnames = targets_sorted({t for _, t, _ in agg})
    for (m, t, c) in sorted(agg, key=lambda k: (modes.index(k[0]), k[2], tnames.index(k[1]))):
        a = agg[(m, t, c)]
        print(f"  {m:>6} {t:>9} c={conns_label(c, a['streams']):<5} "
              f"req/s={fmt(a['rps'], ',.0f'):>9} "
              f"p50={fmt(a['p50_ms'], '.3f')}ms p99={fmt(a['p99_ms'], '.3f')}ms "
              f"rss={fmt(a['peak_rss_mib'], '.1f')}MiB cpu={fmt(a['cpu_us_per_req'], '.2f')}us/req "
              f"errors={a['errors']} other<={fmt(a['other_max'], '.0f')}%", file=sys.stderr)
    for m in modes:
        for c in sorted({c for m2, t, c in agg if m2 == m and t == "balancer"}):
            line = ratio_line(agg, m, c).replace("**", "")
            print(f"  {m} c={conns_label(c, agg[(m, 'balancer', c)]['streams'])}: {line}",
                  file=sys.stderr)


def ab(args):
    """Pooled per-round comparison of jobs/bench-ab.sh rows against one target."""
    rows = []
    for i, path in enumerate(args.csv):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                r["key"] = (i, r["round"])
                rows.append(r)
    by = {(r["key"], r["conns"], r["target"]): r for r in rows}
    targets = sorted({r["target"] for r in rows} - {args.base})
    if not any(r["target"] == args.base for r in rows):
        sys.exit(f"results.py ab: no rows for target {args.base!r}")

    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-1]) * 1000 if v.endswith("s") else float(v)

    print(f"| conns | target ÷ {args.base} | rounds | req/s (ahead in) | CPU/req | user µs | system µs | p99 |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for conns in sorted({r["conns"] for r in rows}, key=int):
        for t in targets:
            pairs = [(by[(k, conns, args.base)], by[(k, conns, t)])
                     for k in sorted({r["key"] for r in rows})
                     if (k, conns, args.base) in by and (k, conns, t) in by]
            if not pairs:
                continue
            rps = [float(n["req_per_s"]) / float(b["req_per_s"]) for b, n in pairs]
            cpu = [float(n["cpu_us_per_req"]) / float(b["cpu_us_per_req"]) for b, n in pairs]
            usr = [float(n["usr_us_per_req"]) - float(b["usr_us_per_req"]) for b, n in pairs]
            sys_ = [float(n["sys_us_per_req"]) - float(b["sys_us_per_req"]) for b, n in pairs]
            p99 = [ms(n["p99"]) / ms(b["p99"]) for b, n in pairs]
            ahead = sum(1 for x in rps if x > 1)
            med = statistics.median
            print(f"| {conns} | {t} | {len(pairs)} | {med(rps):.3f}x ({ahead}) | {med(cpu):.3f}x "
                  f"| {med(usr):+.2f} | {med(sys_):+.2f} | {med(p99):.3f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("free-ports")
    sp.add_argument("n", type=int)
    sp = sub.add_parser("parse-wrk")
    sp.add_argument("file")
    sp = sub.add_parser("parse-h2load")
    sp.add_argument("out")
    sp.add_argument("log")
    sp = sub.add_parser("report")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--meta", required=True)
    sp.add_argument("--md", required=True)
    sp.add_argument("--png")
    sp = sub.add_parser("rounds")
    sp.add_argument("csv", nargs="+")
    sp = sub.add_parser("ab")
    sp.add_argument("base")
    sp.add_argument("csv", nargs="+")
    args = p.parse_args()
    if args.cmd == "free-ports":
        free_ports(args.n)
    elif args.cmd == "parse-wrk":
        parse_wrk(args.file)
    elif args.cmd == "parse-h2load":
        parse_h2load(args.out, args.log)
    elif args.cmd == "rounds":
        rounds(args)
    elif args.cmd == "ab":
        ab(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
