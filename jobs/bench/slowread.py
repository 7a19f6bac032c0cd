#!/usr/bin/env python3
"""Slow readers against a proxy, with the proxy's memory sampled (jobs/bench-slowread.sh).

Sub-commands: `run` (the load; prints one JSON object) and `record` (appends a run's row to
<out>/bench-slowread.csv and rewrites <out>/bench-slowread.md from the whole CSV).

N clients each send PIPELINED requests for a large response and then read it slowly
(CHUNK bytes every INTERVAL seconds, small receive buffers), for HOLD seconds; then every
client leaves and the proxy's RSS is followed for AFTER seconds. Meanwhile a normal client
sends small requests in a loop and counts successes. Standard library only.

Prints one JSON object: idle, peak and after-burst RSS (KiB), the RSS when the clients left
and at the end, normal-client success counts, and how many slow clients connected.
"""

import argparse
import asyncio
import csv
import json
import os
import socket
import sys
import time


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def slow_client(host, port, request, chunk, interval, rcvbuf, stop, stats):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
        stats["connected"] += 1
        await loop.sock_sendall(sock, request)
        while not stop.is_set():
            data = await asyncio.wait_for(loop.sock_recv(sock, chunk), 30)
            if not data:
                stats["closed_by_proxy"] += 1
                return
            stats["bytes"] += len(data)
            await asyncio.sleep(interval)
    except (OSError, asyncio.TimeoutError):
        stats["errors"] += 1
    finally:
        sock.close()


async def normal_client(host, port, path, stop, stats):
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        stats["normal_sent"] += 1
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            w.write(request)
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n"), 5)
            if head.split()[1:2] == [b"200"]:
                stats["normal_ok"] += 1
            w.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.05)


async def main(a):
    stats = dict(connected=0, errors=0, closed_by_proxy=0, bytes=0, normal_sent=0, normal_ok=0)
    samples = []
    t0 = time.monotonic()

    def sample(phase):
        v = rss_kib(a.pid)
        if v is not None:
            samples.append((round(time.monotonic() - t0, 2), phase, v))
        return v

    idle = sample("idle")
    request = (f"GET {a.path} HTTP/1.1\r\nHost: bench\r\n\r\n" * a.pipelined).encode()
    stop_slow = asyncio.Event()
    stop_normal = asyncio.Event()
    normal = asyncio.create_task(normal_client(a.host, a.port, a.normal_path, stop_normal, stats))
    clients = []
    for i in range(a.clients):
        clients.append(asyncio.create_task(
            slow_client(a.host, a.port, request, a.chunk, a.interval, a.rcvbuf, stop_slow, stats)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    end_hold = time.monotonic() + a.hold
    while time.monotonic() < end_hold:
        sample("hold")
        await asyncio.sleep(0.5)
    at_leave = sample("leave")
    stop_slow.set()
    await asyncio.gather(*clients, return_exceptions=True)
    end_after = time.monotonic() + a.after
    while time.monotonic() < end_after:
        sample("after")
        await asyncio.sleep(0.5)
    stop_normal.set()
    await normal
    end = sample("end")
    peak = max(v for _, _, v in samples)
    if a.timeline:
        with open(a.timeline, "w") as f:
            f.write("t_s,phase,rss_kib\n")
            for t, phase, v in samples:
                f.write(f"{t},{phase},{v}\n")
    print(json.dumps(dict(idle_kib=idle, peak_kib=peak, at_leave_kib=at_leave, end_kib=end,
                          after_s=a.after, **stats)))


FIELDS = ["date_utc", "label", "balancer_env", "clients", "pipelined", "idle_mib", "peak_mib",
          "at_leave_mib", "after_mib", "after_s", "normal_ok", "normal_sent", "slow_connected",
          "slow_errors"]


def record(a):
    r = json.loads(a.result)
    path = os.path.join(a.out, "bench-slowread.csv")

    def mib(k):
        return round(r[k] / 1024, 1)

    row = dict(date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), label=a.label,
               balancer_env=a.env or "-", clients=a.clients, pipelined=a.pipelined,
               idle_mib=mib("idle_kib"), peak_mib=mib("peak_kib"),
               at_leave_mib=mib("at_leave_kib"), after_mib=mib("end_kib"), after_s=r["after_s"],
               normal_ok=r["normal_ok"], normal_sent=r["normal_sent"],
               slow_connected=r["connected"], slow_errors=r["errors"])
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    report(a.out)


def report(out):
    with open(os.path.join(out, "bench-slowread.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(out, "bench-slowread.md"), "w") as f:
        f.write("# Balancer memory under slow readers\n\nWritten by `jobs/bench-slowread.sh` "
                "(one row per run, newest last; `python3 jobs/bench/slowread.py report DIR` "
                "rewrites it from the CSV). Each slow client pipelines requests for a 1 MiB "
                "response and reads 1 KiB every 0.5 s with a 4 KiB receive buffer; RSS is the "
                "balancer's `VmRSS`; *after* is the RSS the given seconds after every slow client "
                "left; *normal* counts a small GET loop that ran meanwhile.\n\n")
        f.write("| date (UTC) | label | balancer env | clients × pipelined | idle MiB | peak MiB "
                "| at leave MiB | after MiB | normal ok | slow connected |\n")
        f.write("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n")
        for x in rows:
            f.write(f"| {x['date_utc']} | {x['label']} | {x['balancer_env']} | "
                    f"{x['clients']} × {x['pipelined']} | {x['idle_mib']} | {x['peak_mib']} | "
                    f"{x['at_leave_mib']} | {x['after_mib']} (+{x['after_s']} s) | "
                    f"{x['normal_ok']}/{x['normal_sent']} | {x['slow_connected']} |\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("run")
    rp.add_argument("--host", default="127.0.0.1")
    rp.add_argument("--port", type=int, required=True)
    rp.add_argument("--pid", type=int, required=True, help="the proxy's pid (RSS from /proc)")
    rp.add_argument("--path", default="/big")
    rp.add_argument("--normal-path", default="/")
    rp.add_argument("--clients", type=int, default=1000)
    rp.add_argument("--pipelined", type=int, default=3)
    rp.add_argument("--chunk", type=int, default=1024, help="bytes read per wake-up")
    rp.add_argument("--interval", type=float, default=0.5, help="seconds between reads")
    rp.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each slow client")
    rp.add_argument("--hold", type=float, default=20)
    rp.add_argument("--after", type=float, default=30)
    rp.add_argument("--timeline", help="write the RSS samples as CSV here")
    cp = sub.add_parser("record")
    cp.add_argument("--out", required=True)
    cp.add_argument("--label", required=True)
    cp.add_argument("--env", default="")
    cp.add_argument("--clients", type=int, required=True)
    cp.add_argument("--pipelined", type=int, required=True)
    cp.add_argument("--result", required=True, help="the JSON printed by `run`")
    sp = sub.add_parser("report")
    sp.add_argument("out")
    args = p.parse_args()
    if args.cmd == "record":
        record(args)
    elif args.cmd == "report":
        report(args.out)
    else:
        try:
            asyncio.run(main(args))
        except KeyboardInterrupt:
            sys.exit(130)
