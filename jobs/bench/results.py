#!/usr/bin/env python3
"""Helpers and results writer for jobs/bench-proxy.sh.

Sub-commands (standard library only, except the optional PNG plot):

  free-ports N          print N distinct free TCP ports on 127.0.0.1
  parse-wrk FILE        parse `wrk --latency` output; print one line:
                        "rps p50_ms p99_ms requests socket_errors non2xx"
  report --csv RAW --meta META --md OUT.md [--png OUT.png]
                        aggregate the raw per-run CSV (median over rounds)
                        and write the Markdown report and the plot

The raw CSV has one row per measured wrk run (see RAW_FIELDS).
"""

import argparse
import csv
import os
import re
import socket
import statistics
import sys

RAW_FIELDS = [
    "round", "conns", "target", "order_pos", "attempt", "duration_s", "requests",
    "rps", "p50_ms", "p99_ms", "socket_errors", "non2xx", "cpu_ticks",
    "cpu_us_per_req", "peak_rss_kib", "other_cpu_pct", "status",
]

# Preferred display order; unknown targets go after these.
TARGET_ORDER = ["direct", "nginx", "haproxy", "balancer"]

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
        key = (r["round"], r["conns"], r["target"])
        if key not in last or int(r["attempt"] or 1) >= int(last[key]["attempt"] or 1):
            last[key] = r
    return list(last.values())


def aggregate(rows):
    """Median over rounds per (target, conns). Returns dict keyed by that."""
    rows = keep_last_attempts(rows)
    # VmHWM is a lifetime peak: one value per target, the max over its runs.
    peak = {}
    for r in rows:
        v = fnum(r["peak_rss_kib"])
        if v is not None:
            peak[r["target"]] = max(peak.get(r["target"], 0.0), v)
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], int(r["conns"])), []).append(r)
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
        agg[key] = {
            "runs": len(rs),
            "ok_runs": len(ok),
            "statuses": sorted({r["status"] for r in rs if r["status"] != "ok"}),
            "rps": med("rps"),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "cpu_us_per_req": med("cpu_us_per_req"),
            "peak_rss_mib": (peak[key[0]] / 1024.0) if key[0] in peak else None,
            "other_max": max(other) if other else None,
            "errors": errors,
            "requests": sum(int(r["requests"] or 0) for r in ok),
            "rps_all": [fnum(r["rps"]) for r in sorted(ok, key=lambda r: int(r["round"]))],
        }
    return agg


def targets_sorted(names):
    known = [t for t in TARGET_ORDER if t in names]
    return known + sorted(n for n in names if n not in TARGET_ORDER)


def fmt(v, spec, none="n/a"):
    return none if v is None else format(v, spec)


def write_md(agg, meta, md_path, png_name):
    targets = targets_sorted({t for t, _ in agg})
    conns = sorted({c for _, c in agg})
    metad = dict(meta)
    lines = []
    lines.append("# RustyBalancer proxy benchmark")
    lines.append("")
    lines.append(f"Generated by `jobs/bench-proxy.sh` on {metad.get('date', '?')}.")
    lines.append("")
    lines.append("Median over rounds; errors = socket errors + non-2xx/3xx responses summed "
                 "over all rounds; peak RSS = the proxy's lifetime VmHWM after all its runs "
                 "(same for every conns row); ratios are against nginx "
                 "at the same connection count (req/s: higher is better, p99: lower is better). "
                 "RSS and CPU are not applicable to `direct` (no proxy). "
                 "\"other load\" = worst CPU share (of all CPUs) taken by processes that are not "
                 "part of the benchmark during a kept run; above ~10% treat the row as noisy.")
    lines.append("")
    lines.append("| target | conns | req/s | p50 ms | p99 ms | peak RSS MiB | CPU µs/req "
                 "| errors | req/s vs nginx | p99 vs nginx | other load % | runs ok |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        base = agg.get(("nginx", c))
        for t in targets:
            a = agg.get((t, c))
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
                f"| {t} | {c} | {fmt(a['rps'], ',.0f')} | {fmt(a['p50_ms'], '.3f')} "
                f"| {fmt(a['p99_ms'], '.3f')} "
                f"| {'-' if is_direct else fmt(a['peak_rss_mib'], '.1f')} "
                f"| {'-' if is_direct else fmt(a['cpu_us_per_req'], '.2f')} "
                f"| {a['errors']} | {r_rps} | {r_p99} | {fmt(a['other_max'], '.0f')} | {runs} |")
    lines.append("")
    lines.append("Per-round req/s (to judge noise):")
    lines.append("")
    for c in conns:
        for t in targets:
            a = agg.get((t, c))
            if a is None:
                continue
            vals = ", ".join(f"{v:,.0f}" for v in a["rps_all"] if v is not None)
            lines.append(f"- {t} c={c}: {vals or 'none'}")
    lines.append("")
    if png_name:
        lines.append(f"![req/s and p99 per target]({png_name})")
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
    targets = targets_sorted({t for t, _ in agg})
    conns = sorted({c for _, c in agg})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(1, len(targets))
    for ax, field, title, scale in (
        (axes[0], "rps", "throughput (k req/s, higher is better)", 1000.0),
        (axes[1], "p99_ms", "p99 latency (ms, lower is better)", 1.0),
    ):
        for i, t in enumerate(targets):
            xs, ys = [], []
            for j, c in enumerate(conns):
                a = agg.get((t, c))
                v = a[field] if a else None
                xs.append(j + (i - (len(targets) - 1) / 2) * width)
                ys.append((v / scale) if v is not None else 0.0)
            bars = ax.bar(xs, ys, width, label=t)
            for b, y in zip(bars, ys):
                if y:
                    ax.annotate(f"{y:.1f}" if y < 100 else f"{y:.0f}",
                                (b.get_x() + b.get_width() / 2, y),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(conns)))
        ax.set_xticklabels([f"{c} conns" for c in conns])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle("RustyBalancer vs nginx vs HAProxy (proxy on 1 pinned core, 3 origins)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


def report(args):
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        die(f"{args.csv}: no rows")
    missing = [k for k in RAW_FIELDS if k not in rows[0]]
    if missing:
        die(f"{args.csv}: missing columns {missing}")
    agg = aggregate(rows)
    meta = read_meta(args.meta)
    png_ok = False
    if args.png:
        png_ok = write_png(agg, args.png)
    write_md(agg, meta, args.md, os.path.basename(args.png) if png_ok else None)
    # Short summary to stderr for the console.
    for (t, c) in sorted(agg, key=lambda k: (k[1], targets_sorted({x for x, _ in agg}).index(k[0]))):
        a = agg[(t, c)]
        print(f"  {t:>9} c={c:<4} req/s={fmt(a['rps'], ',.0f'):>9} "
              f"p50={fmt(a['p50_ms'], '.3f')}ms p99={fmt(a['p99_ms'], '.3f')}ms "
              f"rss={fmt(a['peak_rss_mib'], '.1f')}MiB cpu={fmt(a['cpu_us_per_req'], '.2f')}us/req "
              f"errors={a['errors']} other<={fmt(a['other_max'], '.0f')}%", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("free-ports")
    sp.add_argument("n", type=int)
    sp = sub.add_parser("parse-wrk")
    sp.add_argument("file")
    sp = sub.add_parser("report")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--meta", required=True)
    sp.add_argument("--md", required=True)
    sp.add_argument("--png")
    args = p.parse_args()
    if args.cmd == "free-ports":
        free_ports(args.n)
    elif args.cmd == "parse-wrk":
        parse_wrk(args.file)
    else:
        report(args)


if __name__ == "__main__":
    main()
