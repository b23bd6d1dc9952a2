#!/usr/bin/env python
"""surge: a PK-battle gift surge against a real giftd, from many asyncio connections.

What locust cannot reach on two cores: thousands of WebSocket connections per
load-generator process (raw asyncio protocols, as bench_fanout's viewers),
several such processes, and gifters that live among the viewers.

The scenario (default shape `pk`): two rooms in a PK battle, V viewers in each,
G gifters spread over both rooms. The gift rate follows a schedule: `--base-rate`
for the first part of the round, then `--peak-rate` for the last `--spike-seconds`
of it (the PK final-30-s storm). `--shape steady` keeps the base rate, `--shape
ramp` goes linearly from base to peak. The battle is started over HTTP
(POST /api/pk/invite + /api/pk/{id}/accept) with GIFTD_PK_ROUND_MS set so the
round ends with the schedule. Gifters send a realistic mix: mostly single
roses and hearts, batch sends (count 10/66/99), streaks of the same gift
(server-side combos), now and then a crown, a sports car, a rocket (urgent:
flushes the room at once).

It reports, per phase (steady / spike):
  - gifts/s acked, by outcome; ack p50/p95/p99 (send -> ack at the gifter);
  - send->receipt p50/p95/p99 at the viewers (the send time rides in the gift
    id and comes back as the event's client_id; merged events drop client ids,
    so debit->receipt from the events' ts_ms / event ids is shown too);
  - logical deliveries/s (merged events count as their members) and frames/s
    at the viewers, and giftd's own frame counter;
  - lost and duplicated events: EVERY connection (viewers and gifters) checks
    each tick frame's seq against the number of logical events in it (merged
    events' `seqs` lists expanded) and its previous seq, and must end at the
    room's final seq; 1 in --sample-every also checks the exact seq set;
  - coins conserved: Redis balances before/after vs the ok acks vs the Postgres
    ledger once the flusher has drained, plus the whole-system invariant of
    tests/support.py `check_invariants`;
  - server CPU (cores, from /proc) and RSS per connection; other processes'
    CPU per phase (the machine is shared);
  - flusher lag: /metrics giftd_flush_lag_ms and giftd_ledger_backlog, sampled
    every second, and how long after the surge the lag was back under 2 s.

Run:
    .venv/bin/python loadtest/surge.py          # 2 rooms x 500 viewers, spike 1,000/s, < 2 min
    .venv/bin/python loadtest/surge.py --full   # the issue's size: 2 x 2,500, 5,000/s for 30 s
    .venv/bin/python loadtest/surge.py --wire msgpack --viewers 1000 --peak-rate 2000
    GIFTD_URL=... is NOT supported: the run needs its own Valkey/Postgres to check conservation.

Everything runs on loopback, bounded in time (--max-wall). Ctrl-C / SIGTERM stops
everything this run started and removes the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
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
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.support

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import msgpack  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
from bench_fanout import (  # noqa: E402
    EVENT_MARK,
    TICK_PREFIX,
    cores,
    cpu_snap,
    fmt_cores,
    hist_pct,
    merged_extra,
    ws_client_frame,
)
from bench_spine import (  # noqa: E402
    OWNED,
    SECRET,
    log,
    machine_facts,
    scrape_metrics,
    start_profile,
    summarize_profile,
)
from procpool import Handler, ProcessPool, raise_nofile, run_child  # noqa: E402
from rawws import FrameReader, upgrade_request  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

import server.users as users_mod  # noqa: E402
from billing.credits import apply_pending, book_grant  # noqa: E402
from billing.migrate import migrate  # noqa: E402
from gifts.scripts import Script  # noqa: E402
from server import keys  # noqa: E402
from server.auth import Principal, Role, hash_password, issue_token  # noqa: E402
from server.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402

ROOMS = ("pk_a", "pk_b")
COINS_PER_GIFTER = 10**9  # nobody runs out
VIEWER_ACCOUNTS_PER_ROOM = 8
GIFTD_START_TIMEOUT_S = 90
CONNECT_TIMEOUT_S = 240
CONNECTS_IN_FLIGHT = 64
JOIN_TRIES_MAX = 10
GIFTER_WINDOW = 64  # sends in flight per gifter connection (the server allows 64)
PER_GIFTER_RATE_MAX = 15.0  # below the server's 20/s per connection: no rate_limited by design
LAT_BUCKET_US = 100  # must match bench_fanout.hist_pct
FLUSH_LAG_TARGET_MS = 2000
ANOMALIES_KEPT = 20
SENT_RE = re.compile(r"-t(\d+)$")
MP_TICK_HEAD = b"\xa4type\xa4tick"
MP_SEQS = b"\xa4seqs"

# The gift mix: (weight, gift code, counts to pick from). Streak lengths separately.
MIX: list[tuple[float, str, tuple[int, ...]]] = [
    (50, "rose", (1,)),
    (15, "rose", (10, 66, 99)),  # batch sends
    (15, "heart", (1,)),
    (3, "heart", (10, 66, 99)),
    (9, "donut", (1,)),
    (5, "crown", (1,)),
    (2.5, "sports_car", (1,)),
    (0.5, "rocket", (1,)),  # >= 10,000 coins: urgent, flushes the room at once
]
STREAK_LENS = ((0.45, (1, 1)), (0.40, (2, 5)), (0.15, (6, 20)))


# --------------------------------------------------------------------------
# the schedule: gift rate over time
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    shape: str  # pk | steady | ramp
    duration_s: float
    base: float
    peak: float
    spike_s: float

    def rate(self, t: float) -> float:
        if t < 0 or t >= self.duration_s:
            return 0.0
        if self.shape == "steady":
            return self.base
        if self.shape == "ramp":
            return self.base + (self.peak - self.base) * t / self.duration_s
        return self.peak if t >= self.duration_s - self.spike_s else self.base

    def phase(self, t: float) -> str:
        if self.shape == "pk":
            return "spike" if t >= self.duration_s - self.spike_s else "steady"
        return self.shape

    def phases(self) -> list[tuple[str, float, float]]:
        if self.shape == "pk":
            a = max(0.0, self.duration_s - self.spike_s)
            return [p for p in (("steady", 0.0, a), ("spike", a, self.duration_s)) if p[2] > p[1]]
        return [(self.shape, 0.0, self.duration_s)]


# --------------------------------------------------------------------------
# the load generator: one process, many connections on one uvloop
# --------------------------------------------------------------------------

class Conn(FrameReader, asyncio.Protocol):
    """One WebSocket: upgrade, join, check every tick frame; a gifter also sends."""

    def __init__(self, w: Worker, host: str, path: str, room: str, sample: bool,
                 gifter: bool, idx: int) -> None:
        self.w, self.host, self.path, self.room = w, host, path, room
        self.sample, self.gifter, self.idx = sample, gifter, idx
        self.t: asyncio.Transport | None = None
        self.state = 0  # 0 handshake, 1 open, 2 closed
        self.buf = bytearray()
        self.need = 0
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_seq = -1
        self.gaps = self.dups = self.mismatch = self.pre_join = 0
        self.close_code: int | None = None
        self.join_tries = 0
        # gifter state
        self.pending: dict[str, tuple[float, str, int]] = {}  # id -> (t0, phase, value)
        self.n = 0
        self.streak_left = 0
        self.cur: tuple[str, int] = ("rose", 1)

    # -- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.t = t
        t.write(upgrade_request(self.host, self.path, f"giftd.{self.w.wire}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != 2:
            self.state = 2
            if self.close_code is None:
                self.close_code = 1006
            self.w.closed[self.close_code] += 1
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed before joined ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        if self.state == 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail("handshake refused: " + head.split(b"\r\n")[0].decode("latin1"))
                return
            self.state = 1
            self._send_obj({"type": "join", "room": self.room})
            if not data:
                return
        elif self.state == 2:
            return
        self._feed(data, time.time())

    # -- frames -----------------------------------------------------------
    def _send_obj(self, obj: dict[str, Any]) -> None:
        if self.w.wire == "msgpack":
            self.t.write(ws_client_frame(msgpack.packb(obj), 2))  # type: ignore[union-attr]
        else:
            self.t.write(ws_client_frame(orjson.dumps(obj), 1))  # type: ignore[union-attr]

    def _tick(self, seq: int, k: int, d: bytes | bytearray, s: int, e: int, now: float) -> None:
        w = self.w
        w.frames += 1
        w.bytes += e - s
        last = self.last_seq
        if last < 0:
            self.pre_join += 1
            w.note(f"tick seq {seq} before joined")
            return
        if k:
            first = seq - k + 1
            if first != last + 1:
                if first > last + 1:
                    self.gaps += first - last - 1
                else:
                    self.dups += min(k, last - first + 1)
                w.note(f"{self.room}: frame with events {first}..{seq} after seq {last}")
            if seq > last:
                self.last_seq = seq
            w.events += k
            w.events_by_phase[w.phase_now(now)] += k
            if self.sample and w.recording:
                w.inspect(bytes(d[s:e]), now)
        elif seq != last:
            self.mismatch += 1
            w.note(f"{self.room}: event-less tick at seq {seq} after seq {last}")

    def _frame(self, op: int, d: bytes | bytearray, s: int, e: int, now: float) -> None:
        w = self.w
        if op == 1 or op == 2:
            if w.wire == "json" and d.startswith(TICK_PREFIX, s):
                i = d.find(b'"seq":', s + 14, e)
                seq = int(d[i + 6:d.find(b",", i, e)])
                k = d.count(EVENT_MARK, s, e)
                if k and seq - k != self.last_seq:
                    k += merged_extra(d, s, e)
                self._tick(seq, k, d, s, e, now)
                return
            if w.wire == "msgpack" and d[s + 1:s + 11] == MP_TICK_HEAD:
                parsed = mp_tick_head(d, s, e)
                if parsed is None:  # an unexpected layout: decode it all
                    m = msgpack.unpackb(bytes(d[s:e]), raw=False)
                    seq = int(m["seq"])
                    k = sum(len(ev["seqs"]) if "seqs" in ev else 1 for ev in m["events"])
                else:
                    seq, k = parsed
                self._tick(seq, k, d, s, e, now)
                return
            raw = bytes(d[s:e])
            msg = orjson.loads(raw) if w.wire == "json" else msgpack.unpackb(raw, raw=False)
            self._message(msg, now)
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
        elif op == 9 and self.t is not None:
            self.t.write(ws_client_frame(bytes(d[s:e]), 10))  # pong

    def _message(self, msg: dict[str, Any], now: float) -> None:
        w = self.w
        kind = msg.get("type")
        if kind == "ack":
            entry = self.pending.pop(str(msg.get("id")), None)
            if entry is None:
                w.other["ack without a pending send"] += 1
                return
            t0, phase, value = entry
            outcome = str(msg.get("outcome"))
            w.outcomes[(phase, outcome)] += 1
            w.ack_hist[phase][int((now - t0) * 1e6 // LAT_BUCKET_US)] += 1
            if outcome == "ok":
                w.ok_value += value
            return
        if kind == "error":
            cid = msg.get("id")
            if cid is not None and str(cid) in self.pending:
                t0, phase, _ = self.pending.pop(str(cid))
                w.outcomes[(phase, "error:" + str(msg.get("code")))] += 1
                return
            if (not self.joined.done() and msg.get("code") == "unavailable"
                    and self.join_tries < JOIN_TRIES_MAX):
                self.join_tries += 1
                w.join_retries += 1
                asyncio.get_running_loop().call_later(0.05 * self.join_tries, self._rejoin)
                return
            w.note(f"error: {msg}")
            if not self.joined.done():
                self._fail(f"join refused: {msg}")
            return
        if kind in ("joined", "resync"):
            self.last_seq = int(msg["seq"])
            if not self.joined.done():
                self.joined.set_result(None)
            return
        w.other[str(kind)] += 1

    def _rejoin(self) -> None:
        if self.state == 1 and self.t is not None:
            self._send_obj({"type": "join", "room": self.room})

    def _fail(self, why: str) -> None:
        self.w.note(why)
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(why))
        if self.t is not None:
            self.t.abort()

    def send_gift(self, phase: str, prices: dict[str, int]) -> None:
        if self.streak_left <= 0:  # a new streak: gift, count and length
            _, code, counts = random.choices(MIX, weights=[m[0] for m in MIX])[0]
            self.cur = (code, random.choice(counts))
            _, (lo, hi) = random.choices(STREAK_LENS, weights=[s[0] for s in STREAK_LENS])[0]
            self.streak_left = random.randint(lo, hi)
        self.streak_left -= 1
        code, count = self.cur
        self.n += 1
        cid = f"{self.w.tag}{self.idx}-{self.n}-t{time.time_ns() // 1000}"
        self.pending[cid] = (time.time(), phase, prices[code] * count)
        self._send_obj({"type": "gift", "id": cid, "room": self.room, "gift": code,
                        "count": count})

    def close(self) -> None:
        if self.state == 1 and self.t is not None:
            self.state = 2
            self.t.write(ws_client_frame((1000).to_bytes(2, "big"), 8))
            self.t.close()


def mp_tick_head(d: bytes | bytearray, s: int, e: int) -> tuple[int, int] | None:
    """(seq, logical events) of a msgpack tick, from its head and the merged events' `seqs`.

    The server packs {"type","room","seq","events",...} in that order
    (rooms/frames.py tick_payload_msgpack); None if the layout is not that.
    """
    pos = s + 11  # map header + "type" + "tick"
    if d[pos:pos + 5] != b"\xa4room":
        return None
    pos += 5
    b = d[pos]
    if 0xA0 <= b <= 0xBF:
        pos += 1 + (b & 0x1F)
    elif b == 0xD9:
        pos += 2 + d[pos + 1]
    else:
        return None
    if d[pos:pos + 4] != b"\xa3seq":
        return None
    pos += 4
    b = d[pos]
    if b <= 0x7F:
        seq, pos = b, pos + 1
    else:
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(b)
        if width is None:
            return None
        seq = int.from_bytes(d[pos + 1:pos + 1 + width], "big")
        pos += 1 + width
    if d[pos:pos + 7] != b"\xa6events":
        return None
    pos += 7
    b = d[pos]
    if 0x90 <= b <= 0x9F:
        k = b & 0x0F
    elif b == 0xDC:
        k = int.from_bytes(d[pos + 1:pos + 3], "big")
    elif b == 0xDD:
        k = int.from_bytes(d[pos + 1:pos + 5], "big")
    else:
        return None
    i = d.find(MP_SEQS, pos, e)
    while i >= 0:
        a = d[i + 5]
        if 0x90 <= a <= 0x9F:
            k += (a & 0x0F) - 1
        elif a == 0xDC:
            k += int.from_bytes(d[i + 6:i + 8], "big") - 1
        i = d.find(MP_SEQS, i + 5, e)
    return seq, k


class Worker:
    """One load-generator process."""

    def __init__(self, wire: str, tag: str) -> None:
        self.wire = wire
        self.tag = tag
        self.conns: list[Conn] = []
        self.gifters: list[Conn] = []
        self.frames = self.bytes = self.events = 0
        self.events_by_phase: Counter[str] = Counter()
        self.recording = False
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.ack_hist: dict[str, Counter[int]] = {}
        self.lat_hist: dict[str, Counter[int]] = {}
        self.debit_hist: dict[str, Counter[int]] = {}
        self.ok_value = 0
        self.sent: Counter[str] = Counter()
        self.skipped = 0
        self.closed: Counter[int] = Counter()
        self.other: Counter[str] = Counter()
        self.anomalies: list[str] = []
        self.anomaly_n = 0
        self.join_retries = 0
        self.in_frame_bad = 0
        self.merged_deliveries = 0
        self.sampled_deliveries = 0
        self.sched: Schedule | None = None
        self.t0 = 0.0
        for ph in ("steady", "spike", "ramp", "after"):
            self.ack_hist[ph], self.lat_hist[ph], self.debit_hist[ph] = (Counter(), Counter(),
                                                                         Counter())

    def phase_now(self, now: float) -> str:
        if self.sched is None or now < self.t0:
            return "before"
        t = now - self.t0
        return "after" if t >= self.sched.duration_s else self.sched.phase(t)

    def note(self, what: str) -> None:
        self.anomaly_n += 1
        if len(self.anomalies) < ANOMALIES_KEPT:
            self.anomalies.append(what)

    def inspect(self, payload: bytes, now: float) -> None:
        """Sampled connections: the frame's exact seq set and the latencies."""
        m = orjson.loads(payload) if self.wire == "json" else msgpack.unpackb(payload, raw=False)
        seqs: list[int] = []
        now_ms = now * 1000
        for ev in m["events"]:
            if "seqs" in ev:
                seqs += ev["seqs"]
                self.merged_deliveries += len(ev["seqs"])
                for eid in ev.get("event_ids", ()):
                    ms = int(str(eid).split("-", 1)[0])
                    self.debit_hist.setdefault(self.phase_now(ms / 1000), Counter())[
                        int((now_ms - ms) * 1000 // LAT_BUCKET_US)] += 1
                continue
            seqs.append(int(ev["seq"]))
            ts = int(ev.get("ts_ms") or 0)
            if ts:
                self.debit_hist.setdefault(self.phase_now(ts / 1000), Counter())[
                    int((now_ms - ts) * 1000 // LAT_BUCKET_US)] += 1
            cid = ev.get("client_id")
            if cid:
                mt = SENT_RE.search(str(cid))
                if mt:
                    sent_us = int(mt.group(1))
                    self.lat_hist.setdefault(self.phase_now(sent_us / 1e6), Counter())[
                        int((now * 1e6 - sent_us) // LAT_BUCKET_US)] += 1
        self.sampled_deliveries += len(seqs)
        if seqs and (len(set(seqs)) != len(seqs) or max(seqs) - min(seqs) + 1 != len(seqs)):
            self.in_frame_bad += 1
            self.note(f"inside a frame: seqs {sorted(seqs)[:5]}... not one contiguous run")

    async def connect(self, host: str, port: int, plan: list[tuple[str, str, bool, bool, int]]
                      ) -> dict[str, Any]:
        """plan: (room, token, sample, gifter, idx) per connection."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        errors: Counter[str] = Counter()
        t0 = time.monotonic()

        async def one(room: str, token: str, sample: bool, gifter: bool, idx: int) -> None:
            async with sem:
                c = Conn(self, f"{host}:{port}", f"/ws?token={token}", room, sample, gifter, idx)
                try:
                    await loop.create_connection(lambda: c, host, port)
                    await asyncio.wait_for(c.joined, 30)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    if c.t is not None:
                        c.t.abort()
                    return
                self.conns.append(c)
                if gifter:
                    self.gifters.append(c)

        await asyncio.gather(*(one(*p) for p in plan))
        return {"joined": len(self.conns), "gifters": len(self.gifters), "errors": dict(errors),
                "join_retries": self.join_retries, "seconds": time.monotonic() - t0}

    async def storm(self, t0: float, sched: Schedule, share: float, prices: dict[str, int]
                    ) -> None:
        """Send this process's `share` of the schedule's rate, round-robin over its gifters."""
        self.sched, self.t0 = sched, t0
        await asyncio.sleep(max(0.0, t0 - time.time()))
        self.recording = True
        due, last, i = 0.0, time.time(), 0
        gifters = self.gifters
        while gifters:
            now = time.time()
            t = now - t0
            if t >= sched.duration_s:
                break
            due += sched.rate(t) * share * (now - last)
            last = now
            phase = sched.phase(t)
            tries = 0
            while due >= 1.0:
                g = gifters[i % len(gifters)]
                i += 1
                if g.state == 1 and len(g.pending) < GIFTER_WINDOW:
                    g.send_gift(phase, prices)
                    self.sent[phase] += 1
                    due -= 1.0
                    tries = 0
                else:
                    tries += 1
                    if tries >= len(gifters):  # every window full: the server is behind
                        self.skipped += int(due)
                        due -= int(due)
            await asyncio.sleep(0.005)

    def snap(self) -> dict[str, Any]:
        open_c = [c for c in self.conns if c.state == 1]
        return {
            "t": time.time(), "frames": self.frames, "bytes": self.bytes, "events": self.events,
            "open": len(open_c), "cpu": sum(os.times()[:2]),
            "min_seq": {r: min((c.last_seq for c in open_c if c.room == r), default=-1)
                        for r in ROOMS},
            "pending": sum(len(g.pending) for g in self.gifters),
            "sent": sum(self.sent.values()),
        }

    def final(self) -> dict[str, Any]:
        cs = self.conns
        return {
            **self.snap(),
            "gaps": sum(c.gaps for c in cs), "dups": sum(c.dups for c in cs),
            "mismatch": sum(c.mismatch for c in cs), "pre_join": sum(c.pre_join for c in cs),
            "conns_with_gaps": sum(1 for c in cs if c.gaps),
            "conns_with_dups": sum(1 for c in cs if c.dups),
            "last_seqs": Counter((c.room, c.last_seq) for c in cs if c.state == 1),
            "in_frame_bad": self.in_frame_bad, "merged_deliveries": self.merged_deliveries,
            "sampled_deliveries": self.sampled_deliveries,
            "sampled": sum(1 for c in cs if c.sample),
            "closed": dict(self.closed), "other": dict(self.other),
            "outcomes": dict(self.outcomes), "ok_value": self.ok_value,
            "sent_by_phase": dict(self.sent), "skipped": self.skipped,
            "unacked": sum(len(g.pending) for g in self.gifters),
            "events_by_phase": dict(self.events_by_phase),
            "ack_hist": {k: dict(v) for k, v in self.ack_hist.items()},
            "lat_hist": {k: dict(v) for k, v in self.lat_hist.items()},
            "debit_hist": {k: dict(v) for k, v in self.debit_hist.items()},
            "anomalies": self.anomalies, "anomaly_n": self.anomaly_n,
        }

    async def close_all(self) -> None:
        for c in self.conns:
            c.close()
        await asyncio.sleep(0.5)
        for c in self.conns:
            if c.t is not None and not c.t.is_closing():
                c.t.abort()


def _worker_handler(wire: str, tag: str) -> Handler:
    w = Worker(wire, tag)
    storm: asyncio.Task[None] | None = None

    async def handle(cmd: str, args: list[Any]) -> Any:
        nonlocal storm
        if cmd == "connect":
            return await w.connect(*args)
        if cmd == "storm":
            storm = asyncio.create_task(w.storm(*args))
            return True
        if cmd == "snap":
            return w.snap()
        if cmd == "final":
            if storm is not None and not storm.done():
                storm.cancel()
            return w.final()
        if cmd == "close":
            await w.close_all()
            return True
        raise ValueError(f"unknown load-generator command {cmd!r}")
    return handle


def worker_process(pipe: Any, wire: str, tag: str) -> None:
    run_child(pipe, lambda: _worker_handler(wire, tag))


class Workers(ProcessPool):
    """The parent's handle on the load-generator processes (fork, one pipe each)."""

    def __init__(self, n: int, wire: str, tag: str) -> None:
        super().__init__(n, worker_process, (wire, tag))


# --------------------------------------------------------------------------
# set-up: accounts, giftd, the battle
# --------------------------------------------------------------------------

async def setup(pool: asyncpg.Pool, redis: Redis, gifters: int
                ) -> tuple[list[Principal], list[Principal], dict[str, list[Principal]]]:
    """Streamers + rooms, gifter accounts with coins (grant -> credit script), viewer accounts.

    Accounts come from server.users.create_user; only its argon2 hash (0.12 s per
    account on this machine) is computed once and reused, since every benchmark
    account has the same password.
    """
    pw_hash = hash_password("password123")
    real_hash = users_mod.hash_password
    users_mod.hash_password = lambda _pw: pw_hash  # type: ignore[assignment]
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            streamers = []
            for room in ROOMS:
                s = await users_mod.create_user(conn, username=f"surge_{room}", role=Role.STREAMER,
                                                password="password123",
                                                display_name=f"Streamer {room}")
                await users_mod.create_room(conn, room_id=room, streamer_id=s.user_id,
                                            title=f"surge {room}")
                streamers.append(s)
            people = []
            for i in range(gifters):
                p = await users_mod.create_user(conn, username=f"surge_g{i}",
                                                password="password123", display_name=f"G{i}")
                await book_grant(conn, user_id=p.user_id, amount=COINS_PER_GIFTER,
                                 ref=f"surge:{p.user_id}")
                people.append(p)
            viewers: dict[str, list[Principal]] = {}
            for room in ROOMS:
                viewers[room] = [await users_mod.create_user(
                    conn, username=f"surge_v{room}{i}", password="password123",
                    display_name=f"V{room}{i}") for i in range(VIEWER_ACCOUNTS_PER_ROOM)]
    finally:
        users_mod.hash_password = real_hash
    credit = Script("credit")
    while await apply_pending(pool, redis, credit):
        pass
    return streamers, people, viewers


def start_giftd(tmp: Path, redis_url: str, database_url: str, workers: int,
                env_extra: dict[str, str]) -> str:
    exe = Path(sys.executable).with_name("giftd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_SECRET": SECRET, "GIFTD_PORT": str(port), "GIFTD_HOST": "127.0.0.1",
           "GIFTD_VAR_DIR": str(tmp / "giftd-var"), "GIFTD_FLUSHER": "1", **env_extra}
    logf = tmp / "giftd.log"
    args = [*cmd, "serve", "--log-level", "warning"]
    if workers > 1:
        args += ["--workers", str(workers)]
    with open(logf, "wb") as out:
        OWNED.giftd = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
    deadline = time.monotonic() + GIFTD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if OWNED.giftd.poll() is not None:
            raise RuntimeError(f"giftd serve exited with {OWNED.giftd.returncode}:\n"
                               + logf.read_text(errors="replace")[-3000:])
        m = re.search(r"giftd is up on (http://\S+?)/?\s", logf.read_text(errors="replace"))
        if m:
            base = m.group(1)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return base
        time.sleep(0.1)
    raise RuntimeError("giftd serve did not come up:\n" + logf.read_text(errors="replace")[-3000:])


def start_pk(base: str, streamers: list[Principal]) -> str:
    ta, tb = (issue_token(SECRET, s, 3600) for s in streamers)
    r = httpx.post(base + "/api/pk/invite", json={"room": ROOMS[1]},
                   headers={"Authorization": f"Bearer {ta}"}, timeout=10)
    r.raise_for_status()
    pk_id = str(r.json()["pk_id"])
    r = httpx.post(f"{base}/api/pk/{pk_id}/accept", headers={"Authorization": f"Bearer {tb}"},
                   timeout=10)
    r.raise_for_status()
    return pk_id


def tree_rss(pid: int | None) -> int:
    """RSS of a process and its children (giftd --workers: the supervisor and its workers)."""
    if pid is None:
        return 0
    total = 0
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        for q in [p, *p.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += q.memory_info().rss
    return total


def tree_pids(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    return [pid]


async def balances(redis: Redis, people: list[Principal]) -> dict[int, int]:
    vals = await redis.mget([keys.balance(p.user_id) for p in people])
    return {p.user_id: int(v or 0) for p, v in zip(people, vals, strict=True)}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------

@dataclass
class Config:
    viewers: int  # per room
    gifters: int
    sched: Schedule
    wire: str
    procs: int
    workers: int
    sample_every: int
    lift_limits: bool
    max_wall_s: float
    full: bool
    profile: bool


@dataclass
class Report:
    facts: dict[str, str] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def merge_hists(finals: list[dict[str, Any]], key: str) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {}
    for f in finals:
        for ph, h in f[key].items():
            out.setdefault(ph, Counter()).update({int(k): v for k, v in h.items()})
    return out


async def monitor(base: str, redis: Redis, rep: Report, t0: float, stop: asyncio.Event,
                  gpid: int) -> None:
    """Every second: flusher lag, backlog, tick lag, frames written, giftd RSS."""
    while not stop.is_set():
        m = await asyncio.to_thread(scrape_metrics, base)
        rep.series.append({
            "t": time.time() - t0,
            "flush_lag_ms": m.get("giftd_flush_lag_ms", float("nan")),
            "backlog": m.get("giftd_ledger_backlog", float("nan")),
            "xlen": float(await redis.xlen(keys.LEDGER_STREAM)),
            "tick_lag_ms": m.get("giftd_tick_lag_ms", float("nan")),
            "frames": m.get("giftd_frames_written", float("nan")),
            "send_queue": m.get("giftd_send_queue", float("nan")),
            "rss": float(tree_rss(gpid)),
        })
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def run(cfg: Config, wk: Workers, tmp: Path) -> int:
    rep = Report(facts=machine_facts())
    rep.facts["fds"] = f"RLIMIT_NOFILE {raise_nofile():,}"
    t_start = time.monotonic()
    sched = cfg.sched
    print_header(rep.facts, cfg)
    log("starting embedded Valkey (appendfsync always) and Postgres (fsync off)")
    OWNED.valkey = EmbeddedValkey(tmp / "valkey")
    OWNED.valkey.start()
    OWNED.pg = EmbeddedPostgres(tmp / "postgres", fsync=False)
    OWNED.pg.start()
    redis = Redis.from_url(OWNED.valkey.url)
    pool = await asyncpg.create_pool(OWNED.pg.url, min_size=1, max_size=4)
    try:
        log(f"creating 2 streamers + rooms, {cfg.gifters} gifters with coins (grant + credit "
            f"script), {VIEWER_ACCOUNTS_PER_ROOM} viewer accounts per room")
        streamers, gifters, viewer_acc = await setup(pool, redis, cfg.gifters)
        round_ms = int(sched.duration_s * 1000) + 5000  # the round ends just after the storm
        env = {"GIFTD_PK_ROUND_MS": str(round_ms),
               "GIFTD_PK_MULTIPLIER_WINDOW_MS": str(min(30_000, round_ms))}
        if cfg.lift_limits:
            env.update({"GIFTD_SEND_RATE_PER_S": "1000000", "GIFTD_SEND_BURST": "1000000",
                        "GIFTD_USER_SEND_RATE_PER_S": "1000000",
                        "GIFTD_USER_SEND_BURST": "1000000"})
        log(f"starting `giftd serve` (flusher on, workers {cfg.workers}, PK round "
            f"{int(env['GIFTD_PK_ROUND_MS']) / 1000:g} s)")
        base = start_giftd(tmp, OWNED.valkey.url, OWNED.pg.url, cfg.workers, env)
        assert OWNED.giftd is not None
        gpid = OWNED.giftd.pid
        port = int(base.rsplit(":", 1)[1])
        catalog = (await asyncio.to_thread(httpx.get, base + "/api/gifts", timeout=10)).json()
        prices = {g["code"]: int(g["price_coins"]) for g in catalog["gifts"]}
        await asyncio.sleep(1.0)
        rss_before = tree_rss(gpid)

        # connections: viewers per room, gifters alternate rooms; spread over the processes
        plan: list[tuple[str, str, bool, bool, int]] = []
        vtok = {r: [issue_token(SECRET, p, 7200) for p in viewer_acc[r]] for r in ROOMS}
        for i in range(cfg.viewers * len(ROOMS)):
            room = ROOMS[i % len(ROOMS)]
            plan.append((room, vtok[room][(i // 2) % len(vtok[room])],
                         i % cfg.sample_every == 0, False, i))
        for j, g in enumerate(gifters):
            plan.append((ROOMS[j % len(ROOMS)], issue_token(SECRET, g, 7200),
                         j % cfg.sample_every == 0, True, j))
        per_proc: list[list[tuple[str, str, bool, bool, int]]] = [[] for _ in wk.pipes]
        for i, item in enumerate(plan):
            per_proc[i % len(per_proc)].append(item)
        log(f"connecting {len(plan):,} connections ({cfg.viewers:,} viewers per room x 2 + "
            f"{cfg.gifters} gifters, wire {cfg.wire}) from {len(wk.pipes)} processes")
        t = time.monotonic()
        res = await wk.ask(each=[("connect", "127.0.0.1", port, pp) for pp in per_proc],
                           timeout=CONNECT_TIMEOUT_S)
        joined = sum(r["joined"] for r in res)
        joined_g = sum(r["gifters"] for r in res)
        errs: Counter[str] = Counter()
        for r in res:
            errs.update(r["errors"])
        retries = sum(r["join_retries"] for r in res)
        log(f"    {joined:,} joined ({joined_g} gifters) in {time.monotonic() - t:.1f}s"
            + (f"; failures {dict(errs)}" if errs else "")
            + (f"; joins answered `unavailable` and retried: {retries}" if retries else ""))
        rep.extra.update(joined=joined, joined_gifters=joined_g, connect_errors=dict(errs),
                         join_retries=retries, planned=len(plan))
        await asyncio.sleep(1.0)
        rss_joined = tree_rss(gpid)
        pk_id = start_pk(base, streamers)
        log(f"PK battle {pk_id} running between {ROOMS[0]} and {ROOMS[1]}")
        bal_before = await balances(redis, gifters)
        gift_rows_before = int(await pool.fetchval("SELECT count(*) FROM gift_events"))

        # the storm
        named = {"giftd": tree_pids(gpid),
                 "valkey": [OWNED.valkey.proc.pid],
                 "postgres": [OWNED.pg.proc.pid],
                 "load generator": wk.pids}
        t0 = time.time() + 1.0
        share = 1.0 / len(wk.pipes)
        await wk.ask(each=[("storm", t0, sched, share, prices) for _ in wk.pipes])
        log(f"storm: shape {sched.shape}, {sched.duration_s:g}s: "
            + ", ".join(f"{n} {a:g}-{b:g}s at {sched.rate(a):,.0f}"
                        + (f"->{sched.rate(b - 1e-6):,.0f}" if sched.shape == "ramp" else "")
                        + " gifts/s" for n, a, b in sched.phases()))
        stop_mon = asyncio.Event()
        mon = asyncio.create_task(monitor(base, redis, rep, t0, stop_mon, gpid))
        for name, a, b in sched.phases():
            await asyncio.sleep(max(0.0, t0 + a - time.time()))
            s0 = sum_snaps(await wk.ask("snap"))
            c0 = cpu_snap(named)
            m0 = await asyncio.to_thread(scrape_metrics, base)
            spy = None
            if cfg.profile and name == sched.phases()[-1][0]:
                # with --workers the supervisor idles: profile the first worker
                target = tree_pids(gpid)[1] if cfg.workers > 1 and len(tree_pids(gpid)) > 1 \
                    else gpid
                spy = await start_profile(target, max(1.0, b - a - 2), tmp / "giftd.folded")
            await asyncio.sleep(max(0.0, t0 + b - time.time()))
            c1 = cpu_snap(named)
            s1 = sum_snaps(await wk.ask("snap"))
            m1 = await asyncio.to_thread(scrape_metrics, base)
            win = s1["t"] - s0["t"]
            rep.phases[name] = {
                "seconds": win, "cpu": cores(c0, c1),
                "frames": s1["frames"] - s0["frames"], "bytes": s1["bytes"] - s0["bytes"],
                "events": s1["events"] - s0["events"],
                "server_frames": m1.get("giftd_frames_written", 0)
                - m0.get("giftd_frames_written", 0),
                "rss": tree_rss(gpid),
            }
            log(f"    {name}: {fmt_cores(rep.phases[name]['cpu'])}")
            if spy is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(spy.wait(), 30)
                if (tmp / "giftd.folded").exists():
                    rep.extra["profile"] = summarize_profile(tmp / "giftd.folded")
            if time.monotonic() - t_start > cfg.max_wall_s:
                log("max wall time reached: stopping early")
                break
        t_end = time.time()

        # the tail: acks, combo ends, every connection at its room's final seq, flusher drained
        log("storm over; waiting for acks, combo ends (3 s), every connection at its room's "
            "final seq, and the flusher")
        lag_ok_at: float | None = None
        deadline = time.monotonic() + 30
        stable_since, last_seqs = time.monotonic(), (-1,) * len(ROOMS)
        final_seqs: dict[str, int] = {}
        while time.monotonic() < deadline:
            seqs = tuple([int(await redis.get(keys.room_seq(r)) or 0) for r in ROOMS])
            if seqs != last_seqs:
                stable_since, last_seqs = time.monotonic(), seqs
            snaps = await wk.ask("snap")
            pending = sum(s["pending"] for s in snaps)
            mins = {r: min((s["min_seq"][r] for s in snaps if s["min_seq"][r] >= 0),
                           default=-1) for r in ROOMS}
            final_seqs = dict(zip(ROOMS, seqs, strict=True))
            caught_up = all(mins[r] == final_seqs[r] for r in ROOMS)
            if lag_ok_at is None and rep.series and rep.series[-1]["t"] > sched.duration_s:
                last = rep.series[-1]
                # giftd_flush_lag_ms keeps the last batch's value while the stream is
                # empty (billing/flusher.py sets it per flushed batch): empty = caught up
                if last["flush_lag_ms"] < FLUSH_LAG_TARGET_MS or last["xlen"] == 0:
                    lag_ok_at = last["t"] - sched.duration_s
            if (pending == 0 and caught_up and time.monotonic() - stable_since > 4.0
                    and lag_ok_at is not None):
                break
            await asyncio.sleep(0.25)
        drain_t = time.monotonic()
        while await redis.xlen(keys.LEDGER_STREAM) and time.monotonic() - drain_t < 120:
            await asyncio.sleep(0.2)
        stop_mon.set()
        await mon
        # the first 1-s sample after the storm with an empty write-behind stream
        drained_after_s = next((r["t"] - sched.duration_s for r in rep.series
                                if r["t"] >= sched.duration_s and r["xlen"] == 0),
                               time.time() - t_end)
        rep.extra["final_seqs"] = final_seqs
        rep.extra["lag_ok_after_s"] = lag_ok_at
        rep.extra["drained_after_s"] = drained_after_s
        rep.extra["xlen_end"] = await redis.xlen(keys.LEDGER_STREAM)
        finals = await wk.ask("final")
        mend = await asyncio.to_thread(scrape_metrics, base)
        rep.extra["slow_closes"] = mend.get("giftd_slow_consumer_closes", 0)
        rep.extra["gifts_metric"] = {k: v for k, v in mend.items()
                                     if k.startswith("giftd_gifts_total")}
        rep.extra["pk"] = (await asyncio.to_thread(httpx.get, f"{base}/api/pk/{pk_id}",
                                                   timeout=10)).json()

        # conservation
        bal_after = await balances(redis, gifters)
        spent = sum(bal_before[u] - bal_after[u] for u in bal_before)
        rows = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount_coins), 0)::bigint AS s FROM gift_events")
        assert rows is not None
        cons: dict[str, Any] = {
            "coins spent (Redis balances before - after)": spent,
            "coins in ok acks (load generator)": sum(f["ok_value"] for f in finals),
            "ledger gift rows added": int(rows["n"]) - gift_rows_before,
            "ok acks": sum(n for f in finals for (ph, o), n in f["outcomes"].items()
                           if o == "ok"),
            "coins in ledger gift rows": int(rows["s"]),
            "unflushed stream entries": rep.extra["xlen_end"],
        }
        unanswered = sum(f["unacked"] for f in finals)
        cons["sends never answered (connection dropped)"] = unanswered
        # Every coin that left a wallet is in the ledger; every ok ack has its row. A send
        # whose ack never came (its connection was dropped) may or may not have been
        # debited: a client would re-send it with the same id. Only those may explain
        # ledger rows and coins beyond what the acks say.
        extra_rows = cons["ledger gift rows added"] - cons["ok acks"]
        cons["ok"] = (cons["coins spent (Redis balances before - after)"]
                      == cons["coins in ledger gift rows"]
                      and 0 <= extra_rows <= unanswered
                      and (extra_rows > 0 or cons["coins in ok acks (load generator)"]
                           == cons["coins in ledger gift rows"])
                      and cons["unflushed stream entries"] == 0)
        try:
            from tests.support import check_invariants

            tot = await check_invariants(redis, pool)
            cons["check_invariants (tests/support.py)"] = f"PASS {tot}"
        except AssertionError as exc:
            cons["check_invariants (tests/support.py)"] = f"FAIL {exc!r}"[:300]
            cons["ok"] = False
        except ImportError as exc:
            cons["check_invariants (tests/support.py)"] = f"not run ({exc})"
        rep.extra["conservation"] = cons
        rep.extra["rss"] = (rss_before, rss_joined)
        log("closing connections; stopping giftd")
        await wk.ask("close")
        OWNED.stop_giftd()
        ok = print_report(cfg, rep, finals)
        print(f"\nwall time {time.monotonic() - t_start:.0f}s; temp dir {tmp}")
        return 0 if ok else 1
    finally:
        await pool.close()
        await redis.aclose()


def sum_snaps(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"t": max(s["t"] for s in snaps),
            **{k: sum(s[k] for s in snaps) for k in ("frames", "bytes", "events", "open",
                                                     "pending", "sent")}}


def print_header(facts: dict[str, str], cfg: Config) -> None:
    s = cfg.sched
    print()
    print("surge: a PK-battle gift surge, 2 rooms, from many asyncio connections")
    print("=" * 78)
    for k, v in facts.items():
        print(f"  {k:<16} {v}")
    print(f"  {'size':<16} 2 rooms x {cfg.viewers:,} viewers + {cfg.gifters} gifters, wire "
          f"{cfg.wire}; shape {s.shape}: base {s.base:,.0f}/s, peak {s.peak:,.0f}/s, "
          f"{s.duration_s:g}s (spike {s.spike_s:g}s)")
    print(f"  {'load generator':<16} {cfg.procs} processes (raw asyncio WebSockets, uvloop); "
          f"1 in {cfg.sample_every} connections parses every event")
    print(f"  {'giftd':<16} `giftd serve` subprocess, {cfg.workers} worker(s), flusher on, "
          f"send rate limits {'LIFTED' if cfg.lift_limits else 'as configured (20/s per conn)'}")
    print("  storage        embedded Valkey (AOF appendfsync always), Postgres fsync=off")
    print("  shared machine load generator, giftd, Valkey and Postgres all run here")
    print("=" * 78, flush=True)


def pcts(h: Counter[int] | None) -> str:
    if not h:
        return "n/a"
    return " / ".join(f"{hist_pct(h, q):,.1f}" for q in (0.5, 0.95, 0.99))


def print_report(cfg: Config, rep: Report, finals: list[dict[str, Any]]) -> bool:
    outcomes: Counter[tuple[str, str]] = Counter()
    sent: Counter[str] = Counter()
    ev_phase: Counter[str] = Counter()
    closed: Counter[int] = Counter()
    other: Counter[str] = Counter()
    last_seqs: Counter[tuple[str, int]] = Counter()
    for f in finals:
        outcomes.update(f["outcomes"])
        sent.update(f["sent_by_phase"])
        ev_phase.update(f["events_by_phase"])
        closed.update({int(k): v for k, v in f["closed"].items()})
        other.update(f["other"])
        last_seqs.update(f["last_seqs"])
    ack = merge_hists(finals, "ack_hist")
    lat = merge_hists(finals, "lat_hist")
    debit = merge_hists(finals, "debit_hist")
    tot = {k: sum(f[k] for f in finals) for k in (
        "gaps", "dups", "mismatch", "pre_join", "in_frame_bad", "merged_deliveries",
        "sampled_deliveries", "conns_with_gaps", "conns_with_dups", "skipped", "unacked",
        "anomaly_n")}
    conns = rep.extra.get("joined", 0)

    print()
    print("=" * 102)
    names = list(rep.phases)
    print(f"{'measurement':<46}" + "".join(f"{n:>28}" for n in names))
    print("-" * 102)

    def row(label: str, vals: list[str]) -> None:
        print(f"{label:<46}" + "".join(f"{v:>28}" for v in vals))

    def per_s(n: str, v: float) -> float:
        """Per second of the phase as measured (snapshots taken at its edges)."""
        sec = rep.phases[n]["seconds"]
        return v / sec if sec >= 1.0 else float("nan")  # < 1 s: the snapshots came too late

    span = {n: b - a for n, a, b in cfg.sched.phases()}

    def per_sched_s(n: str, v: float) -> float:
        """Per second of the phase as scheduled: for counts labelled with their phase at
        send time (sends, acks), whatever the snapshots' timing."""
        return v / span[n] if span.get(n) else 0.0

    row("window between snapshots (s)", [f"{rep.phases[n]['seconds']:.1f}" for n in names])
    row("gifts/s offered (schedule)", [f"{cfg.sched.rate(a):,.0f}" for n, a, _ in
                                       cfg.sched.phases() if n in rep.phases])
    row("gifts/s sent", [f"{per_sched_s(n, sent[n]):,.0f}" for n in names])
    all_outcomes = sorted({o for (_, o) in outcomes})
    for o in all_outcomes:
        row(f"  acked {o} /s", [f"{per_sched_s(n, outcomes[(n, o)]):,.1f}" for n in names])
    row("ack p50 / p95 / p99 (ms)", [pcts(ack.get(n)) for n in names])
    row("send->receipt p50 / p95 / p99 (ms)", [pcts(lat.get(n)) for n in names])
    row("debit->receipt p50 / p95 / p99 (ms)", [pcts(debit.get(n)) for n in names])
    row("logical deliveries/s (all connections)", [f"{per_s(n, rep.phases[n]['events']):,.0f}"
                                                   for n in names])
    row("frames/s received (all connections)", [f"{per_s(n, rep.phases[n]['frames']):,.0f}"
                                                for n in names])
    row("frames/s written (giftd /metrics)", [f"{per_s(n, rep.phases[n]['server_frames']):,.0f}"
                                              for n in names])
    row("MB/s received", [f"{per_s(n, rep.phases[n]['bytes']) / 1e6:,.1f}" for n in names])
    row("frames per connection per second", [
        f"{per_s(n, rep.phases[n]['frames']) / max(1, conns):.1f}" for n in names])
    row("giftd CPU (cores)", [f"{rep.phases[n]['cpu'].get('giftd', 0):.2f}" for n in names])
    row("valkey / postgres CPU (cores)", [
        f"{rep.phases[n]['cpu'].get('valkey', 0):.2f} / "
        f"{rep.phases[n]['cpu'].get('postgres', 0):.2f}" for n in names])
    row("load generator CPU (cores)", [f"{rep.phases[n]['cpu'].get('load generator', 0):.2f}"
                                       for n in names])
    row("OTHER processes on the machine (cores)", [f"{rep.phases[n]['cpu'].get('others', 0):.2f}"
                                                   for n in names])
    row("giftd CPU us per logical delivery", [
        f"{rep.phases[n]['cpu'].get('giftd', 0) * 1e6 / per_s(n, rep.phases[n]['events']):.2f}"
        if rep.phases[n]["events"] else "n/a" for n in names])
    row("giftd RSS at the end of the phase (MiB)", [f"{rep.phases[n]['rss'] / 2**20:,.0f}"
                                                    for n in names])
    print("=" * 102)
    late = [n for n in names
            if abs(rep.phases[n]["seconds"] - span.get(n, 0)) > 0.1 * span.get(n, 1)]
    if late:
        print(f"NOTE: the snapshots of {late} came late (the load generator was behind): their "
              "per-second rates from snapshots are distorted; sends and acks are counted by "
              "scheduled phase and are not")
    rb, rj = rep.extra["rss"]
    print(f"connections joined {conns:,} of {rep.extra['planned']:,} "
          f"({rep.extra['joined_gifters']} gifters); connect failures "
          f"{rep.extra['connect_errors'] or 0}; joins retried after `unavailable` "
          f"{rep.extra['join_retries']}")
    print(f"giftd RSS: {rb / 2**20:,.0f} MiB before connections, {rj / 2**20:,.0f} MiB joined "
          f"-> {(rj - rb) / max(1, conns) / 1024:,.1f} KiB per idle connection")
    spike = rep.phases.get("spike") or rep.phases.get(names[-1]) if names else None
    if spike:
        print(f"giftd RSS at the end of the storm: "
              f"{(spike['rss'] - rb) / max(1, conns) / 1024:,.1f} KiB per connection")
    if sum(ev_phase.values()):
        print(f"deliveries by phase of receipt: {dict(ev_phase)}")
    sd = tot["sampled_deliveries"]
    if sd:
        print(f"merged: {tot['merged_deliveries'] / sd:.1%} of the sampled connections' "
              "deliveries came inside merged events (send->receipt covers unmerged gifts; "
              "debit->receipt covers all)")

    print("\nflusher (sampled every second; t from the start of the storm):")
    ser = rep.series
    if ser:
        worst = max(ser, key=lambda r: r["flush_lag_ms"] if r["flush_lag_ms"] == r["flush_lag_ms"]
                    else -1)
        print(f"  max giftd_flush_lag_ms {worst['flush_lag_ms']:,.0f} at t={worst['t']:.0f}s; "
              f"max ledger backlog {max(r['xlen'] for r in ser):,.0f}; max tick lag "
              f"{max(r['tick_lag_ms'] for r in ser):,.0f} ms; max send queue "
              f"{max(r['send_queue'] for r in ser):,.0f}")
        step = max(1, len(ser) // 12)
        print("  t(s)  flush_lag_ms  backlog  tick_lag_ms  send_queue")
        for r in ser[::step]:
            print(f"  {r['t']:4.0f}  {r['flush_lag_ms']:12,.0f}  {r['xlen']:7,.0f}  "
                  f"{r['tick_lag_ms']:11,.0f}  {r['send_queue']:10,.0f}")
    lag_ok = rep.extra.get("lag_ok_after_s")
    print(f"  flush lag back under {FLUSH_LAG_TARGET_MS / 1000:g} s: "
          + (f"{lag_ok:.1f} s after the surge" if lag_ok is not None else "NOT within 30 s")
          + f"; stream fully drained {rep.extra['drained_after_s']:.1f} s after the surge")

    print("\nchecks (every connection, whole run):")
    fs = rep.extra["final_seqs"]
    behind = sum(n for (room, s), n in last_seqs.items() if s != fs.get(room))
    print(f"  events lost (gaps) {tot['gaps']:,} on {tot['conns_with_gaps']:,} connections; "
          f"duplicated {tot['dups']:,} on {tot['conns_with_dups']:,}; event-less tick seq "
          f"mismatches {tot['mismatch']:,}; ticks before joined {tot['pre_join']:,}; in-frame "
          f"seq breaks (sampled) {tot['in_frame_bad']:,}")
    print(f"  rooms' final seqs {fs}; open connections not at their room's final seq: "
          f"{behind:,}")
    print(f"  connections closed by the server: {dict(closed) or 0} (giftd_slow_consumer_closes "
          f"{rep.extra['slow_closes']:,.0f})")
    print(f"  sends never answered {tot['unacked']:,}; sends skipped because every gifter's "
          f"window was full {tot['skipped']:,}")
    if other:
        print(f"  other messages: {dict(other)}")
    for f in finals:
        for a in f["anomalies"][:5]:
            print(f"  anomaly: {a}")
    cons = rep.extra["conservation"]
    print("\ncoins (after the flusher drained):")
    for k, v in cons.items():
        if k != "ok":
            print(f"  {k:<48} {v:,}" if isinstance(v, int) else f"  {k:<48} {v}")
    pk = rep.extra.get("pk") or {}
    print(f"  PK battle: state {pk.get('state')}, scores {pk.get('score_a')}:{pk.get('score_b')}")
    lost_ok = not (tot["gaps"] or tot["dups"] or tot["mismatch"] or tot["pre_join"]
                   or tot["in_frame_bad"] or behind)
    verdict = lost_ok and cons["ok"] and not closed
    print(f"\n=> {'PASS' if verdict else 'FAIL'}: "
          f"lost/duplicated {'none' if lost_ok else 'SOME'}, coins "
          f"{'conserved' if cons['ok'] else 'NOT conserved'}, "
          f"{'nobody dropped' if not closed else f'{sum(closed.values())} connections dropped'}")
    targets(cfg, rep, lat, lag_ok, lost_ok, cons["ok"])
    if rep.extra.get("profile"):
        print(f"\npy-spy of giftd during the {list(rep.phases)[-1]} phase (costs CPU: a "
              "--profile run's figures are not comparable):")
        for line in rep.extra["profile"]:
            print(f"  {line}")
    return verdict


def targets(cfg: Config, rep: Report, lat: dict[str, Counter[int]], lag_ok: float | None,
            lost_ok: bool, cons_ok: bool) -> None:
    issue = cfg.viewers >= 2500 and cfg.sched.peak >= 5000
    ph = "spike" if "spike" in rep.phases else next(iter(rep.phases), "")
    p99 = hist_pct(lat.get(ph, Counter()), 0.99)
    print(f"\nissue 7's PK-surge targets ({'at the issue size' if issue else 'SCALED DOWN: '}"
          + ("" if issue else f"2 x {cfg.viewers:,} viewers, {cfg.sched.peak:,.0f} gifts/s, "
             "not 2 x 2,500 at 5,000/s") + "):")
    print(f"  0 lost, 0 duplicated:                          {'met' if lost_ok else 'MISSED'}")
    print(f"  coins conserved:                               {'met' if cons_ok else 'MISSED'}")
    print(f"  send->receipt p99 <= 250 ms ({ph}):        {p99:,.0f} ms, "
          f"{'met' if p99 <= 250 else 'MISSED'}")
    print("  flusher lag < 2 s within 10 s of the surge:    "
          + (f"{lag_ok:.1f} s, {'met' if lag_ok <= 10 else 'MISSED'}" if lag_ok is not None
             else "MISSED"))


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="the issue's size: 2 rooms x 2,500 viewers, 500/s then 5,000 gifts/s "
                         "for the last 30 s")
    ap.add_argument("--viewers", type=int, help="viewers per room (default 500; --full 2,500)")
    ap.add_argument("--gifters", type=int,
                    help=f"gifter connections, one account each (default: peak / "
                         f"{PER_GIFTER_RATE_MAX:g}, so none exceeds the 20/s limit)")
    ap.add_argument("--shape", choices=("pk", "steady", "ramp"), default="pk")
    ap.add_argument("--base-rate", type=float, help="gifts/s before the spike (default 200; "
                    "--full 500)")
    ap.add_argument("--peak-rate", type=float, help="gifts/s in the spike (default 1,000; "
                    "--full 5,000)")
    ap.add_argument("--duration", type=float, help="storm length in s (default 45; --full 60)")
    ap.add_argument("--spike-seconds", type=float, default=30.0,
                    help="the PK final-seconds spike (shape pk)")
    ap.add_argument("--wire", choices=("json", "msgpack"), default="json")
    ap.add_argument("--procs", type=int, help="load-generator processes (default: one per "
                    "1,500 connections, at least 2)")
    ap.add_argument("--workers", type=int, default=1, help="giftd serve --workers")
    ap.add_argument("--sample-every", type=int, default=10)
    ap.add_argument("--lift-limits", action="store_true",
                    help="lift the per-connection/per-user send rate limits")
    ap.add_argument("--max-wall", type=float, default=600.0,
                    help="stop the storm early after this many seconds of wall time")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the giftd process during the last phase")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    a = ap.parse_args(argv)
    full = a.full
    viewers = a.viewers or (2500 if full else 500)
    base = a.base_rate if a.base_rate is not None else (500.0 if full else 200.0)
    peak = a.peak_rate if a.peak_rate is not None else (5000.0 if full else 1000.0)
    dur = a.duration or (60.0 if full else 45.0)
    top = max(base, peak) if a.shape != "steady" else base
    gifters = a.gifters or max(4, math.ceil(top / PER_GIFTER_RATE_MAX))
    conns = 2 * viewers + gifters
    return Config(
        viewers=viewers, gifters=gifters,
        sched=Schedule(a.shape, dur, base, peak, min(a.spike_seconds, dur)),
        wire=a.wire, procs=a.procs or max(2, math.ceil(conns / 1500)), workers=a.workers,
        sample_every=max(1, a.sample_every), lift_limits=a.lift_limits,
        max_wall_s=a.max_wall, full=full, profile=a.profile,
    ), a.keep


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg, keep = parse_args(argv)
    tag = f"s{int(time.time()) % 100000}-"
    wk = Workers(cfg.procs, cfg.wire, tag)  # forked first, before any loop or thread
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="giftd-surge-"))
    os.chmod(tmp, 0o755)
    OWNED.tmp, OWNED.keep_tmp = tmp, keep
    try:
        import uvloop

        return uvloop.run(run(cfg, wk, tmp))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        wk.stop()
        OWNED.close()


if __name__ == "__main__":
    raise SystemExit(main())
