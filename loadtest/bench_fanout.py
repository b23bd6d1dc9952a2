#!/usr/bin/env python
"""bench_fanout: one giftd process, one room, N viewers, a gift storm; vs the raw write floor.

A benchmark, not a test. One run, one machine, two phases side by side:

  (a) giftd: a real `giftd serve` subprocess on a benchmark-owned embedded
      Valkey + Postgres. N viewers join one room over real WebSockets from
      several load-generator processes (multiprocessing, ~1,000 sockets each,
      a raw asyncio protocol: HTTP upgrade, then minimal frame parsing). A few
      gifter connections (the `websockets` client, in this process) send roses
      at a fixed total rate through giftd's real send path. Measured over a
      window after a warm-up:
        - frames written/s: giftd's /metrics `giftd_frames_written` delta, and
          tick frames counted at the viewers;
        - logical gift deliveries/s: events received, summed over viewers;
        - send->receipt p50/p99: the send time (wall clock, us) travels in the
          gift id and comes back as the event's `client_id`; the receiving
          viewer subtracts it from its own clock (same machine). Also
          debit->receipt from the event's `ts_ms` (Valkey's clock, ms);
        - viewers dropped (close 4008, or any close) and lost / duplicated
          events: EVERY viewer checks each tick frame's seq against the count
          of events in it and its previous frame's seq (a lost or repeated
          frame shows as a gap or an overlap), and at the end that it reached
          the room's final seq; sampled viewers (1 in --sample-every) also
          parse every event's seq (contiguity inside a frame) and the latency;
        - server CPU seconds per delivery and per frame (/proc, giftd's own
          process) and server RSS per connection (psutil).
  (b) the raw asyncio transport-write floor: a minimal uvloop server (a
      subprocess of this file) that accepts the same WebSocket handshake and
      join, and once per tick builds ONE frame of the same size and event
      count as giftd's average tick frame in (a) and writes it to every
      viewer's transport (with the same get_write_buffer_size() budget check
      giftd does). Same viewers, same tick, same load generator. Its frames/s
      per core is the floor giftd is compared with.

Run:
    .venv/bin/python loadtest/bench_fanout.py           # 2,000 viewers x 20 s, < 2 min
    .venv/bin/python loadtest/bench_fanout.py --full    # 5,000 viewers x 60 s
    .venv/bin/python loadtest/bench_fanout.py --viewers 3000 --rate 2000 --seconds 30

Everything runs on loopback, bounded in time and count. Valkey, Postgres,
giftd, the floor server and the load generator share this machine's cores;
the report says how many each used. Ctrl-C / SIGTERM stops everything this
run started (load-generator processes, giftd, the floor server, Postgres,
Valkey) and removes the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import websockets  # noqa: E402

# The colleague's benchmark: same set-up path, same machine-facts header, same
# CPU accounting from /proc, same lifecycle object for giftd/Valkey/Postgres.
from bench_spine import (  # noqa: E402
    LIMITS_LIFTED,
    OWNED,
    ROOM,
    SECRET,
    _machine_busy_s,
    _proc_table,
    _tree_cpu,
    log,
    machine_facts,
    scrape_metrics,
    setup_accounts,
    start_profile,
    summarize_profile,
)
from procpool import Handler, ProcessPool, die_with_parent, raise_nofile, run_child  # noqa: E402
from rawws import FrameReader, upgrade_request  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from server import keys  # noqa: E402
from server.auth import Principal, issue_token  # noqa: E402
from server.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402

GIFT = "rose"  # 1 coin: never urgent, so the tick decides when it goes out
GIFTD_START_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 180  # all viewers connected and joined, per phase
TAIL_TIMEOUT_S = 15  # after the storm: every viewer must reach the room's final seq
CONNECTS_IN_FLIGHT = 64  # handshakes in flight per load-generator process
FDS_PER_PROC = 1000  # viewers per load-generator process
LAT_BUCKET_US = 100  # latency histogram resolution
ANOMALIES_KEPT = 20  # per load-generator process, for the report
VIEWER_ACCOUNTS = 8  # viewer connections share these accounts (argon2 makes accounts slow)
JOIN_TRIES_MAX = 10  # a join answered `unavailable` is retried (docs/protocol.md) this often
GIFTER_WINDOW = 64  # sends in flight per gifter connection (the server allows 64)
OUTBOUND_BYTES_MAX = 1 << 20  # giftd's default budget; the floor server applies the same check

# --------------------------------------------------------------------------
# WebSocket framing, minimal (RFC 6455)
# --------------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_server_frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked server->client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def ws_client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client->server frame. The mask key is zero (legal; the XOR is a no-op)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


JOIN_FRAME = ws_client_frame(orjson.dumps({"type": "join", "room": ROOM}))
CLOSE_NORMAL_FRAME = ws_client_frame((1000).to_bytes(2, "big"), 8)

TICK_PREFIX = b'{"type":"tick"'
EVENT_MARK = b'{"seq":'  # every room event starts with it (gifts/lua/_room_event.lua)
EVENT_RE = re.compile(rb'\{"seq":(\d+),"ts_ms":(\d+),')
SENT_RE = re.compile(rb'"client_id":"[^"]*-t(\d+)"')

# --------------------------------------------------------------------------
# the load generator: viewer processes
# --------------------------------------------------------------------------


class Viewer(FrameReader, asyncio.Protocol):
    """One viewer socket: HTTP upgrade, join, then count and check tick frames."""

    __slots__ = ("buf", "close_code", "dups", "first_seq", "gaps", "host", "join_tries",
                 "joined", "last_seq", "mismatch", "need", "path", "pre_join", "sample",
                 "state", "t", "w")

    def __init__(self, w: LoadGen, host: str, path: str, sample: bool) -> None:
        self.w = w
        self.host = host
        self.path = path
        self.sample = sample
        self.t: asyncio.Transport | None = None
        self.state = 0  # 0 handshake, 1 open, 2 closed
        self.buf = bytearray()
        self.need = 0
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_seq = -1
        self.first_seq = -1
        self.gaps = 0  # events skipped
        self.dups = 0  # events received twice
        self.mismatch = 0  # event-less tick whose seq is not the previous one
        self.pre_join = 0  # tick frames before `joined`
        self.close_code: int | None = None
        self.join_tries = 0

    # -- asyncio callbacks ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        self.t.write(upgrade_request(self.host, self.path, "giftd.json"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != 2:
            self.state = 2
            if self.close_code is None:
                self.close_code = 1006  # no close frame: abnormal closure
            self.w.closed[self.close_code] += 1
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed before joined ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        if self.state == 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._fail("handshake answer too long")
                return
            head = bytes(self.buf[:end])
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail("handshake refused: " + head.split(b"\r\n")[0].decode("latin1"))
                return
            self.state = 1
            self.t.write(JOIN_FRAME)  # type: ignore[union-attr]
            if not data:
                return
        elif self.state == 2:
            return
        self._feed(data, time.time())

    # -- frames -----------------------------------------------------------
    def _frame(self, op: int, d: bytes | bytearray, s: int, e: int, now: float) -> None:
        w = self.w
        if op == 1 or op == 2:
            if d.startswith(TICK_PREFIX, s):
                w.frames += 1
                w.bytes += e - s
                i = d.find(b'"seq":', s + 14, e)
                seq = int(d[i + 6:d.find(b",", i, e)])
                k = d.count(EVENT_MARK, s, e)
                last = self.last_seq
                if last < 0:
                    self.pre_join += 1
                    w.note(f"tick seq {seq} before joined")
                    return
                if k and seq - k != last:
                    k += merged_extra(d, s, e)  # merged events list their member seqs
                if k:
                    first = seq - k + 1
                    if first != last + 1:
                        if first > last + 1:
                            self.gaps += first - last - 1
                        else:
                            self.dups += min(k, last - first + 1)
                        w.note(f"frame with events {first}..{seq} after seq {last}")
                    if seq > last:
                        self.last_seq = seq
                    w.events += k
                    if self.sample and w.recording:
                        w.inspect(bytes(d[s:e]), now)
                elif seq != last:
                    self.mismatch += 1
                    w.note(f"event-less tick at seq {seq} after seq {last}")
                return
            msg = orjson.loads(d[s:e])
            kind = msg.get("type")
            if kind in ("joined", "resync"):
                self.last_seq = self.first_seq = int(msg["seq"])
                if not self.joined.done():
                    self.joined.set_result(None)
            elif kind == "error":
                if (not self.joined.done() and msg.get("code") == "unavailable"
                        and self.join_tries < JOIN_TRIES_MAX):
                    # the documented answer: retry the join (the room could not be opened)
                    self.join_tries += 1
                    w.join_retries += 1
                    asyncio.get_running_loop().call_later(0.05 * self.join_tries, self._rejoin)
                    return
                w.note(f"error: {msg}")
                if not self.joined.done():
                    self._fail(f"join refused: {msg}")
            else:
                w.other[str(kind)] += 1
        elif op == 8:
            code = int.from_bytes(d[s:s + 2], "big") if e - s >= 2 else 1005
            self.close_code = code
            self.state = 2
            w.closed[code] += 1
            if self.t is not None:
                self.t.write(ws_client_frame(bytes(d[s:s + 2]), 8))
                self.t.close()
            if not self.joined.done():
                self.joined.set_exception(ConnectionError(f"closed {code} before joined"))
        elif op == 9:
            if self.t is not None:
                self.t.write(ws_client_frame(bytes(d[s:e]), 10))  # pong

    def _rejoin(self) -> None:
        if self.state == 1 and self.t is not None:
            self.t.write(JOIN_FRAME)

    def _fail(self, why: str) -> None:
        self.w.note(why)
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(why))
        if self.t is not None:
            self.t.abort()

    def close(self) -> None:
        if self.state == 1 and self.t is not None:
            self.state = 2
            self.t.write(CLOSE_NORMAL_FRAME)
            self.t.close()


def merged_extra(d: bytes | bytearray, s: int, e: int) -> int:
    """Deliveries beyond one per event: a merged event lists its members' seqs."""
    extra = 0
    i = d.find(b'"seqs":[', s, e)
    while i >= 0:
        j = d.find(b"]", i, e)
        extra += d.count(b",", i, j)  # members - 1
        i = d.find(b'"seqs":[', j, e)
    return extra


