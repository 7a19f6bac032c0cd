#!/usr/bin/env python3
"""Load generator, sampler and results writer for jobs/bench-autoscale.sh.

Standard library only, except the optional PNG plot (matplotlib). Reuses the helpers of
jobs/bench/agent.py (free ports, agent HTTP polling, pool state) and jobs/bench/results.py
(meta file).

  free-ports N     print N distinct free TCP ports on 127.0.0.1
  wait-ready       poll the agent's /stats and the balancer's admin /health every 250 ms
                   until N containers are scored and the balancer can route to N backends
  run              one run: open-loop load through the balancer in three phases
                   (warm-up at --light-rate, the step to --rate for --load-s seconds, then
                   --light-rate again until the pool is back at --default or --shrink-timeout,
                   or for --tail seconds), while sampling the agent (/queue, /health, /stats)
                   and the balancer (admin /health) once per second; writes one JSON file
                   with every request, every sample and the agent's events
  report           per-second table (CSV), metrics against the targets (Markdown) and the
                   plot (PNG) from the JSON of the autoscaled and the fixed-pool run

The load is open loop: arrival times are drawn up front (Poisson with a seeded RNG per
phase, or uniform spacing), every request runs in its own task on its own connection
(`Connection: close`, so no connection is shared or waited for), and its latency is
measured from its *scheduled* start, so a late generator cannot hide queueing
(coordinated omission); how late the generator actually was is recorded too.
"""

import argparse
import asyncio
import csv
import json
import math
import os
import random
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agent as bench_agent  # noqa: E402  (jobs/bench/agent.py: shared helpers)
import results as bench_results  # noqa: E402  (jobs/bench/results.py: meta reader)

REQUEST_TIMEOUT_S = 30.0
POLL_TIMEOUT_S = 2.0
fmt = bench_agent.fmt


