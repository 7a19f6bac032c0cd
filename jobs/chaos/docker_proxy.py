#!/usr/bin/env python3
"""A unix-socket proxy in front of the Docker engine, with a switch (jobs/chaos.sh).

The chaos suite points the agent's DOCKER_SOCKET at LISTEN, so that it can make the engine
unreachable for the agent alone (stopping the host's engine would stop everything). The
socket file is created once and never re-created: Compose bind-mounts it into the agent's
container by inode, so a new file would not be seen there.

Usage: docker_proxy.py LISTEN UPSTREAM MODE_FILE

On SIGHUP the proxy reads its mode from MODE_FILE (one word):
  up       forward every connection to UPSTREAM (the engine's socket)
  closing  drop the live connections; accept new ones and close them at once
           (the engine is gone: every request fails at once)
  hanging  drop the live connections; accept new ones and hold them open without
           answering until the mode changes (a hung engine: requests time out)
SIGTERM/SIGINT: exit, removing LISTEN. One line per mode change on stderr, with counts.
"""
import asyncio
import os
import signal
import sys
import time

MODES = ("up", "closing", "hanging")


class Proxy:
    def __init__(self, upstream, mode_file):
        self.upstream = upstream
        self.mode_file = mode_file
        self.mode = "up"
        self.live = set()  # transports of forwarded connections (both ends)
        self.held = {}  # transport -> (reader, writer) of clients held open while hanging
        self.counts = {"forwarded": 0, "closed": 0, "held": 0}

    def log(self, msg):
        stamp = time.strftime("%H:%M:%S", time.localtime())
        print(f"[docker-proxy {stamp}] {msg}", file=sys.stderr, flush=True)

    def reload(self):
        try:
            with open(self.mode_file, encoding="utf-8") as f:
                mode = f.read().strip()
        except OSError as e:
            self.log(f"cannot read {self.mode_file}: {e}")
            return
        if mode not in MODES:
            self.log(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
            return
        if mode != "up":
            for t in list(self.live):
                t.abort()
            self.live.clear()
        if mode != "hanging":
            for t in list(self.held):
                t.abort()
            self.held.clear()
        self.log(f"mode {self.mode} -> {mode} ({', '.join(f'{k} {v}' for k, v in self.counts.items())})")
        self.mode = mode

    async def pipe(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            writer.transport.abort()

    async def handle(self, reader, writer):
        if self.mode == "closing":
            self.counts["closed"] += 1
            writer.transport.abort()
            return
        if self.mode == "hanging":
            self.counts["held"] += 1
            # Keep the stream objects alive: a collected StreamWriter may close its transport.
            self.held[writer.transport] = (reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError as e:
            self.log(f"cannot reach {self.upstream}: {e}")
            writer.transport.abort()
            return
        self.counts["forwarded"] += 1
        ends = (writer.transport, up_writer.transport)
        self.live.update(ends)
        try:
            await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))
        finally:
            self.live.difference_update(ends)


async def main(listen, upstream, mode_file):
    proxy = Proxy(upstream, mode_file)
    if os.path.exists(listen):
        os.unlink(listen)
    server = await asyncio.start_unix_server(proxy.handle, path=listen)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    proxy.log(f"listening on {listen}, forwarding to {upstream}")
    await stop.wait()
    server.close()
    for t in list(proxy.live) + list(proxy.held):
        t.abort()
    try:
        os.unlink(listen)
    except OSError:
        pass
    proxy.log(f"stopped ({', '.join(f'{k} {v}' for k, v in proxy.counts.items())})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
