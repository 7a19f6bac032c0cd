#!/usr/bin/env python3
"""Measurement helpers and results writer for jobs/bench-agent.sh.

Standard library only. Every sub-command talks to one running deployment-agent through its
HTTP API (--url http://127.0.0.1:PORT) and prints one JSON object on stdout (logs go to
stderr).

  free-ports N        print N distinct free TCP ports on 127.0.0.1
  wait-pool           poll /stats every 250 ms until N containers are ready and scored
                      (cold start of the pool); --t0-ms is when the agent was launched
  idle                sample an idle agent for --window seconds: CPU (utime+stime from
                      /proc/PID/stat), VmRSS/VmHWM, agent_scoring_round_seconds and
                      agent_queue_version from /metrics (every second), Docker connections
  scaleup             wait for the pool to be scored, start CPU load on the queue's
                      addresses, poll /stats and /queue every 250 ms and time threshold
                      crossing, the scale_up event and the new queue item
  report              write the Markdown report and the CSV from the JSON results
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

SCORED = ("LU", "MU", "HU")


def log(msg):
    print(f"[bench-agent.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(2)


def now_ms():
    return time.time() * 1000.0


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def get_json(url, timeout=2.0):
    return json.loads(get(url, timeout))


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------- /proc
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # fields 14 utime, 15 stime


def sched_ns(pid):
    """On-CPU nanoseconds summed over the live threads of PID (/proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def socket_inodes(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m:
            out.add(m.group(1))
    return out


def docker_connections(pid):
    """Unix stream connections from PID to the Docker socket (via `ss -xn`): the server-side
    rows bound to *docker.sock whose peer inode is one of PID's sockets."""
    mine = socket_inodes(pid)
    try:
        text = subprocess.run(["ss", "-xn"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    n = 0
    for line in text.splitlines():
        f = line.split()
        # Netid State Recv-Q Send-Q Local Port Peer Port
        if len(f) < 8 or f[0] != "u_str":
            continue
        local, peer_inode = f[4], f[7]
        if local.endswith("docker.sock") and peer_inode in mine:
            n += 1
    tcp = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                for line in fh.readlines()[1:]:
                    p = line.split()
                    if p[9] in mine and p[3] == "01":  # ESTABLISHED
                        tcp += 1
        except OSError:
            pass
    return {"docker_unix_conns": n, "sockets": len(mine), "tcp_established": tcp}


# ------------------------------------------------------------------ pool
def pool_state(url):
    rows = get_json(url + "/stats")
    ready = [r for r in rows if r.get("ready_ms") is not None]
    scored = [r for r in rows
              if r.get("overall_score") is not None and r.get("utilization_category") in SCORED]
    return rows, ready, scored


def cmd_wait_pool(a):
    deadline = time.monotonic() + a.timeout
    t_ready = t_scored = None
    last_log = 0.0
    rows = []
    while time.monotonic() < deadline:
        if a.pid and not alive(a.pid):
            die(f"agent (pid {a.pid}) exited while waiting for the pool")
        try:
            rows, ready, scored = pool_state(a.url)
        except (OSError, ValueError, urllib.error.URLError):
            time.sleep(0.25)
            continue
        t = now_ms()
        if t_ready is None and len(ready) >= a.n:
            t_ready = t
        if len(scored) >= a.n:
            t_scored = t
            break
        if time.monotonic() - last_log > 5:
            log(f"pool: {len(rows)} container(s), {len(ready)} ready, {len(scored)} scored (want {a.n})")
            last_log = time.monotonic()
        time.sleep(0.25)
    if t_scored is None:
        die(f"pool did not reach {a.n} scored containers within {a.timeout}s "
            f"({len(rows)} containers seen)")
    created = sorted(r["created_ms"] for r in rows if r.get("created_ms"))
    readies = sorted(r["ready_ms"] for r in rows if r.get("ready_ms"))
    t0 = a.t0_ms
    res = {
        "n": a.n,
        "first_created_s": (created[0] - t0) / 1000 if created else None,
        "last_created_s": (created[-1] - t0) / 1000 if created else None,
        "last_ready_s": (readies[-1] - t0) / 1000 if readies else None,
        "ready_poll_s": (t_ready - t0) / 1000 if t_ready else None,
        "scored_poll_s": (t_scored - t0) / 1000,
    }
    try:
        ev = get_json(a.url + "/events?limit=1000")
        waits = [e["details"].get("ms_since_created") for e in ev if e.get("kind") == "container_ready"]
        waits = [w for w in waits if isinstance(w, (int, float))]
        if waits:
            res["created_to_ready_ms_median"] = statistics.median(waits)
            res["created_to_ready_ms_max"] = max(waits)
        starts = sorted(e["at_ms"] for e in ev if e.get("kind") == "container_started")
        gaps = [y - x for x, y in zip(starts, starts[1:])]
        if gaps:
            # containers are created one after the other within one tick
            res["create_start_gap_ms_median"] = statistics.median(gaps)
    except (OSError, ValueError, urllib.error.URLError):
        pass
    print(json.dumps(res))


# ------------------------------------------------------------------ idle
METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(url):
    out = {}
    for line in get(url + "/metrics").splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_RE.match(line.strip())
        if m and not m.group(2):
            try:
                out[m.group(1)] = float(m.group(3))
            except ValueError:
                pass
    return out


def cmd_idle(a):
    pid = a.pid
    rows, _, scored = pool_state(a.url)
    conns_start = docker_connections(pid)
    ticks0, ns0, t0 = cpu_ticks(pid), sched_ns(pid), time.monotonic()
    rss, round_us, versions, per_sec = [], [], [], []
    prev_q, diffs = None, []
    next_t = t0
    last_ns, last_t = ns0, t0
    end = t0 + a.window
    n = 0
    while True:
        next_t += 1.0
        if next_t > end + 1e-6:
            break
        time.sleep(max(0.0, next_t - time.monotonic()))
        if not alive(pid):
            die(f"agent (pid {pid}) exited during the idle window")
        try:
            m = metrics(a.url)
        except (OSError, urllib.error.URLError) as e:
            log(f"GET /metrics failed: {e}")
            continue
        ticks, ns, t = cpu_ticks(pid), sched_ns(pid), time.monotonic()
        # per-second figures from schedstat: utime+stime counts whole 10-ms ticks
        per_sec.append((ns - last_ns) / 1e9 / (t - last_t) * 100)
        last_ns, last_t = ns, t
        rss.append(status_kib(pid, "VmRSS"))
        if "agent_scoring_round_seconds" in m:
            round_us.append(m["agent_scoring_round_seconds"] * 1e6)
        if "agent_queue_version" in m:
            versions.append(m["agent_queue_version"])
        try:
            q = get_json(a.url + "/queue")
        except (OSError, ValueError, urllib.error.URLError):
            q = None
        if q and prev_q and q.get("version") != prev_q.get("version"):
            old = {i["id"]: i for i in prev_q.get("items", [])}
            new = {i["id"]: i for i in q.get("items", [])}
            structural = old.keys() != new.keys() or any(
                old[k].get("category") != new[k].get("category") or
                old[k].get("address") != new[k].get("address") for k in new if k in old)
            deltas = [abs(new[k]["score"] - old[k]["score"]) for k in new if k in old]
            changed = sum(1 for x in deltas if x > 1e-9)
            diffs.append({"structural": structural, "max_delta": max(deltas) if deltas else None,
                          "items_changed": changed})
        if q:
            prev_q = q
        n += 1
        if n % 15 == 0:
            log(f"idle window: {n}/{a.window} s, agent CPU so far "
                f"{(ticks - ticks0) / CLK_TCK / (t - t0) * 100:.2f} % of a core")
    ticks1, ns1, t1 = cpu_ticks(pid), sched_ns(pid), time.monotonic()
    conns_end = docker_connections(pid)
    _, _, scored_end = pool_state(a.url)
    secs = t1 - t0
    cpu_s = (ticks1 - ticks0) / CLK_TCK
    changes = sum(1 for x, y in zip(versions, versions[1:]) if y != x)
    res = {
        "window_s": round(secs, 2),
        "containers_scored_start": len(scored),
        "containers_scored_end": len(scored_end),
        "cpu_s": cpu_s,
        "cpu_pct_core": cpu_s / secs * 100,
        "cpu_pct_core_p90_1s": (statistics.quantiles(per_sec, n=10)[-1]
                                if len(per_sec) >= 10 else None),
        "cpu_pct_core_max_1s": max(per_sec) if per_sec else None,
        "cpu_ms_per_round": cpu_s / secs * a.sample_period * 1000,
        "cpu_pct_core_schedstat": (ns1 - ns0) / 1e9 / secs * 100,
        "queue_changes_seen": len(diffs),
        "queue_changes_score_only": sum(1 for x in diffs if not x["structural"]),
        "queue_change_max_delta_median": (statistics.median(x["max_delta"] for x in diffs
                                          if x["max_delta"] is not None) if diffs else None),
        "queue_change_items_changed_median": (statistics.median(x["items_changed"] for x in diffs)
                                              if diffs else None),
        "clk_tck": CLK_TCK,
        "rss_kib_median": statistics.median(rss) if rss else None,
        "rss_kib_max": max(rss) if rss else None,
        "hwm_kib": status_kib(pid, "VmHWM"),
        "threads": status_kib(pid, "Threads"),
        "scoring_us_median": statistics.median(round_us) if round_us else None,
        "scoring_us_max": max(round_us) if round_us else None,
        "scoring_samples": len(round_us),
        "queue_versions": changes,
        "queue_versions_per_min": changes / ((len(versions) - 1) or 1) * 60 if versions else None,
        "docker_conns_start": conns_start,
        "docker_conns_end": conns_end,
    }
    print(json.dumps(res))


# --------------------------------------------------------------- scale-up
class Load:
    """`conc` client loops, each: pick the next queue address, one GET /cpu?ms=N on a fresh
    connection (as a curl loop does), repeat."""

    def __init__(self, conc, cpu_ms):
        self.conc, self.path = conc, f"/cpu?ms={cpu_ms}"
        self.addrs, self.lock = [], threading.Lock()
        self.stop, self.threads = threading.Event(), []
        self.ok = self.err = 0
        self.rr = 0

    def set_addrs(self, addrs):
        with self.lock:
            self.addrs = list(addrs)

    def _next(self):
        with self.lock:
            if not self.addrs:
                return None
            self.rr += 1
            return self.addrs[self.rr % len(self.addrs)]

    def _loop(self):
        while not self.stop.is_set():
            addr = self._next()
            if addr is None:
                time.sleep(0.05)
                continue
            host, _, port = addr.rpartition(":")
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=10)
                c.request("GET", self.path)
                r = c.getresponse()
                r.read()
                c.close()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.err += 1
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.err += 1
                time.sleep(0.05)

    def start(self):
        for _ in range(self.conc):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=12)


def queue_addrs(q):
    return [i["address"] for i in q.get("items", []) if i.get("category") != "SUNDOWN" and i.get("address")]


def cmd_scaleup(a):
    url = a.url
    # 1. wait until the initial pool is scored
    deadline = time.monotonic() + a.timeout
    while True:
        if not alive(a.pid):
            die(f"agent (pid {a.pid}) exited before the pool was scored")
        try:
            rows, _, scored = pool_state(url)
            if len(scored) >= a.initial:
                break
        except (OSError, ValueError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            die(f"initial pool of {a.initial} not scored within {a.timeout}s")
        time.sleep(0.25)
    t_pool = now_ms()
    base = [r["overall_score"] for r in scored]
    if a.offset > 0:
        # Shifts the load start against the agent's scale-check cycle (which starts with
        # the agent): without it every round would hit the same phase of the cycle.
        time.sleep(a.offset)
        _, _, scored = pool_state(url)
        base = [r["overall_score"] for r in scored]
    q = get_json(url + "/queue")
    n_initial = len(q.get("items", []))
    initial_ids = {i["id"] for i in q.get("items", [])}
    load = Load(a.conc, a.cpu_ms)
    load.set_addrs(queue_addrs(q))
    t0 = now_ms()
    load.start()
    log(f"load started: {a.conc} loops of GET /cpu?ms={a.cpu_ms} on {load.addrs} "
        f"(idle scores {', '.join(f'{s:.1f}' for s in base)})")
    t_cross = t_cross_poll = t_queue = t_new_scored = None
    cross_avg = cross_min = None
    new_id = new_category = None
    trace = []
    deadline = time.monotonic() + a.timeout
    try:
        while time.monotonic() < deadline:
            if not alive(a.pid):
                die(f"agent (pid {a.pid}) exited during the scale-up run")
            t = now_ms()
            try:
                rows, _, scored = pool_state(url)
                q = get_json(url + "/queue")
            except (OSError, ValueError, urllib.error.URLError) as e:
                log(f"poll failed: {e}")
                time.sleep(a.poll)
                continue
            vals = [r["overall_score"] for r in scored]
            avg = sum(vals) / len(vals) if vals else None
            mn = min(vals) if vals else None
            trace.append({"t_s": round((t - t0) / 1000, 3), "avg": avg, "min": mn,
                          "items": len(q.get("items", []))})
            if t_cross is None and vals and (avg < a.high or mn < a.critical):
                # The agent's own time of the round that produced these scores (its `now`
                # at the start of that tick) is more precise than our poll time.
                t_cross_poll, cross_avg, cross_min = t, avg, mn
                t_cross = max(r["scored_ms"] for r in scored if r.get("scored_ms")) or t
                log(f"threshold crossed at +{(t - t0) / 1000:.2f}s (avg {avg:.1f}, min {mn:.1f})")
            items = q.get("items", [])
            load.set_addrs(queue_addrs(q))
            if t_queue is None and len(items) > n_initial:
                t_queue = t
                new = [i for i in items if i["id"] not in initial_ids] or items
                new_id = new[0]["id"]
                new_category = new[0].get("category")
                log(f"new queue item at +{(t - t0) / 1000:.2f}s: {new[0].get('name')} "
                    f"({new[0].get('category')})")
            if t_queue is not None and new_id is not None and t_new_scored is None:
                for r in scored:
                    if r["id"] == new_id:
                        t_new_scored = t
            if t_queue is not None and (t_new_scored is not None or not a.wait_scored):
                break
            time.sleep(max(0.0, a.poll - (now_ms() - t) / 1000))
    finally:
        load.finish()
    events = []
    try:
        events = get_json(url + "/events?limit=1000")
    except (OSError, ValueError, urllib.error.URLError) as e:
        log(f"GET /events failed: {e}")
    events.sort(key=lambda e: e["at_ms"])
    ups = [e for e in events if e["kind"] == "scale_up" and e["at_ms"] >= t0]
    t_dec = ups[0]["at_ms"] if ups else None
    started = [e for e in events if e["kind"] == "container_started" and t_dec and e["at_ms"] >= t_dec]
    t_started = started[0]["at_ms"] if started else None
    ready = [e for e in events if e["kind"] == "container_ready" and t_started and e["at_ms"] >= t_started]
    t_ready = ready[0]["at_ms"] if ready else None

    def d(x, y):
        return round((y - x) / 1000, 3) if x is not None and y is not None else None

    res = {
        "check_period_s": a.check_period,
        "offset_s": a.offset,
        "launch_to_pool_scored_s": d(a.t_launch_ms, t_pool) if a.t_launch_ms else None,
        "launch_to_load_s": d(a.t_launch_ms, t0) if a.t_launch_ms else None,
        "ok": t_queue is not None and t_cross is not None and t_dec is not None,
        "idle_scores": base,
        "cross_avg": cross_avg,
        "cross_min": cross_min,
        "decision_details": ups[0]["details"] if ups else None,
        "decision_reason": ups[0]["reason"] if ups else None,
        "load_to_cross_s": d(t0, t_cross),
        "load_to_cross_poll_s": d(t0, t_cross_poll),
        "cross_poll_to_decision_s": d(t_cross_poll, t_dec),
        "cross_to_decision_s": d(t_cross, t_dec),
        "decision_to_started_s": d(t_dec, t_started),
        "started_to_ready_s": d(t_started, t_ready),
        "cross_to_queue_s": d(t_cross, t_queue),
        "decision_to_queue_s": d(t_dec, t_queue),
        "load_to_decision_s": d(t0, t_dec),
        "load_to_queue_s": d(t0, t_queue),
        "queue_to_scored_s": d(t_queue, t_new_scored),
        "new_category": new_category,
        "requests_ok": load.ok,
        "requests_err": load.err,
        "trace": trace,
    }
    print(json.dumps(res))


# ------------------------------------------------------------------ checks
LOG_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z \w+ +deployment_agent::reconcile\] "
                    r"(scaling: hold|scale_up:|scale_down:)")


def cmd_checks(a):
    """Adds the agent's scale-check times (from its debug log: one `scaling: hold` /
    `scale_up:` / `scale_down:` line per check, 1-s timestamps) to a round's JSON."""
    import calendar
    times = []
    with open(a.log, errors="replace") as f:
        for line in f:
            m = LOG_TS.match(line)
            if m:
                times.append(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")))
    with open(a.json) as f:
        res = json.load(f)
    gaps = [y - x for x, y in zip(times, times[1:])]
    res["checks"] = len(times)
    res["check_gaps_s"] = gaps
    res["effective_check_period_s"] = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    with open(a.json, "w") as f:
        json.dump(res, f)


# ------------------------------------------------------------------ report
def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def stat_cell(vals, digits=1):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def load_json(path):
    with open(path) as f:
        return json.load(f)


def cmd_report(a):
    meta = {}
    with open(a.meta) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    idle = load_json(a.idle) if a.idle and os.path.exists(a.idle) else None
    cold = load_json(a.cold) if a.cold and os.path.exists(a.cold) else None
    rounds = [load_json(p) for p in a.rounds if os.path.exists(p)]
    fast = [load_json(p) for p in a.fast if os.path.exists(p)]
    csv_rows = []

    def add(section, run, key, value, unit):
        csv_rows.append((section, run, key, "" if value is None else
                         (f"{value:.6g}" if isinstance(value, float) else value), unit))

    L = []
    L.append("# Deployment agent: idle cost and scale-up latency")
    L.append("")
    L.append(f"Measured by `jobs/bench-agent.sh` on {meta.get('date', '?')} "
             f"({meta.get('host', '?')}). Raw figures: `bench-agent.csv`.")
    L.append("")
    busy = meta.pop("MACHINE_BUSY_PCT", "")
    if busy.isdigit() and int(busy) > 50:
        L.append(f"> **Note:** the machine was {busy} % busy (all CPUs, everything included) "
                 "during the idle window; other work was running alongside. The agent's own CPU "
                 "and memory figures are per process and hold; Docker create/start times and, to "
                 "a lesser extent, the scale-up latencies may be inflated.")
        L.append("")
    L.append("## Summary")
    L.append("")
    L.append("| figure | value |")
    L.append("|---|---|")
    if idle and cold:
        L.append(f"| idle agent, {meta.get('IDLE_CONTAINERS', '10')} containers: CPU | "
                 f"{idle['cpu_pct_core']:.2f} % of one core = {idle['cpu_ms_per_round']:.1f} ms per "
                 f"{meta.get('SAMPLE_PERIOD', '2s')} round |")
        L.append(f"| idle agent: scoring round (`agent_scoring_round_seconds`) median / max | "
                 f"{fmt(idle['scoring_us_median'], 0)} / {fmt(idle['scoring_us_max'], 0)} µs |")
        L.append(f"| idle agent: RSS / peak | {idle['rss_kib_median'] / 1024:.1f} / "
                 f"{idle['hwm_kib'] / 1024:.1f} MiB |")
        L.append(f"| idle agent: queue versions | {fmt(idle['queue_versions_per_min'], 1)} / min |")
        L.append(f"| idle agent: Docker connections | "
                 f"{(idle.get('docker_conns_end') or {}).get('docker_unix_conns', 'n/a')} for "
                 f"{idle['containers_scored_end']} containers |")
        L.append(f"| pool cold start 0 → {meta.get('IDLE_CONTAINERS', '10')} scored | "
                 f"{fmt(cold.get('scored_poll_s'), 1)} s (all ready after {fmt(cold.get('last_ready_s'), 1)} s) |")
    for name, runs in ((meta.get("CHECK_PERIOD", "10s"), rounds),
                       (meta.get("FAST_CHECK_PERIOD", "2s"), fast)):
        if not runs:
            continue
        L.append(f"| scale-up, check {name}: threshold crossed → decision | "
                 f"{stat_cell([r.get('cross_to_decision_s') for r in runs])} s |")
        L.append(f"| scale-up, check {name}: threshold crossed → in queue | "
                 f"{stat_cell([r.get('cross_to_queue_s') for r in runs])} s |")
        L.append(f"| scale-up, check {name}: load start → in queue | "
                 f"{stat_cell([r.get('load_to_queue_s') for r in runs])} s |")
    cats = [r.get("new_category") for r in rounds + fast if r.get("new_category")]
    if cats:
        L.append("| category of the new container when it first appears in `/queue` | " +
                 ", ".join(f"{c} × {cats.count(c)}" for c in sorted(set(cats))) + " |")
    L.append("")
    L.append(f"Scale-up figures are median (min–max) over {len(rounds)} + {len(fast)} rounds; "
             "see the sections below for the break-down.")
    L.append("")
    if idle and cold:
        n = meta.get("IDLE_CONTAINERS", "10")
        L.append(f"## 1. Idle cost with {n} containers")
        L.append("")
        L.append(f"Agent with `DEFAULT_CONTAINER={n}`, `MAX_CONTAINERS={meta.get('IDLE_MAX', '?')}`, "
                 f"`SAMPLE_PERIOD={meta.get('SAMPLE_PERIOD', '2s')}`, every other setting at its default, "
                 f"no load, no balancer; window {fmt(idle['window_s'], 0)} s.")
        L.append("")
        L.append("| metric | value |")
        L.append("|---|---|")
        c_end = idle.get("docker_conns_end") or {}
        rows = [
            ("agent CPU, % of one core (mean over the window)", f"{idle['cpu_pct_core']:.2f} %"),
            ("agent CPU, cross-check from `/proc/PID/task/*/schedstat` (ns resolution)",
             f"{fmt(idle.get('cpu_pct_core_schedstat'), 2)} %"),
            ("agent CPU, 1-s samples (schedstat), p90 / max",
             f"{fmt(idle.get('cpu_pct_core_p90_1s'), 2)} % / {fmt(idle.get('cpu_pct_core_max_1s'), 2)} %"),
            (f"agent CPU per {meta.get('SAMPLE_PERIOD', '2s')} round (all agent work)",
             f"{idle['cpu_ms_per_round']:.1f} ms"),
            ("`agent_scoring_round_seconds` median / max",
             f"{fmt(idle['scoring_us_median'], 0)} µs / {fmt(idle['scoring_us_max'], 0)} µs"),
            ("VmRSS median / max during the window",
             f"{idle['rss_kib_median'] / 1024:.1f} MiB / {idle['rss_kib_max'] / 1024:.1f} MiB"),
            ("VmHWM (lifetime peak, includes the cold start)", f"{idle['hwm_kib'] / 1024:.1f} MiB"),
            ("threads", fmt(idle.get("threads"))),
            ("queue versions published", f"{idle['queue_versions']} in the window = "
             f"{fmt(idle['queue_versions_per_min'], 1)} / min (at most 30 / min: one per round)"),
            ("… of which only scores changed (no membership / category / address change)",
             f"{fmt(idle.get('queue_changes_score_only'))} of {fmt(idle.get('queue_changes_seen'))}; "
             f"median {fmt(idle.get('queue_change_items_changed_median'))} item(s) changed per version, "
             f"largest score change median {fmt(idle.get('queue_change_max_delta_median'))}"),
            ("connections to the Docker socket (end of window)",
             f"{c_end.get('docker_unix_conns', 'n/a')} (for {idle['containers_scored_end']} containers)"),
            ("pool cold start: agent launch → 10 containers created (last `created_ms`)",
             f"{fmt(cold.get('last_created_s'), 2)} s"),
            ("pool cold start: agent launch → 10 ready (last `ready_ms`)", f"{fmt(cold.get('last_ready_s'), 2)} s"),
            ("pool cold start: agent launch → 10 scored (first `/stats` poll)", f"{fmt(cold.get('scored_poll_s'), 2)} s"),
            ("create → ready per container, median / max",
             f"{fmt(cold.get('created_to_ready_ms_median'), 0)} / {fmt(cold.get('created_to_ready_ms_max'), 0)} ms"),
            ("`docker create` + `start` + `inspect`, one container (median gap between "
             "`container_started` events; sequential within one tick)",
             f"{fmt(cold.get('create_start_gap_ms_median'), 0)} ms"),
        ]
        for k, v in rows:
            L.append(f"| {k} | {v} |")
        L.append("")
        for k in ("cpu_pct_core", "cpu_pct_core_schedstat", "cpu_pct_core_p90_1s",
                  "cpu_pct_core_max_1s", "cpu_ms_per_round", "scoring_us_median",
                  "scoring_us_max", "rss_kib_median", "rss_kib_max", "hwm_kib", "threads",
                  "queue_versions", "queue_versions_per_min", "queue_changes_seen",
                  "queue_changes_score_only", "queue_change_max_delta_median", "window_s"):
            unit = {"cpu_pct_core": "%", "cpu_pct_core_p90_1s": "%", "cpu_pct_core_max_1s": "%", "cpu_ms_per_round": "ms",
                    "scoring_us_median": "us", "cpu_pct_core_schedstat": "%", "scoring_us_max": "us", "rss_kib_median": "KiB",
                    "rss_kib_max": "KiB", "hwm_kib": "KiB", "queue_versions_per_min": "1/min",
                    "window_s": "s"}.get(k, "")
            add("idle", 1, k, idle.get(k), unit)
        add("idle", 1, "docker_unix_conns", c_end.get("docker_unix_conns"), "")
        add("idle", 1, "tcp_established", c_end.get("tcp_established"), "")
        for k in ("last_created_s", "last_ready_s", "ready_poll_s", "scored_poll_s"):
            add("cold_start", 1, k, cold.get(k), "s")
        for k in ("created_to_ready_ms_median", "created_to_ready_ms_max", "create_start_gap_ms_median"):
            add("cold_start", 1, k, cold.get(k), "ms")

    def scale_table(title, runs):
        L.append(title)
        L.append("")
        L.append("| interval | median (min–max), s |")
        L.append("|---|---|")
        for label, key in (
            ("load start → threshold crossed (tick that produced the scores)", "load_to_cross_s"),
            ("load start → crossing seen by the 250-ms `/stats` poll", "load_to_cross_poll_s"),
            ("threshold crossed → `scale_up` decision", "cross_to_decision_s"),
            ("decision → container started (`container_started`)", "decision_to_started_s"),
            ("container started → accepts connections (`container_ready`)", "started_to_ready_s"),
            ("decision → 3rd item in `/queue`", "decision_to_queue_s"),
            ("**threshold crossed → 3rd item in `/queue`**", "cross_to_queue_s"),
            ("**load start → 3rd item in `/queue`**", "load_to_queue_s"),
            ("3rd item in `/queue` → scored (INIT → LU/MU/HU)", "queue_to_scored_s"),
            ("effective interval between scale checks (agent debug log, 1-s timestamps)",
             "effective_check_period_s"),
        ):
            L.append(f"| {label} | {stat_cell([r.get(key) for r in runs], 2)} |")
        gaps = sorted({g for r in runs for g in r.get("check_gaps_s", [])})
        if gaps:
            L.append("")
            L.append(f"Intervals between consecutive scale checks seen in the agent logs: "
                     f"{', '.join(f'{g} s' for g in gaps)} (the log has 1-s timestamps and checks "
                     f"happen on 2-s ticks, so an odd figure is the neighbouring even one ± 1 s).")
        L.append("")
        L.append("| round | ok | load start after agent launch | idle scores | avg / min at crossing | "
                 "decision avg / min | cross → decision | cross → queue | load → queue | "
                 "new item's category when first seen | requests ok / err |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(runs, 1):
            det = r.get("decision_details") or {}
            L.append(f"| {i} | {'yes' if r.get('ok') else 'NO'} | "
                     f"{fmt(r.get('launch_to_load_s'), 1)} s (offset {fmt(r.get('offset_s'), 1)} s) | "
                     f"{', '.join(f'{s:.1f}' for s in r.get('idle_scores', []))} | "
                     f"{fmt(r.get('cross_avg'))} / {fmt(r.get('cross_min'))} | "
                     f"{fmt(det.get('avg'))} / {fmt(det.get('min'))} | "
                     f"{fmt(r.get('cross_to_decision_s'), 2)} | {fmt(r.get('cross_to_queue_s'), 2)} | "
                     f"{fmt(r.get('load_to_queue_s'), 2)} | {r.get('new_category') or 'n/a'} | "
                     f"{r.get('requests_ok')} / {r.get('requests_err')} |")
        L.append("")

    keys = ("load_to_cross_s", "cross_to_decision_s", "decision_to_started_s", "started_to_ready_s",
            "decision_to_queue_s", "cross_to_queue_s", "load_to_decision_s", "load_to_queue_s",
            "queue_to_scored_s", "load_to_cross_poll_s", "cross_poll_to_decision_s",
            "cross_avg", "cross_min", "offset_s", "launch_to_load_s",
            "effective_check_period_s", "checks",
            "requests_ok", "requests_err")
    if rounds:
        scale_table(f"## 2. Scale-up latency, `SCALE_CHECK_PERIOD={meta.get('CHECK_PERIOD', '10s')}` "
                    f"({len(rounds)} round{'s' if len(rounds) > 1 else ''})", rounds)
        for i, r in enumerate(rounds, 1):
            for k in keys:
                add(f"scaleup_check{meta.get('CHECK_PERIOD', '10s')}", i, k, r.get(k),
                    "s" if k.endswith("_s") else "")
    if fast:
        scale_table(f"## 3. Same with `SCALE_CHECK_PERIOD={meta.get('FAST_CHECK_PERIOD', '2s')}` "
                    f"({len(fast)} round{'s' if len(fast) > 1 else ''})", fast)
        for i, r in enumerate(fast, 1):
            for k in keys:
                add(f"scaleup_check{meta.get('FAST_CHECK_PERIOD', '2s')}", i, k, r.get(k),
                    "s" if k.endswith("_s") else "")

    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            L.append(f.read().rstrip())
        L.append("")
    L.append("## Environment")
    L.append("")
    for k, v in meta.items():
        L.append(f"- **{k}**: {v}")
    L.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(L))
    with open(a.csv, "w") as f:
        f.write("section,run,metric,value,unit\n")
        for row in csv_rows:
            f.write(",".join(str(x) for x in row) + "\n")


# -------------------------------------------------------------------- main
def free_ports(n):
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    print(" ".join(map(str, ports)))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("free-ports")
    sp.add_argument("n", type=int)
    sp = sub.add_parser("wait-pool")
    sp.add_argument("--url", required=True)
    sp.add_argument("--pid", type=int, default=0)
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--t0-ms", type=float, required=True)
    sp.add_argument("--timeout", type=float, default=180)
    sp = sub.add_parser("idle")
    sp.add_argument("--url", required=True)
    sp.add_argument("--pid", type=int, required=True)
    sp.add_argument("--window", type=int, default=60)
    sp.add_argument("--sample-period", type=float, default=2.0)
    sp = sub.add_parser("scaleup")
    sp.add_argument("--url", required=True)
    sp.add_argument("--pid", type=int, required=True)
    sp.add_argument("--initial", type=int, default=2)
    sp.add_argument("--conc", type=int, default=8)
    sp.add_argument("--cpu-ms", type=int, default=200)
    sp.add_argument("--high", type=float, default=55)
    sp.add_argument("--critical", type=float, default=20)
    sp.add_argument("--poll", type=float, default=0.25)
    sp.add_argument("--offset", type=float, default=0,
                    help="seconds to wait between 'pool scored' and the load start")
    sp.add_argument("--t-launch-ms", type=float, default=0)
    sp.add_argument("--timeout", type=float, default=120)
    sp.add_argument("--check-period", type=float, default=10)
    sp.add_argument("--wait-scored", type=int, default=1)
    sp = sub.add_parser("checks")
    sp.add_argument("--log", required=True)
    sp.add_argument("--json", required=True)
    sp = sub.add_parser("report")
    sp.add_argument("--meta", required=True)
    sp.add_argument("--idle")
    sp.add_argument("--cold")
    sp.add_argument("--rounds", nargs="*", default=[])
    sp.add_argument("--fast", nargs="*", default=[])
    sp.add_argument("--notes")
    sp.add_argument("--md", required=True)
    sp.add_argument("--csv", required=True)
    a = p.parse_args()
    random.seed()
    {"free-ports": lambda: free_ports(a.n), "wait-pool": lambda: cmd_wait_pool(a),
     "idle": lambda: cmd_idle(a), "scaleup": lambda: cmd_scaleup(a),
     "checks": lambda: cmd_checks(a), "report": lambda: cmd_report(a)}[a.cmd]()


if __name__ == "__main__":
    main()