def log(msg):
    print(f"[autoscale.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(2)


def pct(vals, q):
    """Quantile q (0..1) with linear interpolation between closest ranks (numpy's default)."""
    if not vals:
        return None
    s = sorted(vals)
    if len(s) == 1:
        return s[0]
    x = q * (len(s) - 1)
    lo = math.floor(x)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (x - lo)


# -------------------------------------------------------------- CPU use
def host_cpu():
    """(busy, total) clock ticks over all CPUs since boot (/proc/stat, busy = all but idle
    and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    total = sum(v)
    return total - v[3] - v[4], total


CGROUP_USAGE = (  # container id -> cumulative CPU time; cgroup v1 (ns) or v2 (usec)
    ("/sys/fs/cgroup/cpuacct/docker/{}/cpuacct.usage", 1),
    ("/sys/fs/cgroup/cpu,cpuacct/docker/{}/cpuacct.usage", 1),
    ("/sys/fs/cgroup/system.slice/docker-{}.scope/cpu.stat", 1000),
    ("/sys/fs/cgroup/docker/{}/cpu.stat", 1000),
)


def cgroup_cpu_ns(cid):
    for pattern, mult in CGROUP_USAGE:
        try:
            with open(pattern.format(cid)) as f:
                text = f.read()
        except OSError:
            continue
        if mult == 1:
            return int(text.split()[0])
        for line in text.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * mult
    return None


def all_container_ids():
    """Ids of every running container, from the cgroup tree (no Docker API call)."""
    import glob
    ids = set()
    for pattern, _ in CGROUP_USAGE:
        head = pattern.split("{}")[0]
        for d in glob.glob(head + "*"):
            name = os.path.basename(d.rstrip("/"))
            name = name[len("docker-"):] if name.startswith("docker-") else name
            name = name[:-len(".scope")] if name.endswith(".scope") else name
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                ids.add(name)
        if ids:
            break
    return ids


def proc_ticks(pid):
    try:
        return bench_agent.cpu_ticks(pid)
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU cores used between two readings: the whole host, our containers, the other
    containers, our host processes (agent, balancer, generator, redis) and the rest."""

    def __init__(self, pids):
        self.pids = [p for p in pids if p]
        self.prev = None

    def read(self, our_ids):
        ids = all_container_ids()
        usage = {i: cgroup_cpu_ns(i) for i in ids}
        return {"t": time.monotonic(), "host": host_cpu(), "usage": usage,
                "ours": set(our_ids), "procs": {p: proc_ticks(p) for p in self.pids}}

    def sample(self, our_ids):
        cur = self.read(our_ids)
        prev, self.prev = self.prev, cur
        if prev is None:
            return None
        dt = cur["t"] - prev["t"]
        (b1, t1), (b0, t0) = cur["host"], prev["host"]
        if dt <= 0 or t1 <= t0:
            return None
        ncpu = os.cpu_count() or 1
        host = (b1 - b0) / (t1 - t0) * ncpu
        ours = other = 0.0
        for cid, u in cur["usage"].items():
            u0 = prev["usage"].get(cid)
            if u is None or u0 is None:
                continue
            cores = max(0, u - u0) / 1e9 / dt
            if any(cid.startswith(o) or o.startswith(cid) for o in cur["ours"]):
                ours += cores
            else:
                other += cores
        procs = 0.0
        for p, v in cur["procs"].items():
            v0 = prev["procs"].get(p)
            if v is not None and v0 is not None:
                procs += (v - v0) / bench_agent.CLK_TCK / dt
        return {"host": round(host, 3), "our_containers": round(ours, 3),
                "other_containers": round(other, 3), "our_procs": round(procs, 3),
                "rest": round(max(0.0, host - ours - other - procs), 3)}


def cmd_quiet(a):
    """Waits until the machine is quiet: CPU cores busy (everything) over a 3-s window
    below --max-cores; gives up after --timeout and says so (exit 0 either way: the
    figure goes to the report)."""
    deadline = time.monotonic() + a.timeout
    waited = 0.0
    t0 = time.monotonic()
    while True:
        b0, tot0 = host_cpu()
        time.sleep(3)
        b1, tot1 = host_cpu()
        busy = (b1 - b0) / max(1, tot1 - tot0) * (os.cpu_count() or 1)
        waited = time.monotonic() - t0
        if busy <= a.max_cores:
            print(json.dumps({"quiet": True, "busy_cores": round(busy, 2), "waited_s": round(waited)}))
            return
        if time.monotonic() >= deadline:
            print(json.dumps({"quiet": False, "busy_cores": round(busy, 2), "waited_s": round(waited)}))
            return
        others = len(all_container_ids())
        log(f"machine busy: {busy:.2f} cores used by others ({others} container(s) running); "
            f"waiting for <= {a.max_cores} (up to {a.timeout - waited:.0f} s more)")
        time.sleep(2)


# ------------------------------------------------------------- async HTTP
def split_url(url):
    """http://host:port -> (host, port)."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host, int(port)


def dechunk(body):
    out, i = bytearray(), 0
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            raise ValueError("truncated chunked body")
        size = int(body[i:j].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[j + 2:j + 2 + size]
        i = j + 2 + size + 2


async def http_get(host, port, path, timeout):
    """One GET on a fresh connection (Connection: close); returns (status, body bytes).
    Raises asyncio.TimeoutError, OSError or ValueError."""

    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"User-Agent: bench-autoscale\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("connection closed before the response head" if not data
                             else "truncated response head")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"bad status line {lines[0][:60]!r}")
        status = int(parts[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            headers[k.strip().lower()] = v.strip().lower()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = dechunk(body)
        elif b"content-length" in headers and len(body) < int(headers[b"content-length"]):
            raise ValueError("truncated response body")
        return status, body

    return await asyncio.wait_for(go(), timeout)


async def get_json_async(url, path, timeout=POLL_TIMEOUT_S):
    host, port = split_url(url)
    status, body = await http_get(host, port, path, timeout)
    if status != 200:
        raise ValueError(f"GET {path}: HTTP {status}")
    return json.loads(body)


# ------------------------------------------------------------------ ready
def cmd_wait_ready(a):
    deadline = time.monotonic() + a.timeout
    last_log = 0.0
    seen = "nothing yet"
    while time.monotonic() < deadline:
        for pid, who in ((a.agent_pid, "agent"), (a.balancer_pid, "balancer")):
            if pid and not bench_agent.alive(pid):
                die(f"the {who} (pid {pid}) exited while waiting for the pool")
        try:
            rows, ready, scored = bench_agent.pool_state(a.agent)
            bal = bench_agent.get_json(a.balancer_admin + "/health")
            seen = (f"{len(rows)} container(s), {len(ready)} ready, {len(scored)} scored; "
                    f"balancer: {bal.get('selectable')} selectable, agent connected "
                    f"{bal.get('agent_connected')}")
            if len(scored) >= a.n and (bal.get("selectable") or 0) >= a.n:
                print(json.dumps({"scored": len(scored), "selectable": bal.get("selectable")}))
                return
        except (OSError, ValueError) as e:
            seen = f"poll failed: {e}"
        if time.monotonic() - last_log > 5:
            log(f"waiting for {a.n} scored container(s) routed by the balancer: {seen}")
            last_log = time.monotonic()
        time.sleep(0.25)
    die(f"the pool did not reach {a.n} scored container(s) routed by the balancer within "
        f"{a.timeout:.0f}s ({seen})")


# -------------------------------------------------------------------- run
class Run:
    def __init__(self, a):
        self.a = a
        self.bal_host, self.bal_port = split_url(a.balancer)
        self.path = f"/cpu?ms={a.cpu_ms}"
        self.requests = []   # [t_sched, lateness_ms, latency_ms, status, error, hostname]
        self.sent = []       # t_sched of every request sent
        self.samples = []
        self.tasks = set()
        self.stop_at = None  # monotonic end of the tail phase, once known
        self.t_shrunk = None
        self.poll_failures = 0
        self.cpu = CpuMeter([a.agent_pid, a.balancer_pid, a.redis_pid, os.getpid()])

    # t = seconds relative to the step (monotonic clock); the warm-up is negative.
    def rel(self, mono):
        return mono - self.t_step

    async def request(self, t_sched):
        lateness = (time.monotonic() - t_sched) * 1000
        status = host = err = None
        try:
            status, body = await http_get(self.bal_host, self.bal_port, self.path,
                                          REQUEST_TIMEOUT_S - max(0.0, lateness / 1000))
            if status == 200:
                try:
                    host = json.loads(body).get("hostname")
                except ValueError:
                    pass
            else:
                err = f"HTTP {status}"
        except asyncio.TimeoutError:
            err = "timeout 30s"
        except (OSError, ValueError) as e:
            err = type(e).__name__ + (f": {e}" if str(e) else "")
        latency = (time.monotonic() - t_sched) * 1000
        self.requests.append([round(self.rel(t_sched), 4), round(lateness, 2), round(latency, 2),
                              status, err, host])

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def phase(self, name, start, end, rate, tag):
        """Arrivals from `start` to `end` (monotonic; `end` None = until self.stop_at, which
        the sampler sets); returns the number of requests sent."""
        rng = random.Random(f"{self.a.seed}-{tag}")
        t = start
        n = 0
        while True:
            if rate > 0:
                t += rng.expovariate(rate) if self.a.arrivals == "poisson" else 1.0 / rate
            else:
                t = math.inf
            while True:
                limit = end if end is not None else self.stop_at
                if limit is not None and t >= limit:
                    return n
                delay = t - time.monotonic()
                if delay <= 0:
                    break
                # without a known end, wake up now and then to see whether it is decided
                await asyncio.sleep(delay if end is not None else min(delay, 0.2))
            self.sent.append(self.rel(t))
            self.spawn(self.request(t))
            n += 1

    async def sample(self, k):
        t_mono = time.monotonic()
        agent, bal = self.a.agent, self.a.balancer_admin
        res = await asyncio.gather(
            get_json_async(agent, "/queue"), get_json_async(agent, "/health"),
            get_json_async(agent, "/stats"), get_json_async(bal, "/health"),
            return_exceptions=True)
        q, h, st, bh = [None if isinstance(x, BaseException) else x for x in res]
        cpu = self.cpu.sample([r.get("id", "") for r in (st or []) if r.get("id")])
        fails = [type(x).__name__ for x in res if isinstance(x, BaseException)]
        if fails:
            self.poll_failures += 1
        items = (q or {}).get("items", [])
        row = {
            "k": k,
            "t": round(self.rel(t_mono), 3),
            "wall_ms": int(self.wall_step_ms + self.rel(t_mono) * 1000),
            "serving": sum(1 for i in items if i.get("category") != "SUNDOWN") if q else None,
            "queue_items": len(items) if q else None,
            "queue_version": (q or {}).get("version"),
            "queue_categories": [i.get("category") for i in items] if q else None,
            "active": (h or {}).get("active"),
            "desired": (h or {}).get("desired"),
            "host_cpu_busy": (h or {}).get("host_cpu_busy"),
            "host_saturated": (h or {}).get("host_saturated"),
            "containers": len(st) if st is not None else None,
            "stats": [{"id": (r.get("id") or "")[:12], "name": r.get("name"),
                       "cat": r.get("utilization_category"),
                       "score": r.get("overall_score"), "cpu": r.get("cpu_score"),
                       "avail": r.get("availability_score"), "in_flight": r.get("in_flight"),
                       "rps": r.get("requests_per_s"), "p99": r.get("latency_p99_ms")}
                      for r in (st or [])],
            "bal_selectable": (bh or {}).get("selectable"),
            "bal_backends": (bh or {}).get("backends"),
            "client_in_flight": len(self.tasks),
            "poll_errors": fails,
            "cpu": cpu,
        }
        self.samples.append(row)
        return row

    def progress(self, row, phase):
        now = row["t"]
        lo = now - 10
        done = [r for r in self.requests if lo <= r[0] + r[2] / 1000 < now]
        lat = [r[2] for r in done if r[4] is None]
        errs = sum(1 for r in done if r[4] is not None)
        sent = sum(1 for t in self.sent if lo <= t < now)
        busy = row["host_cpu_busy"]
        cpu = row.get("cpu") or {}
        log(f"t={now:+5.0f}s {phase:<7} active {fmt(row['active'])} serving {fmt(row['serving'])} "
            f"desired {fmt(row['desired'])} | last 10 s: {sent} sent, {len(done)} done, p50 "
            f"{fmt(pct(lat, 0.5), 0)} ms, p99 {fmt(pct(lat, 0.99), 0)} ms, {errs} error(s), "
            f"{row['client_in_flight']} in flight | host CPU "
            f"{fmt(None if busy is None else busy * 100, 0)} %, others "
            f"{fmt(cpu.get('other_containers'), 2)} + {fmt(cpu.get('rest'), 2)} cores")

    async def sampler(self):
        a = self.a
        k = -int(math.ceil(a.warmup_s))
        load_end = self.t_step + a.load_s
        hard_end = load_end + (a.shrink_timeout if a.until_default else a.tail)
        while True:
            t_k = self.t_step + k
            delay = t_k - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for pid, who in ((a.agent_pid, "agent"), (a.balancer_pid, "balancer")):
                if pid and not bench_agent.alive(pid):
                    raise RuntimeError(f"the {who} (pid {pid}) exited during the run")
            row = await self.sample(k)
            phase = "warm-up" if k < 0 else ("load" if k < a.load_s else "tail")
            if k % 10 == 0 or k == -int(math.ceil(a.warmup_s)):
                self.progress(row, phase)
            now = time.monotonic()
            if now >= load_end and self.stop_at is None:
                if a.until_default:
                    if (self.t_shrunk is None and row["active"] is not None
                            and row["active"] <= a.default):
                        self.t_shrunk = row["t"]
                        log(f"t={row['t']:+.0f}s pool back at {a.default} active container(s)")
                    gone = (row["containers"] is not None and row["containers"] <= a.default
                            and row["serving"] is not None and row["queue_items"] == row["serving"])
                    if (self.t_shrunk is not None and gone
                            and now >= load_end + a.min_tail):
                        self.stop_at = now + a.after
                        log(f"t={row['t']:+.0f}s SUNDOWN containers removed; light load for "
                            f"{a.after:.0f} s more")
                    elif now >= hard_end:
                        self.stop_at = now
                        log(f"t={row['t']:+.0f}s SHRINK_TIMEOUT: the pool is still at "
                            f"{row['active']} active / {row['containers']} containers")
                elif now >= hard_end:
                    self.stop_at = now
            if self.stop_at is not None and now >= self.stop_at:
                return
            k += 1

    async def main(self):
        a = self.a
        lead = 0.5
        self.t_start = time.monotonic() + lead
        self.t_step = self.t_start + a.warmup_s
        self.wall_step_ms = (time.time() + lead + a.warmup_s) * 1000
        log(f"warm-up {a.warmup_s:.0f} s at {a.light_rate} req/s, then {a.load_s:.0f} s at "
            f"{a.rate} req/s of GET {self.path} ({a.arrivals} arrivals, seed {a.seed}), then "
            + (f"{a.light_rate} req/s until the pool is back at {a.default} (at most "
               f"{a.shrink_timeout:.0f} s)" if a.until_default
               else f"{a.tail:.0f} s at {a.light_rate} req/s"))
        sampler = asyncio.ensure_future(self.sampler())

        async def load():
            n_w = await self.phase("warm-up", self.t_start, self.t_step, a.light_rate, "warmup")
            log(f"step: {a.rate} req/s")
            n_l = await self.phase("load", self.t_step, self.t_step + a.load_s, a.rate, "load")
            log(f"end of the load step; {a.light_rate} req/s")
            n_t = await self.phase("tail", self.t_step + a.load_s, None, a.light_rate, "tail")
            return n_w, n_l, n_t

        gen = asyncio.ensure_future(load())
        done, _ = await asyncio.wait({sampler, gen}, return_when=asyncio.FIRST_EXCEPTION)
        for f in done:
            if f.exception():
                gen.cancel()
                sampler.cancel()
                raise f.exception()
        await sampler
        counts = await gen
        if self.tasks:
            log(f"waiting for {len(self.tasks)} request(s) still in flight")
            await asyncio.wait(set(self.tasks), timeout=REQUEST_TIMEOUT_S + 5)
        try:
            events = await get_json_async(a.agent, "/events?limit=1000", timeout=5)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            log(f"GET /events failed: {e}")
            events = []
        return counts, events


def cmd_run(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = Run(a)
    try:
        counts, events = asyncio.run(r.main())
    except RuntimeError as e:
        die(str(e))
    late = [x[1] for x in r.requests]
    out = {
        "label": a.label,
        "rate": a.rate, "light_rate": a.light_rate, "cpu_ms": a.cpu_ms,
        "warmup_s": a.warmup_s, "load_s": a.load_s, "seed": a.seed, "arrivals": a.arrivals,
        "default": a.default, "until_default": a.until_default,
        "wall_step_ms": r.wall_step_ms,
        "sent": {"warmup": counts[0], "load": counts[1], "tail": counts[2]},
        "t_shrunk": r.t_shrunk,
        "t_end": round(r.rel(r.stop_at), 3) if r.stop_at else None,
        "poll_failures": r.poll_failures,
        "lateness_ms_p99": pct(late, 0.99), "lateness_ms_max": max(late) if late else None,
        "requests_fields": ["t_sched", "lateness_ms", "latency_ms", "status", "error", "hostname"],
        "requests": sorted(r.requests),
        "samples": r.samples,
        "events": sorted(events, key=lambda e: e.get("at_ms", 0)),
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
    errs = sum(1 for x in r.requests if x[4] is not None)
    log(f"run {a.label}: {len(r.requests)} requests, {errs} error(s); generator lateness "
        f"p99 {fmt(out['lateness_ms_p99'], 1)} ms, max {fmt(out['lateness_ms_max'], 1)} ms")


# ----------------------------------------------------------------- report
def load_run(path):
    with open(path) as f:
        return json.load(f)


def per_second(run):
    """One row per whole second t (relative to the step) of the run."""
    reqs = run["requests"]
    by_done, by_start = {}, {}
    for t_s, _late, lat, _status, err, _host in reqs:
        done = math.floor(t_s + lat / 1000)
        start = math.floor(t_s)
        by_done.setdefault(done, []).append((lat, err))
        by_start.setdefault(start, []).append((lat, err))
    rows = []
    for s in run["samples"]:
        k = s["k"]
        done = by_done.get(k, [])
        ok = [lat for lat, err in done if err is None]
        started = by_start.get(k, [])
        ok_s = [lat for lat, err in started if err is None]
        scored = [x for x in s.get("stats") or []
                  if x.get("score") is not None and x.get("cat") in ("LU", "MU", "HU")]
        scores = [x["score"] for x in scored]
        cpu_sc = [x["cpu"] for x in scored if x.get("cpu") is not None]
        av_sc = [x["avail"] for x in scored if x.get("avail") is not None]
        cpu = s.get("cpu") or {}
        rows.append({
            "run": run["label"], "t": k,
            "active": s["active"], "serving": s["serving"], "desired": s["desired"],
            "p50_ms": pct(ok, 0.5), "p99_ms": pct(ok, 0.99),
            "errors": sum(1 for _, err in done if err is not None),
            "rate": len(started),
            "completed": len(done),
            "p99_by_start_ms": pct(ok_s, 0.99),
            "errors_by_start": sum(1 for _, err in started if err is not None),
            "client_in_flight": s["client_in_flight"],
            "containers": s["containers"],
            "bal_selectable": s["bal_selectable"],
            "host_cpu_busy": s["host_cpu_busy"],
            "avg_score": statistics.mean(scores) if scores else None,
            "min_score": min(scores) if scores else None,
            "avg_cpu_score": statistics.mean(cpu_sc) if cpu_sc else None,
            "avg_availability_score": statistics.mean(av_sc) if av_sc else None,
            "cpu_host": cpu.get("host"),
            "cpu_our_containers": cpu.get("our_containers"),
            "cpu_other_containers": cpu.get("other_containers"),
            "cpu_our_procs": cpu.get("our_procs"),
            "cpu_rest": cpu.get("rest"),
            "phase": "warmup" if k < 0 else ("load" if k < run["load_s"] else "tail"),
        })
    return rows


CSV_FIELDS = ["run", "t", "active", "serving", "desired", "p50_ms", "p99_ms", "errors", "rate",
              "completed", "p99_by_start_ms", "errors_by_start", "client_in_flight",
              "containers", "bal_selectable", "host_cpu_busy", "avg_score", "min_score",
              "avg_cpu_score", "avg_availability_score",
              "cpu_host", "cpu_our_containers", "cpu_other_containers", "cpu_our_procs",
              "cpu_rest", "phase"]


def metrics(run, needed, p99_from):
    """The figures of the issue for one run."""
    load_s = run["load_s"]
    reqs = run["requests"]
    samples = run["samples"]
    m = {}
    # capacity serving: first sample at/after the step with >= needed non-SUNDOWN queue items
    cap = [s for s in samples if s["t"] >= -0.5 and (s["serving"] or 0) >= needed]
    m["t_capacity"] = max(0.0, cap[0]["t"]) if cap else None
    m["t_capacity_selectable"] = next((max(0.0, s["t"]) for s in samples if s["t"] >= -0.5
                                       and (s["bal_selectable"] or 0) >= needed), None)
    m["peak_active"] = max((s["active"] or 0) for s in samples)
    m["peak_serving"] = max((s["serving"] or 0) for s in samples)
    m["peak_desired"] = max((s["desired"] or 0) for s in samples)
    m["peak_containers"] = max((s["containers"] or 0) for s in samples)
    win = [x for x in reqs if p99_from <= x[0] < load_s]
    ok = [x[2] for x in win if x[4] is None]
    m["win_requests"] = len(win)
    m["win_errors"] = sum(1 for x in win if x[4] is not None)
    m["p50_win"] = pct(ok, 0.5)
    m["p99_win"] = pct(ok, 0.99)
    # including failed requests at their (timeout) latency: errors are not free
    m["p99_win_all"] = pct([x[2] for x in win], 0.99)
    load = [x for x in reqs if 0 <= x[0] < load_s]
    m["p99_load"] = pct([x[2] for x in load if x[4] is None], 0.99)
    m["max_load"] = max((x[2] for x in load), default=None)
    m["errors_total"] = sum(1 for x in reqs if x[4] is not None)
    m["errors_warmup"] = sum(1 for x in reqs if x[0] < 0 and x[4] is not None)
    m["errors_load"] = sum(1 for x in load if x[4] is not None)
    m["errors_tail"] = sum(1 for x in reqs if x[0] >= load_s and x[4] is not None)
    m["requests_tail"] = sum(1 for x in reqs if x[0] >= load_s)
    m["requests_total"] = len(reqs)
    kinds = {}
    for x in reqs:
        if x[4] is not None:
            kinds[x[4]] = kinds.get(x[4], 0) + 1
    m["error_kinds"] = kinds
    m["t_shrunk"] = None if run.get("t_shrunk") is None else run["t_shrunk"] - load_s
    m["t_end"] = run.get("t_end")
    busy = [s["host_cpu_busy"] for s in samples if 0 <= s["t"] < load_s
            and s["host_cpu_busy"] is not None]
    m["host_busy_median"] = statistics.median(busy) if busy else None
    m["host_busy_max"] = max(busy) if busy else None
    m["host_saturated_s"] = sum(1 for s in samples if s.get("host_saturated"))
    cpus = [s["cpu"] for s in samples if 0 <= s["t"] < load_s and s.get("cpu")]
    for key in ("our_containers", "other_containers", "our_procs", "rest"):
        vals = [c[key] for c in cpus if c.get(key) is not None]
        m[f"cpu_{key}_mean"] = statistics.mean(vals) if vals else None
        m[f"cpu_{key}_max"] = max(vals) if vals else None
    others = [c["other_containers"] + c["rest"] for c in cpus
              if c.get("other_containers") is not None and c.get("rest") is not None]
    m["cpu_others_mean"] = statistics.mean(others) if others else None
    m["cpu_others_max"] = max(others) if others else None
    m["lateness_p99"] = run.get("lateness_ms_p99")
    m["lateness_max"] = run.get("lateness_ms_max")
    m["poll_failures"] = run.get("poll_failures")
    names = {}
    for s in samples:
        for c in s.get("stats") or []:
            if c.get("id") and c.get("name"):
                names[c["id"]] = c["name"]

    def name(h):
        n = names.get(h, h)
        return n.rsplit("-", 1)[-1] if n != h and "-app-" in n else n

    hosts = {}
    for x in load:
        if x[5]:
            k = name(x[5])
            hosts[k] = hosts.get(k, 0) + 1
    m["served_by"] = hosts
    by = {}
    for x in win:
        if x[4] is None and x[5]:
            by.setdefault(name(x[5]), []).append(x[2])
    m["win_by_container"] = {k: (len(v), pct(v, 0.5), pct(v, 0.99)) for k, v in by.items()}
    ev = run.get("events", [])
    step_ms = run["wall_step_ms"]
    ups = [e for e in ev if e["kind"] == "scale_up" and e["at_ms"] >= step_ms - 1000]
    m["first_scale_up"] = (ups[0]["at_ms"] - step_ms) / 1000 if ups else None
    downs = [e for e in ev if e["kind"] == "scale_down" and e["at_ms"] >= step_ms]
    m["scale_downs"] = len(downs)
    m["first_scale_down"] = (downs[0]["at_ms"] - step_ms) / 1000 - load_s if downs else None
    if downs:
        t_first = (downs[0]["at_ms"] - step_ms) / 1000
        m["errors_shrinking"] = sum(1 for x in reqs if x[0] + x[2] / 1000 >= t_first
                                    and x[4] is not None)
        m["requests_shrinking"] = sum(1 for x in reqs if x[0] + x[2] / 1000 >= t_first)
    else:
        m["errors_shrinking"] = m["requests_shrinking"] = None
    return m


def score_recovery(rows, load_s, low):
    """After the load: first second whose average score is above `low`, and the average
    CPU / availability sub-scores at a few points."""
    after = [r for r in rows if r["t"] >= load_s]
    first = next((r["t"] - load_s for r in after
                  if r["avg_score"] is not None and r["avg_score"] > low), None)
    known = [r for r in after if r["avg_score"] is not None]
    share = (sum(1 for r in known if r["avg_score"] > low) / len(known)) if known else None
    points = []
    for d in (0, 30, 60, 120):
        r = next((r for r in after if r["t"] - load_s >= d), None)
        if r is not None and r["avg_score"] is not None:
            points.append((d, r["avg_score"], r["avg_cpu_score"], r["avg_availability_score"]))
    return first, share, points


def rel_events(run, kinds=None):
    step_ms = run["wall_step_ms"]
    out = []
    for e in run.get("events", []):
        if kinds and e["kind"] not in kinds:
            continue
        out.append(((e["at_ms"] - step_ms) / 1000, e))
    return out


def short_name(d):
    return (d or {}).get("name") or (d or {}).get("container") or ""


def decision_inputs(e):
    """A compact rendering of a scale event's details (the decision's inputs)."""
    d = e.get("details") or {}
    parts = []
    for k in ("current", "to", "proposed", "desired", "starting", "window", "panic", "host_busy"):
        if k in d:
            parts.append(f"{k} {d[k]}")
    props = d.get("proposals") or []
    for p in props:
        parts.append(f"{p.get('signal')}: {p.get('desired')} (observed {p.get('observed')}, "
                     f"target {p.get('target')})")
    return "; ".join(parts)


def holds_from_log(path, step_ms):
    """The agent's scale checks that held, from its debug log (`scaling: hold: …`, 1-s
    timestamps), consecutive repeats folded: [(t_first, t_last, count, reason)]."""
    import calendar
    import re
    if not path or not os.path.exists(path):
        return []
    rx = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z \w+ +[\w:]+\] scaling: (.*)$")
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = rx.match(line.rstrip("\n"))
            if not m:
                continue
            t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            rel = t - step_ms / 1000
            # numbers vary from check to check: fold on the text without digits
            text = m.group(2)
            key = re.sub(r"[0-9.]+", "#", text)
            if out and out[-1][4] == key:
                first, _, n, _, _ = out[-1]
                out[-1] = (first, rel, n + 1, text, key)
            else:
                out.append((rel, rel, 1, text, key))
    return [(a, b, n, text) for a, b, n, text, _ in out]


def write_png(auto_rows, fixed_rows, meta, needed, load_s, p99_from, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("warning: matplotlib not importable, skipping the plot")
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 8), sharex=True,
                                   gridspec_kw={"height_ratios": [1, 1.3]})
    series = (("autoscaled", auto_rows, "tab:blue"), ("fixed pool", fixed_rows, "tab:orange"))
    for label, rows, color in series:
        if not rows:
            continue
        t = [r["t"] for r in rows]
        ax1.step(t, [r["active"] for r in rows], where="post", color=color,
                 label=f"{label}: active (/health)")
        ax1.step(t, [r["serving"] for r in rows], where="post", color=color, linestyle=":",
                 label=f"{label}: serving (non-SUNDOWN in /queue)")
        ax2.plot(t, [r["p99_ms"] for r in rows], color=color, lw=1.2, label=f"{label}: p99")
        ax2.plot(t, [r["p50_ms"] for r in rows], color=color, lw=0.8, linestyle="--",
                 alpha=0.7, label=f"{label}: p50")
        et = [r["t"] for r in rows if r["errors"]]
        if et:
            ax2.scatter(et, [REQUEST_TIMEOUT_S * 1000] * len(et), marker="x", color=color,
                        label=f"{label}: second with errors")
    ax1.axhline(needed, color="grey", lw=0.8, linestyle="--", label=f"needed = {needed}")
    ax1.axhline(needed + 1, color="red", lw=0.6, linestyle=":", label="needed + 1")
    for ax in (ax1, ax2):
        ax.axvspan(0, load_s, color="grey", alpha=0.08)
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(p99_from, color="grey", lw=0.6, linestyle=":")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("containers")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax2.set_yscale("log")
    ax2.set_ylabel("latency of requests completed in that second (ms)")
    ax2.set_xlabel(f"seconds since the load step (shaded: the step; dotted: step + {p99_from:g} s, "
                   "where the p99 comparison starts)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    import textwrap
    fig.suptitle("\n".join(textwrap.wrap(f"Autoscaling under a load step: {meta.get('load', '')}",
                                         150)), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def cell(x, digits=1, unit=""):
    return "n/a" if x is None else f"{x:.{digits}f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def cmd_report(a):
    meta = dict(bench_results.read_meta(a.meta))
    auto = load_run(a.auto) if a.auto and os.path.exists(a.auto) else None
    fixed = load_run(a.fixed) if a.fixed and os.path.exists(a.fixed) else None
    if not auto and not fixed:
        die("no run to report")
    needed = a.needed
    auto_rows = per_second(auto) if auto else []
    fixed_rows = per_second(fixed) if fixed else []
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in auto_rows + fixed_rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in r.items()})
    ma = metrics(auto, needed, a.p99_from) if auto else None
    mf = metrics(fixed, needed, a.p99_from) if fixed else None
    load_s = (auto or fixed)["load_s"]
    png_ok = write_png(auto_rows, fixed_rows, meta, needed, load_s, a.p99_from, a.png) if a.png else False

    def met(ok):
        return "n/a" if ok is None else ("**yes**" if ok else "**NO**")

    L = []
    L.append("# Autoscaling under a load step")
    L.append("")
    L.append(f"Measured by `jobs/bench-autoscale.sh` on {meta.get('date', '?')} "
             f"({meta.get('host', '?')}). Per-second data: `bench-autoscale.csv`"
             + (", plot: `bench-autoscale.png`." if png_ok else "."))
    L.append("")
    L.append(f"**Load**: {meta.get('load', '?')}")
    L.append("")
    L.append(f"**Needed pool**: {meta.get('needed_formula', '?')}")
    L.append("")
    L.append("## Results")
    L.append("")
    ratio = None
    if ma and mf and ma["p99_win"] is not None and mf["p99_win"]:
        ratio = ma["p99_win"] / mf["p99_win"]
    rows = []
    if ma:
        rows.append(("needed capacity serving after the step (first 1-Hz sample with ≥ "
                     f"{needed} non-SUNDOWN containers in the agent's `/queue`)",
                     cell(ma["t_capacity"], 1, " s") if ma["t_capacity"] is not None
                     else f"never (peak {ma['peak_serving']})",
                     "0 s (already there)" if mf else "n/a", "≤ 10 s",
                     met(ma["t_capacity"] is not None and ma["t_capacity"] <= 10)))
        rows.append((f"… the balancer routing to ≥ {needed} backends (its admin `/health` "
                     "`selectable`)", cell(ma["t_capacity_selectable"], 1, " s"), "", "", ""))
        rows.append(("first `scale_up` decision after the step (agent event)",
                     cell(ma["first_scale_up"], 1, " s"), "", "", ""))
        rows.append(("peak pool: active containers (`/health` `active`, 1-Hz samples)",
                     f"{ma['peak_active']} (overshoot {ma['peak_active'] - needed:+d})",
                     str(mf["peak_active"]) if mf else "n/a", f"≤ {needed + 1} (needed + 1)",
                     met(ma["peak_active"] <= needed + 1)))
        rows.append(("peak desired / containers incl. SUNDOWN",
                     f"{ma['peak_desired']} / {ma['peak_containers']}",
                     f"{mf['peak_desired']} / {mf['peak_containers']}" if mf else "n/a", "", ""))
        rows.append((f"p99 of requests started in [step + {a.p99_from:.0f} s, end of load), "
                     "successful ones", cell(ma["p99_win"], 0, " ms"),
                     cell(mf["p99_win"], 0, " ms") if mf else "n/a", "≤ 1.5 × fixed",
                     (f"{ratio:.2f} × → " + met(ratio <= 1.5)) if ratio is not None else "n/a"))
        rows.append(("… p50 in the same window", cell(ma["p50_win"], 0, " ms"),
                     cell(mf["p50_win"], 0, " ms") if mf else "n/a", "", ""))
        rows.append(("… p99 counting failed requests at their latency",
                     cell(ma["p99_win_all"], 0, " ms"),
                     cell(mf["p99_win_all"], 0, " ms") if mf else "n/a", "", ""))
        rows.append(("p99 / max over the whole load step (successful / all)",
                     f"{cell(ma['p99_load'], 0, ' ms')} / {cell(ma['max_load'], 0, ' ms')}",
                     f"{cell(mf['p99_load'], 0, ' ms')} / {cell(mf['max_load'], 0, ' ms')}"
                     if mf else "n/a", "", ""))
        rows.append(("time from the end of the load to `active` = DEFAULT_CONTAINER "
                     f"({auto['default']})",
                     "n/a (the pool never grew)" if ma["peak_active"] <= auto["default"]
                     else cell(ma["t_shrunk"], 0, " s") if ma["t_shrunk"] is not None
                     else f"not within SHRINK_TIMEOUT (still {auto['samples'][-1]['active']} "
                          f"active at +{fmt(ma['t_end'], 0)} s, {ma['t_end'] - load_s:.0f} s "
                          "after the load)",
                     "n/a (fixed)", "reported", ""))
        rows.append(("errors: total (warm-up / load / after the load)",
                     f"{ma['errors_total']} ({ma['errors_warmup']} / {ma['errors_load']} / "
                     f"{ma['errors_tail']})",
                     f"{mf['errors_total']} ({mf['errors_warmup']} / {mf['errors_load']} / "
                     f"{mf['errors_tail']})" if mf else "n/a", "", ""))
        rows.append(("first `scale_down` decision after the end of the load (agent event)",
                     cell(ma["first_scale_down"], 1, " s") if ma["first_scale_down"] is not None
                     else "none", "", "", ""))
        rec_first, rec_share, rec_points = score_recovery(auto_rows, load_s, a.low_threshold)
        rows.append((f"after the load: first second with the average score of the scored "
                     f"containers (`/stats`) > LOW_LOAD_THRESHOLD {a.low_threshold:g} (the "
                     "scale-down condition); share of the seconds after the load above it",
                     (cell(rec_first, 0, " s") if rec_first is not None else "never")
                     + f"; {cell(None if rec_share is None else rec_share * 100, 0, ' %')}",
                     "", "", ""))
        if rec_points:
            rows.append(("… average overall / CPU / availability sub-score at the end of the "
                         "load + " + ", ".join(f"{d} s" for d, *_ in rec_points),
                         "; ".join(f"+{d} s: {cell(o, 0)} / {cell(c, 0)} / {cell(v, 0)}"
                                   for d, o, c, v in rec_points), "", "", ""))
        if ma["errors_shrinking"] is None:
            rows.append(("errors while shrinking (requests finishing after the first "
                         "`scale_down`)", "n/a: the pool did not shrink during the run", "",
                         "0", "n/a (not exercised)"))
        else:
            rows.append(("errors while shrinking (requests finishing after the first "
                         f"`scale_down`, {ma['requests_shrinking']} of them)",
                         str(ma["errors_shrinking"]), "", "0", met(ma["errors_shrinking"] == 0)))
        rows.append(("errors among the requests started after the end of the load "
                     f"({ma['requests_tail']} sent)", str(ma["errors_tail"]), "", "", ""))
        rows.append(("requests sent (warm-up / load / after)",
                     f"{auto['sent']['warmup']} / {auto['sent']['load']} / {auto['sent']['tail']}",
                     f"{fixed['sent']['warmup']} / {fixed['sent']['load']} / "
                     f"{fixed['sent']['tail']}" if fixed else "n/a", "", ""))
        rows.append(("host CPU busy during the load, median / max (agent `/health`)",
                     f"{cell(None if ma['host_busy_median'] is None else ma['host_busy_median'] * 100, 0, ' %')}"
                     f" / {cell(None if ma['host_busy_max'] is None else ma['host_busy_max'] * 100, 0, ' %')}",
                     f"{cell(None if mf['host_busy_median'] is None else mf['host_busy_median'] * 100, 0, ' %')}"
                     f" / {cell(None if mf['host_busy_max'] is None else mf['host_busy_max'] * 100, 0, ' %')}"
                     if mf else "n/a", "", ""))
        def cores(m, key):
            return (f"{cell(m[f'cpu_{key}_mean'], 2)} / {cell(m[f'cpu_{key}_max'], 2)}"
                    if m and m.get(f"cpu_{key}_mean") is not None else "n/a")
        rows.append(("CPU cores used during the load, mean / max: our app containers",
                     cores(ma, "our_containers"), cores(mf, "our_containers"), "", ""))
        rows.append(("… agent + balancer + load generator + redis", cores(ma, "our_procs"),
                     cores(mf, "our_procs"), "", ""))
        rows.append(("… **not ours**: other containers + everything else (dockerd, other "
                     "sessions' work, kernel)", cores(ma, "others"), cores(mf, "others"),
                     "≈ 0 for clean figures", ""))
        rows.append(("seconds with `host_saturated` true", str(ma["host_saturated_s"]),
                     str(mf["host_saturated_s"]) if mf else "n/a", "", ""))
        rows.append(("load generator lateness p99 / max (scheduled → sent)",
                     f"{cell(ma['lateness_p99'], 1)} / {cell(ma['lateness_max'], 1)} ms",
                     f"{cell(mf['lateness_p99'], 1)} / {cell(mf['lateness_max'], 1)} ms"
                     if mf else "n/a", "", ""))
    if not ma and mf:  # --only fixed: the reference alone
        rows.append((f"p99 / p50 of requests started in [step + {a.p99_from:.0f} s, end of load)",
                     "not run", f"{cell(mf['p99_win'], 0, ' ms')} / {cell(mf['p50_win'], 0, ' ms')}",
                     "", ""))
        rows.append(("p99 / max over the whole load step", "not run",
                     f"{cell(mf['p99_load'], 0, ' ms')} / {cell(mf['max_load'], 0, ' ms')}", "", ""))
        rows.append(("errors", "not run", str(mf["errors_total"]), "", ""))
    L.append("| metric | autoscaled | fixed pool | target | met |")
    L.append("|---|---|---|---|---|")
    for r in rows:
        L.append("| " + " | ".join(r) + " |")
    L.append("")
    for label, m in (("autoscaled", ma), ("fixed pool", mf)):
        if m and m["error_kinds"]:
            L.append(f"Errors of the {label} run by kind: " + ", ".join(
                f"{k} × {v}" for k, v in sorted(m["error_kinds"].items(), key=lambda kv: -kv[1])))
            L.append("")
    def natural(k):
        return (0, int(k)) if str(k).isdigit() else (1, str(k))
    for label, m in (("autoscaled", ma), ("fixed pool", mf)):
        if m and m["served_by"]:
            L.append(f"Requests of the whole load step per container ({label}; containers "
                     "numbered as the agent names them, `…-app-N`): " + ", ".join(
                         f"#{k} {v}" for k, v in sorted(m["served_by"].items(),
                                                         key=lambda kv: natural(kv[0]))))
            L.append("")
            L.append(f"Requests started in [step + {a.p99_from:.0f} s, end of load) per "
                     f"container ({label}): " + ", ".join(
                         f"#{k}: {n} req, p50 {cell(p50, 0)} / p99 {cell(p99, 0)} ms"
                         for k, (n, p50, p99) in sorted(m["win_by_container"].items(),
                                                        key=lambda kv: natural(kv[0]))))
            L.append("")
    if png_ok:
        L.append(f"![pool size and latency over time]({os.path.basename(a.png)})")
        L.append("")

    if auto:
        L.append("## The autoscaled run, second by second")
        L.append("")
        L.append("Every second from the step to +40 s, then every 5th second. Latencies are over "
                 "the requests *completed* in that second (about 37 per second at full rate: p99 "
                 "≈ the slowest); errors likewise by completion; `rate` = requests sent in that "
                 "second; `in flight` = the generator's requests not answered yet.")
        L.append("")
        L.append("| t (s) | active | serving | desired | containers | avg / min score | "
                 "avg CPU / avail. sub-score | p50 ms | p99 ms | errors | rate | in flight | "
                 "host CPU (agent) | not ours, cores |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in auto_rows:
            t = r["t"]
            if not (-3 <= t <= 40 or t % 5 == 0):
                continue
            busy = r["host_cpu_busy"]
            oth = (None if r["cpu_other_containers"] is None or r["cpu_rest"] is None
                   else r["cpu_other_containers"] + r["cpu_rest"])
            L.append(f"| {t} | {fmt(r['active'])} | {fmt(r['serving'])} | {fmt(r['desired'])} | "
                     f"{fmt(r['containers'])} | {cell(r['avg_score'], 0)} / "
                     f"{cell(r['min_score'], 0)} | {cell(r['avg_cpu_score'], 0)} / "
                     f"{cell(r['avg_availability_score'], 0)} | {cell(r['p50_ms'], 0)} | "
                     f"{cell(r['p99_ms'], 0)} | {r['errors']} | {r['rate']} | "
                     f"{fmt(r['client_in_flight'])} | "
                     f"{cell(None if busy is None else busy * 100, 0, ' %')} | {cell(oth, 2)} |")
        L.append("")

        L.append("## The agent's decisions (autoscaled run)")
        L.append("")
        L.append("Scale and host events from the agent's `/events`, times relative to the step; "
                 "the reason is the agent's own, the inputs are from the event's details.")
        L.append("")
        L.append("| t (s) | kind | reason | inputs |")
        L.append("|---:|---|---|---|")
        for t, e in rel_events(auto, {"scale_up", "scale_down", "scale_manual",
                                      "host_saturated", "host_recovered"}):
            L.append(f"| {t:+.1f} | {e['kind']} | {e.get('reason', '').replace('|', '/')} | "
                     f"{decision_inputs(e).replace('|', '/')} |")
        L.append("")
        life = rel_events(auto, {"container_started", "container_ready", "container_sundown",
                                 "container_drained", "drain_timeout", "container_removed",
                                 "container_replaced", "container_vanished"})
        if life:
            L.append("Container lifecycle (same clock): " + "; ".join(
                f"{t:+.1f} s {e['kind'].replace('container_', '')} {short_name(e.get('details'))}"
                .rstrip() for t, e in life))
            L.append("")
        holds = holds_from_log(a.auto_log, auto["wall_step_ms"])
        if holds:
            L.append("Scale checks from the agent's debug log (`scaling: …`, 1-s timestamps; "
                     "checks that differ only in their figures are folded, the last one is "
                     "shown), from the step on:")
            L.append("")
            for t0, t1, n, text in holds:
                if t1 < -2:
                    continue
                span = f"{t0:+.0f} s" if n == 1 else f"{t0:+.0f} … {t1:+.0f} s ({n}×)"
                L.append(f"- {span}: {text}")
            L.append("")

    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            L.append(f.read().rstrip())
        L.append("")
    L.append("## Environment")
    L.append("")
    for k, v in meta.items():
        if k in ("load", "needed_formula"):
            continue
        L.append(f"- **{k}**: {v}")
    L.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(L))

    # console summary
    if ma:
        log(f"capacity serving after {fmt(ma['t_capacity'], 1)} s (target ≤ 10), peak active "
            f"{ma['peak_active']} (target ≤ {needed + 1}), p99 after +{a.p99_from:.0f} s "
            f"{fmt(ma['p99_win'], 0)} ms vs fixed {fmt(mf['p99_win'] if mf else None, 0)} ms "
            f"(ratio {fmt(ratio, 2)}, target ≤ 1.5), shrink {fmt(ma['t_shrunk'], 0)} s, errors "
            f"{ma['errors_total']} ({fmt(ma['errors_shrinking'])} while shrinking)")


# ------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("free-ports")
    sp.add_argument("n", type=int)
    sp = sub.add_parser("wait-ready")
    sp.add_argument("--agent", required=True, help="http://127.0.0.1:PORT of the agent API")
    sp.add_argument("--balancer-admin", required=True)
    sp.add_argument("--agent-pid", type=int, default=0)
    sp.add_argument("--balancer-pid", type=int, default=0)
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--timeout", type=float, default=180)
    sp = sub.add_parser("run")
    sp.add_argument("--label", required=True)
    sp.add_argument("--agent", required=True)
    sp.add_argument("--balancer", required=True, help="http://127.0.0.1:PORT (proxy)")
    sp.add_argument("--balancer-admin", required=True)
    sp.add_argument("--agent-pid", type=int, default=0)
    sp.add_argument("--balancer-pid", type=int, default=0)
    sp.add_argument("--redis-pid", type=int, default=0)
    sp.add_argument("--rate", type=float, required=True)
    sp.add_argument("--light-rate", type=float, required=True)
    sp.add_argument("--cpu-ms", type=int, required=True)
    sp.add_argument("--warmup-s", type=float, default=10)
    sp.add_argument("--load-s", type=float, default=90)
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    sp.add_argument("--default", type=int, default=1, help="DEFAULT_CONTAINER of the agent")
    sp.add_argument("--until-default", action="store_true",
                    help="after the load, run until the pool is back at --default")
    sp.add_argument("--shrink-timeout", type=float, default=150)
    sp.add_argument("--min-tail", type=float, default=10)
    sp.add_argument("--after", type=float, default=5,
                    help="seconds of light load after the SUNDOWN containers are gone")
    sp.add_argument("--tail", type=float, default=15, help="tail without --until-default")
    sp.add_argument("--out", required=True)
    sp = sub.add_parser("quiet")
    sp.add_argument("--max-cores", type=float, default=0.3)
    sp.add_argument("--timeout", type=float, default=180)
    sp = sub.add_parser("report")
    sp.add_argument("--meta", required=True)
    sp.add_argument("--auto")
    sp.add_argument("--fixed")
    sp.add_argument("--auto-log")
    sp.add_argument("--needed", type=int, required=True)
    sp.add_argument("--p99-from", type=float, default=30)
    sp.add_argument("--low-threshold", type=float, default=80,
                    help="the agent's LOW_LOAD_THRESHOLD")
    sp.add_argument("--notes")
    sp.add_argument("--md", required=True)
    sp.add_argument("--csv", required=True)
    sp.add_argument("--png")
    a = p.parse_args()
    if a.cmd == "free-ports":
        bench_agent.free_ports(a.n)
    elif a.cmd == "wait-ready":
        cmd_wait_ready(a)
    elif a.cmd == "run":
        cmd_run(a)
    elif a.cmd == "quiet":
        cmd_quiet(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