class LoadGen:
    """One load-generator process: many viewers on one event loop, driven over a pipe."""

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []
        self.frames = 0
        self.bytes = 0
        self.events = 0
        self.in_frame_bad = 0
        self.recording = False
        self.lat_hist: Counter[int] = Counter()
        self.debit_hist: Counter[int] = Counter()
        self.closed: Counter[int] = Counter()
        self.other: Counter[str] = Counter()
        self.anomalies: list[str] = []
        self.anomaly_n = 0
        self.join_retries = 0
        self.merged_frames = 0  # sampled frames with merged events
        self.merged_deliveries = 0  # deliveries inside merged events (sampled viewers)
        self.sampled_deliveries = 0

    def inspect(self, payload: bytes, now: float) -> None:
        """Sampled viewers: the frame's exact set of seqs (contiguous, no repeats) and latency.

        send->receipt comes from the send time in each unmerged gift's client_id
        (a merged event drops its members' client ids); debit->receipt from
        `ts_ms`, or for a merged event from each member's event id (<ms>-<n>).
        """
        now_ms = now * 1000
        if b'"seqs":[' in payload:  # merged events: parse the frame
            self.merged_frames += 1
            seqs: list[int] = []
            for ev in orjson.loads(payload)["events"]:
                if "seqs" in ev:
                    seqs += ev["seqs"]
                    self.merged_deliveries += len(ev["seqs"])
                    for eid in ev.get("event_ids", ()):
                        ms = int(eid.split("-", 1)[0])
                        self.debit_hist[int((now_ms - ms) * 1000 // LAT_BUCKET_US)] += 1
                    continue
                seqs.append(int(ev["seq"]))
                self.debit_hist[int((now_ms - int(ev["ts_ms"])) * 1000 // LAT_BUCKET_US)] += 1
                m = SENT_RE.search(b'"client_id":"%s"' % str(ev.get("client_id", "")).encode())
                if m:
                    self.lat_hist[int((now * 1e6 - int(m.group(1))) // LAT_BUCKET_US)] += 1
        else:
            seqs = []
            for s, ts in EVENT_RE.findall(payload):
                seqs.append(int(s))
                self.debit_hist[int((now_ms - int(ts)) * 1000 // LAT_BUCKET_US)] += 1
            now_us = now * 1e6
            for s in SENT_RE.findall(payload):
                self.lat_hist[int((now_us - int(s)) // LAT_BUCKET_US)] += 1
        self.sampled_deliveries += len(seqs)
        if seqs and (len(set(seqs)) != len(seqs) or max(seqs) - min(seqs) + 1 != len(seqs)):
            self.in_frame_bad += 1
            self.note(f"inside a frame: seqs {sorted(seqs)[:5]}... not one contiguous run")

    def note(self, what: str) -> None:
        self.anomaly_n += 1
        if len(self.anomalies) < ANOMALIES_KEPT:
            self.anomalies.append(what)

    async def connect(self, host: str, port: int, tokens: list[str], count: int,
                      first_index: int, sample_every: int) -> dict[str, Any]:
        paths = [f"/ws?token={tokens[(first_index + i) % len(tokens)]}" if tokens else "/ws"
                 for i in range(count)]
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        errors: Counter[str] = Counter()
        t0 = time.monotonic()

        async def one(i: int, path: str) -> None:
            async with sem:
                v = Viewer(self, f"{host}:{port}", path, (first_index + i) % sample_every == 0)
                try:
                    await loop.create_connection(lambda: v, host, port)
                    await asyncio.wait_for(v.joined, 30)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    if v.t is not None:
                        v.t.abort()
                    return
                self.viewers.append(v)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
        return {"joined": len(self.viewers), "errors": dict(errors),
                "join_retries": self.join_retries,
                "seconds": time.monotonic() - t0}

    def snap(self) -> dict[str, Any]:
        open_v = [v for v in self.viewers if v.state == 1]
        return {
            "t": time.monotonic(),
            "frames": self.frames, "bytes": self.bytes, "events": self.events,
            "open": len(open_v),
            "min_seq": min((v.last_seq for v in open_v), default=-1),
            "max_seq": max((v.last_seq for v in self.viewers), default=-1),
            "cpu": sum(os.times()[:2]),
        }

    def final(self) -> dict[str, Any]:
        vs = self.viewers
        return {
            **self.snap(),
            "gaps": sum(v.gaps for v in vs),
            "dups": sum(v.dups for v in vs),
            "mismatch": sum(v.mismatch for v in vs),
            "pre_join": sum(v.pre_join for v in vs),
            "in_frame_bad": self.in_frame_bad,
            "merged_frames": self.merged_frames,
            "merged_deliveries": self.merged_deliveries,
            "sampled_deliveries": self.sampled_deliveries,
            "viewers_with_gaps": sum(1 for v in vs if v.gaps),
            "viewers_with_dups": sum(1 for v in vs if v.dups),
            "sampled": sum(1 for v in vs if v.sample),
            "last_seqs": Counter(v.last_seq for v in vs),
            "closed": dict(self.closed),
            "other": dict(self.other),
            "lat_hist": dict(self.lat_hist),
            "debit_hist": dict(self.debit_hist),
            "anomalies": self.anomalies,
            "anomaly_n": self.anomaly_n,
        }

    async def close_all(self) -> None:
        for v in self.viewers:
            v.close()
        await asyncio.sleep(0.5)
        for v in self.viewers:
            if v.t is not None and not v.t.is_closing():
                v.t.abort()

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def loadgen_handler(g: LoadGen) -> Handler:
    """A viewer load generator's commands (bench.py adds its own on top)."""
    async def handle(cmd: str, args: list[Any]) -> Any:
        if cmd == "connect":
            return await g.connect(*args)
        if cmd == "snap":
            return g.snap()
        if cmd == "record":
            g.recording = bool(args[0])
            return g.snap()
        if cmd == "final":
            return g.final()
        if cmd == "close":
            await g.close_all()
            g.reset()
            return True
        raise ValueError(f"unknown load-generator command {cmd!r}")
    return handle


def loadgen_process(pipe: Any) -> None:
    run_child(pipe, lambda: loadgen_handler(LoadGen()))


class LoadGens(ProcessPool):
    """The parent's handle on the load-generator processes."""

    def __init__(self, n: int) -> None:
        # forked first thing: nothing of ours to inherit yet
        super().__init__(n, loadgen_process)


# --------------------------------------------------------------------------
# (b) the raw floor server: `bench_fanout.py --floor-server ...`
# --------------------------------------------------------------------------


class FloorConn(asyncio.Protocol):
    __slots__ = ("buf", "srv", "state", "t")

    def __init__(self, srv: FloorServer) -> None:
        self.srv = srv
        self.state = 0
        self.buf = bytearray()
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.state == 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = re.search(rb"(?i)\r\nsec-websocket-key:\s*(\S+)", bytes(self.buf[:end]))
            if m is None:
                self.t.close()  # type: ignore[union-attr]
                return
            acc = base64.b64encode(hashlib.sha1(m.group(1) + WS_GUID).digest())
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"  # type: ignore[union-attr]
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc +
                         b"\r\nSec-WebSocket-Protocol: giftd.json\r\n\r\n")
            self.state = 1
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
            if not data:
                return
        if self.state == 1:  # the join: answer, then become a member (no tick before it)
            self.state = 2
            joined = orjson.dumps({"type": "joined", "room": ROOM, "seq": self.srv.seq})
            self.t.write(ws_server_frame(joined))  # type: ignore[union-attr]
            self.srv.conns.add(self)
            return
        if data and (data[0] & 0x0F) == 8:  # a close from the viewer
            self.srv.conns.discard(self)
            self.t.close()  # type: ignore[union-attr]


class FloorServer:
    """Per tick: ONE prebuilt frame (giftd's average size and event count) to every viewer."""

    def __init__(self, tick_ms: int, events: int, event_bytes: int) -> None:
        self.tick_s = tick_ms / 1000
        self.events = max(1, events)
        self.event_bytes = event_bytes
        self.conns: set[FloorConn] = set()
        self.seq = 0
        self.frames = 0
        self.bytes = 0
        self.slow = 0
        self.ticks = 0

    def build(self) -> bytes:
        now_ms = int(time.time() * 1000)
        sent_us = int(time.time() * 1e6)
        evs = []
        for _ in range(self.events):
            self.seq += 1
            head = (b'{"seq":%d,"ts_ms":%d,"type":"gift","client_id":"floor-t%d","pad":"'
                    % (self.seq, now_ms, sent_us))
            pad = max(0, self.event_bytes - len(head) - 2)
            evs.append(head + b"x" * pad + b'"}')
        payload = (b'{"type":"tick","room":"' + ROOM.encode() + b'","seq":%d,"events":['
                   % self.seq + b",".join(evs) + b'],"viewers":%d}' % len(self.conns))
        return ws_server_frame(payload)

    def tick(self) -> None:
        self.ticks += 1
        frame = self.build()
        n = len(frame)
        dead = []
        for c in self.conns:
            t = c.t
            if t is None or t.is_closing():
                dead.append(c)
                continue
            if t.get_write_buffer_size() > OUTBOUND_BYTES_MAX:
                self.slow += 1
                dead.append(c)
                t.write(ws_server_frame((4008).to_bytes(2, "big") + b"slow consumer", 8))
                t.close()
                continue
            t.write(frame)
            self.frames += 1
            self.bytes += n
        for c in dead:
            self.conns.discard(c)

    async def run(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FloorConn(self), host, port, backlog=8192)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("READY", flush=True)

        async def ticks() -> None:
            next_at = time.monotonic() + self.tick_s
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                now = time.monotonic()
                next_at = max(next_at + self.tick_s, now)  # no catch-up bursts, as giftd
                if self.conns:
                    self.tick()

        async def stats() -> None:
            while True:
                print(orjson.dumps({"t": time.monotonic(), "frames": self.frames,
                                    "bytes": self.bytes, "conns": len(self.conns),
                                    "slow": self.slow, "ticks": self.ticks}).decode(),
                      flush=True)
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(ticks()), asyncio.create_task(stats())]
        await stop.wait()
        for t in tasks:
            t.cancel()
        server.close()


def floor_server_main(args: argparse.Namespace) -> int:
    die_with_parent()
    raise_nofile()
    import uvloop

    uvloop.run(FloorServer(args.tick_ms, args.events, args.event_bytes).run("127.0.0.1",
                                                                            args.port))
    return 0


class Floor:
    def __init__(self, tmp: Path, tick_ms: int, events: int, event_bytes: int) -> None:
        self.port = free_port()
        self.logf = tmp / "floor.log"
        self.out = open(self.logf, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--floor-server", "--port",
             str(self.port), "--tick-ms", str(tick_ms), "--events", str(events),
             "--event-bytes", str(event_bytes)],
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while b"READY" not in self.logf.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("floor server did not start:\n"
                                   + self.logf.read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        for line in reversed(self.logf.read_bytes().splitlines()):
            if line.startswith(b"{"):
                return dict(orjson.loads(line))
        return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.out.close()


# --------------------------------------------------------------------------
# giftd and the gifters
# --------------------------------------------------------------------------


def start_giftd(tmp: Path, redis_url: str, database_url: str, tick_ms: int,
                flusher: bool, name: str = "giftd") -> str:
    """`giftd serve` as a child process (as bench_spine starts it); its base URL.

    The first one is OWNED.giftd; further ones (another `name`) are OWNED.more_giftd.
    """
    exe = Path(sys.executable).with_name("giftd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_SECRET": SECRET, "GIFTD_PORT": str(port), "GIFTD_HOST": "127.0.0.1",
           "GIFTD_VAR_DIR": str(tmp / f"{name}-var"), "GIFTD_FLUSHER": "1" if flusher else "0",
           "GIFTD_TICK_MS": str(tick_ms), "GIFTD_NODE_ID": name, **LIMITS_LIFTED}
    logf = tmp / f"{name}.log"
    with open(logf, "wb") as out:
        proc = subprocess.Popen([*cmd, "serve", "--log-level", "warning"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if name == "giftd":
        OWNED.giftd = proc
    else:
        OWNED.more_giftd.append(proc)
    deadline = time.monotonic() + GIFTD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"giftd serve exited with {proc.returncode}:\n"
                               + logf.read_text(errors="replace")[-3000:])
        m = re.search(r"giftd is up on (http://\S+?)/?\s", logf.read_text(errors="replace"))
        if m:
            base = m.group(1)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return base
        time.sleep(0.1)
    raise RuntimeError("giftd serve did not come up:\n" + logf.read_text(errors="replace")[-3000:])


class Gifter:
    """A gifter's socket (the `websockets` client): paced sends, acks counted."""

    def __init__(self, idx: int, ws: Any, tag: str) -> None:
        self.idx = idx
        self.ws = ws
        self.prefix = f"{tag}-{idx}-"
        self.n = 0
        self.sem = asyncio.Semaphore(GIFTER_WINDOW)
        self.outcomes: Counter[str] = Counter()
        self.sent = 0
        self.skipped = 0  # sends not made because the gifter fell behind its pace
        self.ticks = 0
        self.closed: int | None = None
        self.max_seq = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                if raw.startswith(TICK_PREFIX):
                    self.ticks += 1
                    continue
                msg = orjson.loads(raw)
                kind = msg.get("type")
                if kind == "ack":
                    self.outcomes[msg["outcome"]] += 1
                    self.max_seq = max(self.max_seq, int(msg.get("seq") or 0))
                    self.sem.release()
                elif kind == "error":
                    self.outcomes["error:" + str(msg.get("code"))] += 1
                    if msg.get("id"):
                        self.sem.release()
        except websockets.ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd else 1006

    async def paced(self, rate: float, stop: asyncio.Event) -> None:
        send, sem, clock = self.ws.send, self.sem, time.perf_counter
        interval = 1.0 / rate
        next_t = clock()
        while not stop.is_set():
            while next_t <= clock() and not stop.is_set():
                await sem.acquire()
                self.n += 1
                # the send time (wall clock, us) rides in the id: the event's client_id
                cid = f"{self.prefix}{self.n}-t{time.time_ns() // 1000}"
                await send(f'{{"type":"gift","id":"{cid}","room":"{ROOM}","gift":"{GIFT}",'
                           f'"count":1}}')
                self.sent += 1
                next_t += interval
            late = clock() - next_t
            if late > 0.1:  # fallen behind (acks slow, loop busy): no catch-up burst
                self.skipped += int(late / interval)
                next_t = clock()
            await asyncio.sleep(max(0.001, next_t - clock()))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def connect_gifters(base: str, people: list[Principal], tag: str) -> list[Gifter]:
    url = base.replace("http://", "ws://") + "/ws"
    out = []
    for i, p in enumerate(people):
        ws = await websockets.connect(f"{url}?token={issue_token(SECRET, p, 3600)}",
                                      max_size=None, ping_interval=None, compression=None,
                                      subprotocols=["giftd.json"], open_timeout=20)
        await ws.send(orjson.dumps({"type": "join", "room": ROOM}).decode())
        while True:
            msg = orjson.loads(await asyncio.wait_for(ws.recv(decode=False), 10))
            if msg.get("type") == "joined":
                break
            if msg.get("type") == "error":
                raise RuntimeError(f"gifter join failed: {msg}")
        out.append(Gifter(i, ws, tag))
    return out


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------


def cpu_snap(named: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of process trees, and of the whole machine."""
    table = _proc_table()
    out = {"time": time.monotonic(), "machine": _machine_busy_s()}
    for name, pids in named.items():
        out[name] = sum(sum(_tree_cpu(table, pid)) for pid in pids)
    me = table.get(os.getpid())
    out["bench (gifters)"] = me[1] if me else 0.0  # this process only, not its children
    return out


def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    wall = b["time"] - a["time"]
    out = {k: (b[k] - a[k]) / wall for k in a if k not in ("time", "machine")}
    out["others"] = max(0.0, (b["machine"] - a["machine"]) / wall - sum(out.values()))
    return out


def rss(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


def hist_pct(hist: Counter[int], q: float) -> float:
    """ms at quantile q of a histogram of LAT_BUCKET_US buckets."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    want = q * total
    acc = 0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= want:
            return (b + 0.5) * LAT_BUCKET_US / 1000
    return float("nan")


@dataclass
class Result:
    name: str
    viewers: int = 0
    connect_s: float = 0.0
    window_s: float = 0.0
    server_frames: float = 0.0  # written by the server in the window
    server_deliveries: float = 0.0
    lg_frames: int = 0
    lg_bytes: int = 0
    lg_events: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    server_cores: float = 0.0
    rss_before: int = 0
    rss_joined: int = 0
    rss_storm: int = 0
    lat: Counter[int] = field(default_factory=Counter)
    debit: Counter[int] = field(default_factory=Counter)
    final: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def per_s(self, v: float) -> float:
        return v / self.window_s if self.window_s else 0.0

    @property
    def frames_per_core(self) -> float:
        return self.per_s(self.server_frames) / self.server_cores if self.server_cores else 0.0


def merge_finals(finals: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"lat_hist": Counter(), "debit_hist": Counter(), "closed": Counter(),
                           "other": Counter(), "last_seqs": Counter(), "anomalies": []}
    for f in finals:
        for k in ("gaps", "dups", "mismatch", "pre_join", "in_frame_bad", "merged_frames",
                  "merged_deliveries", "sampled_deliveries", "viewers_with_gaps",
                  "viewers_with_dups", "sampled", "anomaly_n", "open"):
            out[k] = out.get(k, 0) + f[k]
        for k in ("lat_hist", "debit_hist", "closed", "other", "last_seqs"):
            out[k].update(f[k])
        out["anomalies"] += f["anomalies"]
    return out


async def connect_viewers(lg: LoadGens, port: int, tokens: list[str], viewers: int,
                          sample_every: int) -> tuple[int, float, dict[str, int]]:
    per = math.ceil(viewers / len(lg.pipes))
    counts = [max(0, min(per, viewers - i * per)) for i in range(len(lg.pipes))]
    t0 = time.monotonic()
    res = await lg.ask(each=[("connect", "127.0.0.1", port, tokens, n, i * per, sample_every)
                             for i, n in enumerate(counts)], timeout=CONNECT_TIMEOUT_S)
    errors: Counter[str] = Counter()
    for r in res:
        errors.update(r["errors"])
    retries = sum(r["join_retries"] for r in res)
    if retries:
        errors[f"(retried joins answered `unavailable`: {retries})"] = retries
    return sum(r["joined"] for r in res), time.monotonic() - t0, dict(errors)


def sum_snaps(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: sum(s[k] for s in snaps) for k in ("frames", "bytes", "events", "open")} | {
        "min_seq": min(s["min_seq"] for s in snaps if s["open"]) if any(
            s["open"] for s in snaps) else -1}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


@dataclass
class Config:
    viewers: int
    seconds: float
    warmup_s: float
    rate: float
    gifters: int
    tick_ms: int
    procs: int
    sample_every: int
    flusher: bool
    floor: bool
    profile: bool
    # gifters send through a second `giftd serve` on the same Valkey: the measured
    # process is then a fan-out node only (viewers, room bus, ticks), as in a
    # deployment with separate ingress
    ingress_node: bool = False


async def giftd_phase(cfg: Config, lg: LoadGens, tmp: Path, tag: str) -> Result:
    res = Result("giftd")
    log("starting embedded Valkey and Postgres")
    OWNED.valkey = EmbeddedValkey(tmp / "valkey")
    OWNED.valkey.start()
    OWNED.pg = EmbeddedPostgres(tmp / "postgres", fsync=False)
    OWNED.pg.start()
    redis = Redis.from_url(OWNED.valkey.url)
    pool = await asyncpg.create_pool(OWNED.pg.url, min_size=1, max_size=4)
    try:
        info = await redis.info("server")
        res.extra["valkey"] = str(info.get("valkey_version") or info.get("redis_version"))
        res.extra["postgres"] = str(await pool.fetchval("SHOW server_version"))
        n_acc = cfg.gifters + VIEWER_ACCOUNTS
        log(f"creating the room and {n_acc} accounts ({cfg.gifters} gifters, "
            f"{VIEWER_ACCOUNTS} shared by the viewers)")
        _, people = await setup_accounts(pool, redis, n_acc)
        gifter_people, viewer_people = people[:cfg.gifters], people[cfg.gifters:]
        log(f"starting `giftd serve` (subprocess, tick {cfg.tick_ms} ms, flusher "
            f"{'on' if cfg.flusher else 'off'})")
        base = start_giftd(tmp, OWNED.valkey.url, OWNED.pg.url, cfg.tick_ms, cfg.flusher)
        assert OWNED.giftd is not None
        gpid = OWNED.giftd.pid
        port = int(base.rsplit(":", 1)[1])
        log(f"giftd is up on {base} (pid {gpid})")
        ingress_base = base
        if cfg.ingress_node:
            ingress_base = start_giftd(tmp, OWNED.valkey.url, OWNED.pg.url, cfg.tick_ms,
                                       cfg.flusher, name="giftd-ingress")
            log(f"ingress node (the gifters' `giftd serve`) is up on {ingress_base} "
                f"(pid {OWNED.more_giftd[-1].pid})")
        gifters = await connect_gifters(ingress_base, gifter_people, tag)
        await asyncio.sleep(1.0)
        res.rss_before = rss(gpid)
        tokens = [issue_token(SECRET, p, 3600) for p in viewer_people]
        log(f"connecting {cfg.viewers:,} viewers from {len(lg.pipes)} load-generator "
            "processes")
        res.viewers, res.connect_s, errs = await connect_viewers(lg, port, tokens, cfg.viewers,
                                                                cfg.sample_every)
        log(f"    {res.viewers:,} joined in {res.connect_s:.1f}s"
            + (f"; failures: {errs}" if errs else ""))
        if errs:
            res.extra["connect_errors"] = errs
        await asyncio.sleep(1.0)
        res.rss_joined = rss(gpid)
        named = {"giftd": [gpid], "valkey": [OWNED.valkey.proc.pid],  # type: ignore[union-attr]
                 "postgres": [OWNED.pg.proc.pid], "load generator": lg.pids}  # type: ignore[union-attr]
        if cfg.ingress_node:
            named["giftd ingress"] = [OWNED.more_giftd[-1].pid]

        log(f"gift storm: {cfg.gifters} gifters, {cfg.rate:,.0f} gifts/s total, "
            f"{cfg.warmup_s:g}s warm-up + {cfg.seconds:g}s measured")
        stop = asyncio.Event()
        senders = [asyncio.create_task(g.paced(cfg.rate / len(gifters), stop)) for g in gifters]
        try:
            await asyncio.sleep(cfg.warmup_s)
            # (httpx is synchronous: in a thread, so the gifters keep their pace)
            m0 = await asyncio.to_thread(scrape_metrics, base)
            s0 = sum_snaps(await lg.ask("record", True))
            c0 = cpu_snap(named)
            sent0 = sum(g.sent for g in gifters)
            spy = (await start_profile(gpid, cfg.seconds - 1, tmp / "giftd.folded")
                   if cfg.profile else None)
            await asyncio.sleep(cfg.seconds)
            c1 = cpu_snap(named)
            sent1 = sum(g.sent for g in gifters)
            s1 = sum_snaps(await lg.ask("record", False))
            m1 = await asyncio.to_thread(scrape_metrics, base)
            res.rss_storm = rss(gpid)
        finally:
            stop.set()
            await asyncio.gather(*senders, return_exceptions=True)
        res.window_s = c1["time"] - c0["time"]
        res.cpu = cores(c0, c1)
        res.server_cores = res.cpu["giftd"]
        res.server_frames = m1.get("giftd_frames_written", 0) - m0.get("giftd_frames_written", 0)
        res.server_deliveries = m1.get("giftd_deliveries", 0) - m0.get("giftd_deliveries", 0)
        res.lg_frames = s1["frames"] - s0["frames"]
        res.lg_bytes = s1["bytes"] - s0["bytes"]
        res.lg_events = s1["events"] - s0["events"]
        res.extra["sent_per_s"] = (sent1 - sent0) / res.window_s
        res.extra["tick_lag_ms_end"] = m1.get("giftd_tick_lag_ms", float("nan"))
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
            if spy.returncode is None:
                spy.kill()
                await spy.wait()
            if (tmp / "giftd.folded").exists():
                res.extra["profile"] = summarize_profile(tmp / "giftd.folded")

        # The tail: acks in, combos ended (combo_end events), every viewer at the final seq.
        log("storm stopped; waiting for the acks, the combo ends and every viewer to reach "
            "the room's final seq")
        deadline = time.monotonic() + 10
        while (sum(sum(g.outcomes.values()) for g in gifters) < sum(g.sent for g in gifters)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        deadline = time.monotonic() + TAIL_TIMEOUT_S
        stable_since, last_room_seq = time.monotonic(), -1
        while True:
            room_seq = int(await redis.get(keys.room_seq(ROOM)) or 0)
            if room_seq != last_room_seq:
                stable_since, last_room_seq = time.monotonic(), room_seq
            snap = sum_snaps(await lg.ask("snap"))
            # combo streaks end `combo_window_ms` (3 s) after their last gift
            if snap["min_seq"] == room_seq and time.monotonic() - stable_since > 4.0:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        res.extra["room_final_seq"] = room_seq
        finals = await lg.ask("final")
        res.final = merge_finals(finals)
        res.lat, res.debit = res.final["lat_hist"], res.final["debit_hist"]
        mend = await asyncio.to_thread(scrape_metrics, base)
        res.extra["slow_closes_metric"] = mend.get("giftd_slow_consumer_closes", 0)
        res.extra["gifter_outcomes"] = dict(sum((g.outcomes for g in gifters), Counter()))
        res.extra["gifter_closed"] = [g.closed for g in gifters if g.closed is not None]
        res.extra["gifter_max_ack_seq"] = max(g.max_seq for g in gifters)
        res.extra["gifters"] = len(gifters)
        res.extra["gifter_skipped"] = sum(g.skipped for g in gifters)
        log("closing viewers and gifters")
        await lg.ask("close")
        for g in gifters:
            await g.close()
        log("stopping giftd")
        OWNED.stop_giftd()
        return res
    finally:
        await pool.close()
        await redis.aclose()


async def floor_phase(cfg: Config, lg: LoadGens, tmp: Path, events: int, event_bytes: int,
                      state: dict[str, Any]) -> Result:
    res = Result("raw floor")
    log(f"starting the raw floor server: {events} events x {event_bytes} B per frame, "
        f"tick {cfg.tick_ms} ms")
    floor = Floor(tmp, cfg.tick_ms, events, event_bytes)
    state["floor"] = floor
    try:
        res.rss_before = rss(floor.proc.pid)
        res.viewers, res.connect_s, errs = await connect_viewers(lg, floor.port, [],
                                                                cfg.viewers, cfg.sample_every)
        log(f"    {res.viewers:,} viewers joined in {res.connect_s:.1f}s"
            + (f"; failures: {errs}" if errs else ""))
        await asyncio.sleep(1.0)
        res.rss_joined = rss(floor.proc.pid)
        named = {"floor server": [floor.proc.pid], "load generator": lg.pids}
        if OWNED.valkey and OWNED.valkey.proc:
            named["valkey"] = [OWNED.valkey.proc.pid]
        if OWNED.pg and OWNED.pg.proc:
            named["postgres"] = [OWNED.pg.proc.pid]
        await asyncio.sleep(cfg.warmup_s)
        f0 = floor.stats()
        s0 = sum_snaps(await lg.ask("record", True))
        c0 = cpu_snap(named)
        await asyncio.sleep(cfg.seconds)
        c1 = cpu_snap(named)
        s1 = sum_snaps(await lg.ask("record", False))
        f1 = floor.stats()
        res.rss_storm = rss(floor.proc.pid)
        res.window_s = c1["time"] - c0["time"]
        res.cpu = cores(c0, c1)
        res.server_cores = res.cpu["floor server"]
        # the floor's own counters, scaled to our window (its lines carry its own clock)
        ft = f1["t"] - f0["t"]
        res.server_frames = (f1["frames"] - f0["frames"]) / ft * res.window_s if ft else 0
        res.server_deliveries = res.server_frames * events
        res.lg_frames = s1["frames"] - s0["frames"]
        res.lg_bytes = s1["bytes"] - s0["bytes"]
        res.lg_events = s1["events"] - s0["events"]
        res.extra["slow_closes_metric"] = f1.get("slow", 0)
        res.extra["room_final_seq"] = None  # the floor keeps ticking: no final seq to reach
        finals = await lg.ask("final")
        res.final = merge_finals(finals)
        res.lat = res.final["lat_hist"]
        log("closing viewers; stopping the floor server")
        await lg.ask("close")
    finally:
        floor.stop()
        state.pop("floor", None)
    return res


def print_header(facts: dict[str, str], cfg: Config) -> None:
    print()
    print("bench_fanout: one giftd process, one room, a gift storm; vs the raw write floor")
    print("=" * 78)
    for k, v in facts.items():
        print(f"  {k:<16} {v}")
    print(f"  {'size':<16} {cfg.viewers:,} viewers x {cfg.seconds:g}s measured "
          f"(+{cfg.warmup_s:g}s warm-up), {cfg.rate:,.0f} gifts/s from {cfg.gifters} gifters, "
          f"tick {cfg.tick_ms} ms")
    print(f"  {'load generator':<16} {cfg.procs} processes (raw asyncio WebSocket viewers, "
          f"uvloop), latency sampled on 1 in {cfg.sample_every} viewers")
    print(f"  {'giftd':<16} `giftd serve` subprocess, flusher {'on' if cfg.flusher else 'off'},"
          " send rate limits lifted"
          + ("; gifters on a second giftd (ingress node): the measured one only fans out"
             if cfg.ingress_node else "; gifters and viewers on the same process"))
    print("  shared machine   load generator, giftd/floor, Valkey and Postgres all run here")
    print("=" * 78, flush=True)


def fmt_cores(c: dict[str, float]) -> str:
    ours = {k: v for k, v in c.items() if k != "others"}
    return (", ".join(f"{k} {v:.2f}" for k, v in ours.items() if v >= 0.005)
            + f" (ours {sum(ours.values()):.2f}); other processes {c.get('others', 0):.2f}")


def print_report(cfg: Config, g: Result, f: Result | None) -> bool:
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, gv: str, fv: str = "", ratio: str = "") -> None:
        rows.append((label, gv, fv, ratio))

    def num(x: float, d: int = 0) -> str:
        return f"{x:,.{d}f}" if x == x else "n/a"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else ""

    fr = f if f is not None else Result("raw floor (skipped)")
    row("viewers joined", num(g.viewers), num(fr.viewers))
    row("connect + join all (s)", num(g.connect_s, 1), num(fr.connect_s, 1))
    row("measured window (s)", num(g.window_s, 1), num(fr.window_s, 1))
    row("gifts/s sent (gifters)", num(g.extra.get("sent_per_s", 0)), "")
    row("frames/s written (server count)", num(g.per_s(g.server_frames)),
        num(fr.per_s(fr.server_frames)), ratio(g.server_frames * fr.window_s,
                                               fr.server_frames * g.window_s))
    row("frames/s received (viewers)", num(g.per_s(g.lg_frames)), num(fr.per_s(fr.lg_frames)))
    row("avg frame payload (bytes)", num(g.lg_bytes / g.lg_frames if g.lg_frames else 0),
        num(fr.lg_bytes / fr.lg_frames if fr.lg_frames else 0))
    row("avg events per frame", num(g.lg_events / g.lg_frames if g.lg_frames else 0, 1),
        num(fr.lg_events / fr.lg_frames if fr.lg_frames else 0, 1))
    row("MB/s received (viewers)", num(g.per_s(g.lg_bytes) / 1e6, 1),
        num(fr.per_s(fr.lg_bytes) / 1e6, 1))
    row("deliveries/s (events at viewers)", num(g.per_s(g.lg_events)),
        num(fr.per_s(fr.lg_events)))
    row("deliveries/s (server count)", num(g.per_s(g.server_deliveries)),
        num(fr.per_s(fr.server_deliveries)))
    row("server CPU (cores)", num(g.server_cores, 2), num(fr.server_cores, 2))
    row("frames/s per server core", num(g.frames_per_core), num(fr.frames_per_core),
        ratio(g.frames_per_core, fr.frames_per_core))
    gd = g.per_s(g.lg_events)
    fd = fr.per_s(fr.lg_events)
    row("server CPU us per frame",
        num(g.server_cores * 1e6 / g.per_s(g.server_frames) if g.server_frames else 0, 2),
        num(fr.server_cores * 1e6 / fr.per_s(fr.server_frames) if fr.server_frames else 0, 2))
    row("server CPU us per delivery", num(g.server_cores * 1e6 / gd if gd else 0, 3),
        num(fr.server_cores * 1e6 / fd if fd else 0, 3))
    row("send->receipt p50 / p99 (ms)",
        f"{num(hist_pct(g.lat, 0.5), 1)} / {num(hist_pct(g.lat, 0.99), 1)}",
        f"{num(hist_pct(fr.lat, 0.5), 1)} / {num(hist_pct(fr.lat, 0.99), 1)}")
    row("debit(ts_ms)->receipt p50 / p99 (ms)",
        f"{num(hist_pct(g.debit, 0.5), 1)} / {num(hist_pct(g.debit, 0.99), 1)}", "")
    row("latency samples (events)", num(sum(g.lat.values())), num(sum(fr.lat.values())))
    for r, label in ((g.rss_before, "server RSS before viewers (MiB)"),):
        row(label, num(r / 2**20, 1), num(fr.rss_before / 2**20, 1))
    row("server RSS, viewers joined (MiB)", num(g.rss_joined / 2**20, 1),
        num(fr.rss_joined / 2**20, 1))
    row("server RSS, end of storm (MiB)", num(g.rss_storm / 2**20, 1),
        num(fr.rss_storm / 2**20, 1))

    def per_conn(r: Result, rss_after: int) -> float:
        return (rss_after - r.rss_before) / r.viewers / 1024 if r.viewers else float("nan")

    row("RSS per connection, idle (KiB)", num(per_conn(g, g.rss_joined), 1),
        num(per_conn(fr, fr.rss_joined), 1))
    row("RSS per connection, storm (KiB)", num(per_conn(g, g.rss_storm), 1),
        num(per_conn(fr, fr.rss_storm), 1))
    for r in (g, fr):
        r.extra["dropped"] = sum(v for k, v in r.final.get("closed", {}).items())
    row("viewers closed by the server (4008)",
        num(g.final.get("closed", {}).get(4008, 0)), num(fr.final.get("closed", {}).get(4008, 0)))
    row("viewers closed, any code", num(g.extra["dropped"]), num(fr.extra["dropped"]))
    row("events lost (gaps) / duplicated",
        f"{g.final.get('gaps', 0):,} / {g.final.get('dups', 0):,}",
        f"{fr.final.get('gaps', 0):,} / {fr.final.get('dups', 0):,}")

    w0 = max(len(r[0]) for r in rows) + 2
    print()
    print("=" * (w0 + 48))
    print(f"{'measurement':<{w0}}{'giftd':>16}{'raw floor':>16}{'giftd/floor':>16}")
    print("-" * (w0 + 48))
    for label, a, b, c in rows:
        print(f"{label:<{w0}}{a:>16}{b:>16}{c:>16}")
    print("=" * (w0 + 48))

    ok = True
    print("\nchecks (every viewer, whole phase incl. warm-up and tail):")
    for r in (g, f):
        if r is None:
            continue
        fin = r.final
        final_seq = r.extra.get("room_final_seq")
        behind = (sum(n for s, n in fin["last_seqs"].items() if s != final_seq)
                  if final_seq is not None else 0)
        at_end = (f"viewers not at the room's final seq {final_seq:,}: {behind:,}"
                  if final_seq is not None else "final seq: n/a (the floor keeps ticking)")
        closed = dict(fin["closed"])
        print(f"  {r.name}: gaps {fin['gaps']:,}, duplicates {fin['dups']:,}, "
              f"event-less tick seq mismatches {fin['mismatch']:,}, ticks before joined "
              f"{fin['pre_join']:,}, in-frame seq breaks (sampled) {fin['in_frame_bad']:,}, "
              f"{at_end}, closed by the server {closed or 0}")
        if fin["anomalies"]:
            print(f"    first anomalies ({fin['anomaly_n']:,} in all):")
            for a in fin["anomalies"][:10]:
                print(f"      {a}")
        if r is g:
            ok = ok and not (fin["gaps"] or fin["dups"] or fin["mismatch"] or fin["pre_join"]
                             or fin["in_frame_bad"] or behind or closed)
    print(f"  => {'PASS' if ok else 'FAIL'}: giftd lost nothing, repeated nothing, "
          "dropped nobody" if ok else "  => FAIL: see above")
    print(f"\n  gifter acks: {g.extra.get('gifter_outcomes')}; highest acked seq "
          f"{g.extra.get('gifter_max_ack_seq')}, room's final seq "
          f"{g.extra.get('room_final_seq')} (the rest are combo_end events)")
    if g.extra.get("gifter_closed"):
        print(f"  gifter sockets closed: {g.extra['gifter_closed']}")
    print(f"  giftd /metrics: slow-consumer closes {g.extra.get('slow_closes_metric', 0):,.0f}, "
          f"tick lag at the end {g.extra.get('tick_lag_ms_end', float('nan')):.1f} ms")
    if g.extra.get("gifter_skipped"):
        print(f"  gifters fell behind their pace and skipped {g.extra['gifter_skipped']:,} sends")
    print(f"  per-viewer messages other than ticks/joined: {dict(g.final.get('other', {}))}")
    sd = g.final.get("sampled_deliveries", 0)
    if sd:
        print(f"  merging (frames over GIFTD_MERGE_ABOVE_EVENTS events): "
              f"{g.final.get('merged_deliveries', 0) / sd:.1%} of the sampled viewers' "
              f"deliveries came inside merged events ({g.final.get('merged_frames', 0):,} "
              "frames); send->receipt is measured on unmerged gifts only (a merged event "
              "drops its members' ids), debit->receipt on all")
    if g.extra.get("profile"):
        print("\npy-spy of the giftd process during the measured window (costs CPU: the "
              "figures of a --profile run are not comparable):")
        for line in g.extra["profile"]:
            print(f"  {line}")
    print("\ncores used during the measured window:")
    print(f"  giftd phase: {fmt_cores(g.cpu)}")
    if f is not None:
        print(f"  floor phase: {fmt_cores(f.cpu)}")
    if f is not None and f.frames_per_core:
        gifts_s = g.extra.get("sent_per_s", 0)
        print("\nratios:")
        print(f"  giftd frames/s per core / raw floor frames/s per core = "
              f"{g.frames_per_core / f.frames_per_core:.2f}")
        if gifts_s:
            print(f"  deliveries/s / gifts/s sent = {g.per_s(g.lg_events) / gifts_s:,.0f} "
                  f"(the room's viewers: every gift reaches each of them)")
        print(f"  giftd frames per tick per viewer = "
              f"{g.per_s(g.lg_frames) / max(1, g.viewers) * cfg.tick_ms / 1000:.2f}")
    return ok


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="5,000 viewers x 60 s")
    ap.add_argument("--viewers", type=int, help="viewer connections (default 2,000; --full 5,000)")
    ap.add_argument("--seconds", type=float, help="measured window (default 20; --full 60)")
    ap.add_argument("--warmup", type=float, default=3.0, help="storm warm-up before measuring")
    ap.add_argument("--rate", type=float, default=500.0, help="gifts/s, all gifters together")
    ap.add_argument("--gifters", type=int, default=4, help="gifter connections")
    ap.add_argument("--tick-ms", type=int, default=50, help="GIFTD_TICK_MS (and the floor's)")
    ap.add_argument("--procs", type=int, help=f"load-generator processes (default: one per "
                    f"{FDS_PER_PROC} viewers)")
    ap.add_argument("--sample-every", type=int, default=10,
                    help="1 in N viewers parses every event (seq contiguity, latency)")
    ap.add_argument("--flusher", action="store_true",
                    help="run giftd's ledger flusher in the server process (default off: this "
                         "measures fan-out; `giftd flush` can run as its own process)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the giftd process during the measured window")
    ap.add_argument("--no-floor", action="store_true", help="skip the raw floor phase")
    ap.add_argument("--ingress-node", action="store_true",
                    help="gifters send through a second giftd process, so the measured one is "
                         "a fan-out node only (viewers, room bus, ticks)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    # the floor server's own entry point (a subprocess of this script)
    ap.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--event-bytes", type=int, default=400, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    viewers = args.viewers or (5000 if args.full else 2000)
    cfg = Config(
        viewers=viewers,
        seconds=args.seconds or (60.0 if args.full else 20.0),
        warmup_s=args.warmup,
        rate=args.rate,
        gifters=args.gifters,
        tick_ms=args.tick_ms,
        procs=args.procs or max(1, math.ceil(viewers / FDS_PER_PROC)),
        sample_every=max(1, args.sample_every),
        flusher=args.flusher,
        floor=not args.no_floor,
        profile=args.profile,
        ingress_node=args.ingress_node,
    )
    return cfg, args


async def bench(cfg: Config, lg: LoadGens, tmp: Path, state: dict[str, Any]) -> int:
    facts = machine_facts()
    nofile = raise_nofile()
    facts["fds"] = f"RLIMIT_NOFILE {nofile:,} (giftd inherits it; load generators raise theirs)"
    tag = f"f{int(time.time())}"
    print_header(facts, cfg)
    g = await giftd_phase(cfg, lg, tmp, tag)
    log(f"    giftd: {g.per_s(g.server_frames):,.0f} frames/s, "
        f"{g.per_s(g.lg_events):,.0f} deliveries/s, {g.server_cores:.2f} cores, "
        f"p99 {hist_pct(g.lat, 0.99):.1f} ms")
    f = None
    if cfg.floor and g.lg_frames:
        events = max(1, round(g.lg_events / g.lg_frames))
        frame_bytes = g.lg_bytes / g.lg_frames
        head = len(b'{"type":"tick","room":"bench","seq":100000,"events":[],"viewers":5000}')
        event_bytes = max(60, int((frame_bytes - head) / events) - 1)  # -1: the comma
        f = await floor_phase(cfg, lg, tmp, events, event_bytes, state)
        log(f"    floor: {f.per_s(f.server_frames):,.0f} frames/s, "
            f"{f.server_cores:.2f} cores")
    print(f"\n(valkey {g.extra.get('valkey')}, postgres {g.extra.get('postgres')}; "
          f"temp dir {tmp})")
    ok = print_report(cfg, g, f)
    return 0 if ok else 1


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.floor_server:
        return floor_server_main(args)
    # Load generators first, before any event loop, thread or child of ours exists.
    lg = LoadGens(cfg.procs)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="giftd-fanout-"))
    os.chmod(tmp, 0o755)  # the unprivileged postgres user (when we are root) must traverse it
    OWNED.tmp, OWNED.keep_tmp = tmp, args.keep
    state: dict[str, Any] = {}
    try:
        import uvloop

        return uvloop.run(bench(cfg, lg, tmp, state))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        lg.stop()
        if "floor" in state:
            state["floor"].stop()
        OWNED.close()


if __name__ == "__main__":
    raise SystemExit(main())
