#!/usr/bin/env python
"""bench_spine: giftd's gift path end to end, against the ceiling of its own Lua script.

A benchmark, not a test. One run, one machine, everything measured side by side:

  (a)  giftd end to end: a real `giftd serve` subprocess (flusher on) and K
       WebSocket clients in this process, each keeping a window of sends in
       flight, sending roses to one room: acked gifts/s (outcome ok), ack
       latency p50/p99 (send -> ack).
  (a2) the same at fixed rates, 80% and 50% of (a)'s peak (each phase starts
       once the flusher has drained the previous one): ack latency there.
  then: the flusher drains, and the Postgres ledger is checked against the acks
       (one row per ok ack, same event ids, nothing extra, journal balanced).
  (b)  the ceiling of the same script (gifts/lua/send_gifts.lua) on the same
       Valkey, giftd stopped: raw EVALSHA with pre-built batches from a few
       concurrent callers; the same through GiftSender.send_many (giftd's own
       argument building); and `redis-benchmark` (redis-tools) with a one-gift
       batch and -P 16 pipelining, when it is on PATH.

Run:
    .venv/bin/python loadtest/bench_spine.py            # short default, < 2 min
    .venv/bin/python loadtest/bench_spine.py --full     # longer, more connections
    .venv/bin/python loadtest/bench_spine.py --durability everysec
    .venv/bin/python loadtest/bench_spine.py --profile   # py-spy giftd during each giftd phase
    .venv/bin/python loadtest/bench_spine.py --sweep     # raw EVALSHA at other batch sizes

Valkey and Postgres are the embedded ones (server/embedded.py) in a temporary
directory, removed at exit. Valkey runs with AOF `appendfsync always` by
default (giftd's production default); Postgres runs with fsync=off (the
ledger's write cost is not what this benchmark measures; it is the flusher's
benchmark's job). Everything - load generator, giftd, Valkey, Postgres - shares
this machine's cores; the header says how many.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from array import array
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
import websockets  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from billing.credits import apply_pending, book_grant  # noqa: E402
from billing.migrate import migrate  # noqa: E402
from gifts.catalog import Gift  # noqa: E402
from gifts.scripts import Script  # noqa: E402
from gifts.sender import GiftSender, SendRequest  # noqa: E402
from server import keys  # noqa: E402
from server.auth import Principal, Role, issue_token  # noqa: E402
from server.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.users import create_room, create_user  # noqa: E402

SECRET = "bench-secret-not-for-production-0123456789"
ROOM = "bench"
GIFT = "rose"
COINS_PER_VIEWER = 10**12  # nobody runs out: every send should be `ok`
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIFTD_START_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 180
ACK_TAIL_TIMEOUT_S = 30
# The per-connection and per-user send rate limits (20/s and 50/s by default)
# protect a real room from a flooding client; this benchmark measures the debit
# path behind them, so it lifts them to their maximum.
LIMITS_LIFTED = {"GIFTD_SEND_RATE_PER_S": "1000000", "GIFTD_SEND_BURST": "1000000",
                 "GIFTD_USER_SEND_RATE_PER_S": "1000000", "GIFTD_USER_SEND_BURST": "1000000"}
PRE_JOIN: Counter[str] = Counter()  # messages a client got before its `joined`


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# processes we start, stopped in order whatever happens
# --------------------------------------------------------------------------

class Owned:
    """Everything this run started; `close` stops it all, once, in dependency order."""

    def __init__(self) -> None:
        self.tmp: Path | None = None
        self.keep_tmp = False
        self.giftd: subprocess.Popen[bytes] | None = None
        self.more_giftd: list[subprocess.Popen[bytes]] = []  # e.g. bench_fanout's ingress node
        self.valkey: EmbeddedValkey | None = None
        self.pg: EmbeddedPostgres | None = None
        self._closed = False

    def stop_giftd(self) -> None:
        procs = [self.giftd, *self.more_giftd]
        self.giftd, self.more_giftd = None, []
        for p in procs:
            if p is None or p.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for step in (self.stop_giftd,
                     self.pg.stop if self.pg else None,
                     self.valkey.stop if self.valkey else None):
            try:
                if step is not None:
                    step()
            except Exception as exc:  # keep stopping the rest
                print(f"cleanup: {exc!r}", file=sys.stderr)
        if self.tmp is not None and not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp is not None:
            print(f"kept {self.tmp}", file=sys.stderr)


OWNED = Owned()


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwind through the finally blocks like Ctrl-C


# --------------------------------------------------------------------------
# CPU accounting from /proc: who used the cores during a phase
# --------------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, float, float]]:
    """pid -> (ppid, own cpu s, cpu s of its exited and reaped children)."""
    out: dict[int, tuple[int, float, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2:].split()
        # after the comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        out[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK,
                       (int(rest[13]) + int(rest[14])) / CLK_TCK)
    return out


def _tree_cpu(table: dict[int, tuple[int, float, float]], root: int | None
              ) -> tuple[float, float]:
    """(cpu s of root itself, cpu s of all its descendants, live or reaped)."""
    if root is None or root not in table:
        return 0.0, 0.0
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    own = table[root][1]
    desc, stack = table[root][2], list(kids.get(root, []))
    while stack:
        pid = stack.pop()
        desc += table[pid][1] + table[pid][2]
        stack.extend(kids.get(pid, []))
    return own, desc


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all processes, all cores)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


def cpu_snapshot() -> dict[str, float]:
    machine = _machine_busy_s()
    t = _proc_table()
    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    kids_ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped: redis-benchmark, py-spy
    giftd = _tree_cpu(t, OWNED.giftd.pid if OWNED.giftd else None)
    valkey = _tree_cpu(t, OWNED.valkey.proc.pid if OWNED.valkey and OWNED.valkey.proc else None)
    pg = _tree_cpu(t, OWNED.pg.proc.pid if OWNED.pg and OWNED.pg.proc else None)
    more = sum(sum(_tree_cpu(t, p.pid)) for p in OWNED.more_giftd)
    return {
        "time": time.monotonic(),
        "giftd": sum(giftd),
        "giftd flush (own process)": more,
        "valkey": valkey[0],
        "valkey AOF-rewrite child": valkey[1],  # the fork that rewrites the AOF
        "postgres": sum(pg),  # postmaster + backends
        "bench": self_ru.ru_utime + self_ru.ru_stime,
        "redis-benchmark/py-spy": kids_ru.ru_utime + kids_ru.ru_stime,
        "machine": machine,
    }


def cpu_cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores used per process over the interval, plus `others`: everything not ours."""
    wall = after["time"] - before["time"]
    out = {k: (after[k] - before[k]) / wall for k in before if k not in ("time", "machine")}
    machine = (after["machine"] - before["machine"]) / wall
    out["others"] = max(0.0, machine - sum(out.values()))
    return out


def fmt_cpu(cores: dict[str, float]) -> str:
    ours = {k: v for k, v in cores.items() if k != "others"}
    parts = [f"{k} {v:.2f}" for k, v in ours.items() if v >= 0.005]
    return ("cores used: " + ", ".join(parts) + f" (ours {sum(ours.values()):.2f}); "
            f"other processes on the machine {cores.get('others', 0):.2f}")


# --------------------------------------------------------------------------
# Valkey-side counters: how busy the script kept the server
# --------------------------------------------------------------------------

async def evalsha_stats(r: Redis) -> tuple[int, int]:
    info = await r.info("commandstats")
    s = info.get("cmdstat_evalsha") or {}
    return int(s.get("calls", 0)), int(s.get("usec", 0))


async def inner_usec(r: Redis) -> int:
    """usec spent in the commands scripts call (everything but EVALSHA and INFO itself)."""
    info = await r.info("commandstats")
    return sum(int(v.get("usec", 0)) for k, v in info.items()
               if k not in ("cmdstat_evalsha", "cmdstat_info"))


def fsync_probe(d: Path, n: int = 100) -> str:
    """fsync latency of the data dir's disk: what `appendfsync always` waits for."""
    path = d / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ts = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 512)
            t = time.perf_counter()
            os.fsync(fd)
            ts.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    ts.sort()
    return (f"p50 {ts[n // 2] * 1e3:.2f} ms, p90 {ts[int(n * 0.9)] * 1e3:.2f} ms, "
            f"max {ts[-1] * 1e3:.2f} ms ({n} x 512 B append+fsync)")


async def aof_rewrites(r: Redis) -> int:
    info = await r.info("persistence")
    return int(info.get("aof_rewrites", 0)) + int(info.get("aof_rewrite_in_progress", 0))


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    seconds: float = 0.0  # measured window
    ok: int = 0  # ok outcomes inside the measured window
    sent: int = 0  # sends issued inside the measured window
    outcomes: Counter[str] = field(default_factory=Counter)  # whole phase incl. warm-up/tail
    errors: Counter[str] = field(default_factory=Counter)
    lat: array = field(default_factory=lambda: array("d"))  # seconds, sends in the window
    cpu: dict[str, float] = field(default_factory=dict)
    script_calls: int = 0
    script_usec: int = 0
    gifts_in_calls: int = 0  # gifts debited by the script (all outcomes) during the window
    aof_rewrites: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.lat:
            return float("nan")
        s = sorted(self.lat)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000


# --------------------------------------------------------------------------
# set-up through the real paths
# --------------------------------------------------------------------------

async def setup_accounts(pool: asyncpg.Pool, redis: Redis, viewers: int
                         ) -> tuple[Principal, list[Principal]]:
    async with pool.acquire() as conn:
        await migrate(conn)
        streamer = await create_user(conn, username="bench_streamer", password="password123",
                                     display_name="Bench Streamer", role=Role.STREAMER)
        await create_room(conn, room_id=ROOM, streamer_id=streamer.user_id, title="bench live")
        people = []
        for i in range(viewers):
            p = await create_user(conn, username=f"bench_v{i}", password="password123",
                                  display_name=f"Viewer {i}")
            await book_grant(conn, user_id=p.user_id, amount=COINS_PER_VIEWER,
                             ref=f"bench:{p.user_id}")
            people.append(p)
    credit = Script("credit")
    while await apply_pending(pool, redis, credit):
        pass
    for p in people:
        bal = int(await redis.get(keys.balance(p.user_id)) or 0)
        if bal != COINS_PER_VIEWER:
            raise RuntimeError(f"viewer {p.user_id}: balance {bal} after the grant")
    return streamer, people


def start_giftd(tmp: Path, redis_url: str, database_url: str,
                flusher_process: bool = False) -> str:
    """`giftd serve` as a child process; returns its base URL once /health answers.

    With `flusher_process`, the ledger flusher runs as its own `giftd flush`
    process (OWNED.more_giftd) instead of inside the gateway's event loop.
    """
    exe = Path(sys.executable).with_name("giftd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_SECRET": SECRET, "GIFTD_PORT": str(port), "GIFTD_HOST": "127.0.0.1",
           "GIFTD_VAR_DIR": str(tmp / "giftd-var"),
           "GIFTD_FLUSHER": "0" if flusher_process else "1", **LIMITS_LIFTED}
    if flusher_process:
        with open(tmp / "flusher.log", "wb") as out:
            OWNED.more_giftd.append(subprocess.Popen(
                [*cmd, "flush"], env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))
    logf = tmp / "giftd.log"
    with open(logf, "wb") as out:
        OWNED.giftd = subprocess.Popen([*cmd, "serve", "--log-level", "warning"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # Ctrl-C: we stop it, in order
    deadline = time.monotonic() + GIFTD_START_TIMEOUT_S
    base = ""
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


def scrape_metrics(base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


# --------------------------------------------------------------------------
# (a) the WebSocket load generator
# --------------------------------------------------------------------------

class WsClient:
    """One viewer's socket: a sender task per phase, one reader for the whole run."""

    def __init__(self, idx: int, ws: Any, run_tag: str) -> None:
        self.idx = idx
        self.ws = ws
        self.prefix = f"{run_tag}-{idx}-"
        self.n = 0
        self.pending: dict[str, tuple[float, Phase, bool]] = {}  # id -> (t0, phase, in window)
        self.sem = asyncio.Semaphore(1)
        self.ok_event_ids: list[str] = []
        self.ticks = 0
        self.tick_bytes = 0
        self.closed_code: int | None = None
        self.unacked_total = 0  # sends whose ack never came (the socket closed, say)
        self.window_open = (0.0, 0.0)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        recv = self.ws.recv
        try:
            while True:
                raw = await recv(decode=False)
                if raw.startswith(b'{"type":"tick"'):
                    self.ticks += 1
                    self.tick_bytes += len(raw)
                    continue
                now = time.perf_counter()
                msg = orjson.loads(raw)
                kind = msg.get("type")
                if kind not in ("ack", "error"):
                    continue  # earnings feed, pong, ...
                cid = msg.get("id")
                entry = self.pending.pop(cid, None) if cid is not None else None
                if entry is None:
                    if kind == "error":
                        print(f"  conn {self.idx}: error without a pending id: {msg}",
                              file=sys.stderr)
                    continue
                t0, phase, in_window = entry
                if kind == "ack":
                    outcome = msg["outcome"]
                    phase.outcomes[outcome] += 1
                    if outcome == "ok":
                        self.ok_event_ids.append(msg["event_id"])
                else:
                    phase.errors[msg.get("code", "?")] += 1
                if in_window:
                    phase.lat.append(now - t0)
                if kind == "ack" and msg["outcome"] == "ok":
                    lo, hi = self.window_open
                    if lo <= now < hi:  # throughput: ok acks that arrived in the window
                        phase.ok += 1
                self.sem.release()
        except websockets.ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else None

    def _msg(self) -> tuple[str, str]:
        self.n += 1
        cid = f"{self.prefix}{self.n}"
        return cid, (f'{{"type":"gift","id":"{cid}","room":"{ROOM}","gift":"{GIFT}",'
                     f'"count":1}}')

    async def closed_loop(self, phase: Phase, stop: asyncio.Event) -> None:
        send, sem, pending, clock = self.ws.send, self.sem, self.pending, time.perf_counter
        lo, hi = self.window_open
        while not stop.is_set():
            await sem.acquire()
            if stop.is_set():
                sem.release()
                return
            cid, text = self._msg()
            t0 = clock()
            in_window = lo <= t0 < hi
            if in_window:
                phase.sent += 1
            pending[cid] = (t0, phase, in_window)
            await send(text)

    async def paced(self, phase: Phase, stop: asyncio.Event, rate: float) -> None:
        send, sem, pending, clock = self.ws.send, self.sem, self.pending, time.perf_counter
        lo, hi = self.window_open
        interval = 1.0 / rate
        next_t = clock()
        while not stop.is_set():
            now = clock()
            while next_t <= now and not stop.is_set():
                await sem.acquire()
                cid, text = self._msg()
                t0 = clock()
                in_window = lo <= t0 < hi
                if in_window:
                    phase.sent += 1
                pending[cid] = (t0, phase, in_window)
                await send(text)
                next_t += interval
            await asyncio.sleep(max(0.002, next_t - clock()))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def connect_clients(base: str, people: list[Principal], conns: int, run_tag: str
                          ) -> list[WsClient]:
    ws_url = base.replace("http://", "ws://") + "/ws"
    clients = []
    for i in range(conns):
        p = people[i % len(people)]
        ws = await websockets.connect(f"{ws_url}?token={issue_token(SECRET, p, 3600)}",
                                      max_size=None, ping_interval=None, compression=None,
                                      open_timeout=20)
        await ws.send(orjson.dumps({"type": "join", "room": ROOM}).decode())
        while True:
            msg = orjson.loads(await asyncio.wait_for(ws.recv(decode=False), 10))
            if msg.get("type") == "joined":
                break
            if msg.get("type") == "error":
                raise RuntimeError(f"join failed: {msg}")
            PRE_JOIN[str(msg.get("type"))] += 1  # a message before the join's answer
        clients.append(WsClient(i, ws, run_tag))
    return clients


def pyspy_exe() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


async def start_profile(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    exe = pyspy_exe()
    if exe is None:
        log("py-spy not found (pip install py-spy); no profile")
        return None
    return await asyncio.create_subprocess_exec(
        exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "97",
        "-f", "raw", "-o", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 18) -> list[str]:
    """Collapsed stacks -> the functions with the most samples, self and inclusive."""
    self_n: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        total += n
        frames = stack.split(";")
        self_n[_frame_name(frames[-1])] += n
        for f in {_frame_name(f) for f in frames}:
            incl[f] += n
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples (busy only); self = in that function, incl = with callees"]
    out.append("  self%  function")
    out += [f"  {n / total * 100:5.1f}  {f}" for f, n in self_n.most_common(top)]
    # Frames on (nearly) every stack are the event loop and uvicorn around everything.
    outer = {f for f, n in incl.items() if n / total >= 0.8}
    out.append("  incl%  function (outer frames - event loop, uvicorn, cli - left out)")
    out += [f"  {n / total * 100:5.1f}  {f}" for f, n in incl.most_common(top + len(outer))
            if f not in outer][:top]
    return out


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    short = "/".join(path.split("/")[-2:])
    return f"{func} ({short})"


async def run_ws_phase(clients: list[WsClient], redis: Redis, name: str, warmup_s: float,
                       seconds: float, window: int, rate: float | None,
                       profile: Path | None = None) -> Phase:
    phase = Phase(name, seconds=seconds)
    for c in clients:
        c.sem = asyncio.Semaphore(window)
    stop = asyncio.Event()
    t_start = time.perf_counter()
    lo, hi = t_start + warmup_s, t_start + warmup_s + seconds
    for c in clients:
        c.window_open = (lo, hi)
    if rate is None:
        senders = [asyncio.create_task(c.closed_loop(phase, stop)) for c in clients]
    else:
        senders = [asyncio.create_task(c.paced(phase, stop, rate / len(clients)))
                   for c in clients]
    spy = None
    try:
        await asyncio.sleep(warmup_s)
        cpu0, (calls0, usec0) = cpu_snapshot(), await evalsha_stats(redis)
        rw0 = await aof_rewrites(redis)
        d0 = await ledger_added(redis)
        if profile is not None and OWNED.giftd is not None:
            spy = await start_profile(OWNED.giftd.pid, hi - time.perf_counter() - 0.5, profile)
        await asyncio.sleep(max(0.0, hi - time.perf_counter()))
        cpu1, (calls1, usec1) = cpu_snapshot(), await evalsha_stats(redis)
        rw1 = await aof_rewrites(redis)
        d1 = await ledger_added(redis)
        stop.set()
        # Senders blocked on a full window leave once their acks come back.
        done, _ = await asyncio.wait(senders, timeout=ACK_TAIL_TIMEOUT_S)
        errors = [t.exception() for t in done if t.exception() is not None]
        if errors:
            phase.extra["sender_errors"] = [repr(e) for e in errors]
        deadline = time.monotonic() + ACK_TAIL_TIMEOUT_S
        while any(c.pending for c in clients) and time.monotonic() < deadline:
            if all(c.reader.done() for c in clients if c.pending):
                break  # the only sends still pending are on closed sockets
            await asyncio.sleep(0.05)
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
            if profile is not None and profile.exists():
                phase.extra["profile"] = summarize_profile(profile)
    finally:
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        if spy is not None and spy.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                spy.kill()
            await spy.wait()
    phase.cpu = cpu_cores(cpu0, cpu1)
    phase.script_calls, phase.script_usec = calls1 - calls0, usec1 - usec0
    phase.gifts_in_calls = d1 - d0  # debits the script applied in the window
    phase.aof_rewrites = rw1 - rw0
    phase.extra["unacked"] = sum(len(c.pending) for c in clients)
    for c in clients:
        c.unacked_total += len(c.pending)
        c.pending.clear()  # late acks for these are ignored; the ledger check allows for them
    phase.extra["closed"] = [c.closed_code for c in clients if c.reader.done()]
    return phase


# --------------------------------------------------------------------------
# (b) the script alone
# --------------------------------------------------------------------------

CID_MARK = "CIDMARK"  # placeholder client id, found again in the captured arguments


class _Captured(Exception):
    def __init__(self, captured: list[Any]) -> None:
        super().__init__("captured")
        self.captured = captured


class _CaptureScript(Script):
    """Stands in for the script: keeps the arguments GiftSender built, runs nothing."""

    def __init__(self) -> None:
        super().__init__("send_gifts")

    async def __call__(self, redis: Redis, args: list[Any]) -> Any:
        raise _Captured(list(args))


@dataclass
class GiftSpec:
    room: str
    streamer_id: int
    gift: Gift
    settings: Settings  # with the ledger backlog limit lifted: giftd is stopped, nothing flushes

    def request(self, p: Principal, cid: str) -> SendRequest:
        return SendRequest(p.user_id, p.name, cid, self.room, self.streamer_id, self.gift, 1)


async def script_header(spec: GiftSpec, users: list[Principal]) -> list[Any]:
    """The EVALSHA arguments before the gifts, exactly as GiftSender builds them (so the
    bench follows the script's argument layout as it changes). Each gift then is one
    argument: GiftSender's own `SendRequest.packed()`."""
    sender = GiftSender(Redis(), _CaptureScript(), spec.settings)
    try:
        await sender.send_many([spec.request(p, f"{CID_MARK}{j}") for j, p in enumerate(users)])
    except _Captured as cap:
        return cap.captured[: len(cap.captured) - len(users)]
    raise RuntimeError("GiftSender.send_many did not call its script")


async def ledger_added(r: Redis) -> int:
    """Entries ever added to the write-behind stream (XDEL by the flusher does not lower it)."""
    try:
        info: dict[Any, Any] = dict(await r.xinfo_stream(keys.LEDGER_STREAM))
    except Exception:  # no stream yet
        return 0
    for k in ("entries-added", b"entries-added"):
        if k in info:
            return int(info[k])
    raise RuntimeError("XINFO STREAM has no entries-added (Redis >= 7 needed)")


async def raw_script_phase(redis_url: str, spec: GiftSpec, people: list[Principal],
                           callers: int, batch: int, seconds: float, run_tag: str,
                           warmup_s: float = 1.0) -> Phase:
    """Pre-built EVALSHA batches: only the client ids change from call to call."""
    phase = Phase(f"raw EVALSHA, {batch} gifts/call, {callers} callers", seconds=seconds)
    r = Redis.from_url(redis_url, max_connections=callers + 4)
    script = Script("send_gifts")
    await script.load(r)
    lo_hi = [0.0, 0.0]

    async def caller(k: int) -> None:
        users = [people[(k + j) % len(people)] for j in range(batch)]
        head = await script_header(spec, users)
        n = 0
        prefix = f"{run_tag}-raw{batch}x{callers}-{k}-"  # unique per phase: no `duplicate`s
        clock = time.perf_counter
        while clock() < lo_hi[1]:
            gifts = []
            for j in range(batch):
                n += 1
                gifts.append(spec.request(users[j], f"{prefix}{n}").packed())
            args = [*head, *gifts]
            t0 = clock()
            res = await r.execute_command("EVALSHA", script.sha, 0, *args)
            t1 = clock()
            ok = sum(1 for row in res if row[0] == b"ok")
            phase.outcomes["ok"] += ok
            if ok != len(res):
                for row in res:
                    if row[0] != b"ok":
                        phase.outcomes[row[0].decode()] += 1
            if lo_hi[0] <= t0 and t1 < lo_hi[1]:
                phase.ok += ok
                phase.lat.append(t1 - t0)

    try:
        t = time.perf_counter()
        lo_hi[:] = [t + warmup_s, t + warmup_s + seconds]
        tasks = [asyncio.create_task(caller(k)) for k in range(callers)]
        await asyncio.sleep(warmup_s)
        cpu0, (c0, u0) = cpu_snapshot(), await evalsha_stats(r)
        rw0, i0, d0 = await aof_rewrites(r), await inner_usec(r), await ledger_added(r)
        await asyncio.sleep(seconds)
        cpu1, (c1, u1) = cpu_snapshot(), await evalsha_stats(r)
        rw1, i1, d1 = await aof_rewrites(r), await inner_usec(r), await ledger_added(r)
        await asyncio.gather(*tasks)
    finally:
        await r.aclose()
    phase.cpu = cpu_cores(cpu0, cpu1)
    phase.script_calls, phase.script_usec = c1 - c0, u1 - u0
    phase.gifts_in_calls = d1 - d0
    phase.aof_rewrites = rw1 - rw0
    phase.extra["inner_usec"] = i1 - i0
    return phase


async def send_many_phase(redis_url: str, spec: GiftSpec, people: list[Principal],
                          callers: int, batch: int, seconds: float, run_tag: str,
                          warmup_s: float = 1.0) -> Phase:
    """GiftSender.send_many: giftd's own argument building and result parsing, no sockets."""
    phase = Phase(f"GiftSender.send_many, {batch}/call, {callers} callers", seconds=seconds)
    r = Redis.from_url(redis_url, max_connections=callers + 4)
    sender = GiftSender(r, Script("send_gifts"), spec.settings)
    lo_hi = [0.0, 0.0]

    async def caller(k: int) -> None:
        n = 0
        clock = time.perf_counter
        while clock() < lo_hi[1]:
            reqs = []
            for j in range(batch):
                n += 1
                reqs.append(spec.request(people[(k + j) % len(people)], f"{run_tag}-sm{k}-{n}"))
            t0 = clock()
            res = await sender.send_many(reqs)
            t1 = clock()
            ok = 0
            for x in res:
                phase.outcomes[x.outcome.value] += 1
                ok += x.outcome.value == "ok"
            if lo_hi[0] <= t0 and t1 < lo_hi[1]:
                phase.ok += ok
                phase.lat.append(t1 - t0)

    try:
        t = time.perf_counter()
        lo_hi[:] = [t + warmup_s, t + warmup_s + seconds]
        tasks = [asyncio.create_task(caller(k)) for k in range(callers)]
        await asyncio.sleep(warmup_s)
        cpu0, (c0, u0) = cpu_snapshot(), await evalsha_stats(r)
        rw0, d0 = await aof_rewrites(r), await ledger_added(r)
        await asyncio.sleep(seconds)
        cpu1, (c1, u1) = cpu_snapshot(), await evalsha_stats(r)
        rw1, d1 = await aof_rewrites(r), await ledger_added(r)
        await asyncio.gather(*tasks)
    finally:
        await r.aclose()
    phase.cpu = cpu_cores(cpu0, cpu1)
    phase.script_calls, phase.script_usec = c1 - c0, u1 - u0
    phase.gifts_in_calls = d1 - d0
    phase.aof_rewrites = rw1 - rw0
    return phase


def redis_benchmark_version() -> str | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip() or "redis-benchmark (version unknown)"


async def redis_benchmark_phase(redis_url: str, spec: GiftSpec, viewer: Principal,
                                clients: int, pipeline: int, requests: int) -> Phase:
    """redis-benchmark: EVALSHA of the script with a one-gift batch, -P pipelining.

    The arguments are the ones GiftSender builds for one gift, with the client
    id replaced by __rand_int__ (a fresh random number per request with -r), so
    each request is a real debit, not a `duplicate` replay; how many debited is
    read from the ledger stream's entries-added counter afterwards.
    """
    phase = Phase(f"redis-benchmark EVALSHA, 1 gift/call, -c {clients} -P {pipeline}")
    exe = shutil.which("redis-benchmark")
    assert exe is not None
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    # The client id is exactly "rb-__rand_int__": redis-benchmark swaps each
    # __rand_int__ for 12 digits, the same length, so the packed gift stays
    # valid msgpack and every request is a fresh gift.
    head = await script_header(spec, [viewer])
    argv: list[bytes] = [a if isinstance(a, bytes) else str(a).encode() for a in head]
    argv.append(spec.request(viewer, "rb-__rand_int__").packed())
    if any(b"\x00" in a for a in argv):
        raise RuntimeError("a packed argument holds a NUL byte; redis-benchmark cannot take it")
    r = Redis.from_url(redis_url)
    script = Script("send_gifts")
    await script.load(r)
    cmd: list[Any] = [exe, "-h", host, "-p", port, "-c", str(clients), "-n", str(requests),
                      "-P", str(pipeline), "-r", "2147483647", "--csv", "EVALSHA", script.sha,
                      "0", *argv]
    phase.extra["command"] = " ".join(
        a if isinstance(a, str) and re.fullmatch(r"[\w.:{}/-]+", a)
        else "<packed gift>" if isinstance(a, bytes) and not a.isascii()
        else "'" + (a.decode() if isinstance(a, bytes) else a).replace("'", "'\\''") + "'"
        for a in cmd)
    try:
        d0 = await ledger_added(r)
        cpu0, (c0, u0) = cpu_snapshot(), await evalsha_stats(r)
        rw0 = await aof_rewrites(r)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        wall = time.monotonic() - t0
        cpu1, (c1, u1) = cpu_snapshot(), await evalsha_stats(r)
        rw1 = await aof_rewrites(r)
        d1 = await ledger_added(r)
    finally:
        await r.aclose()
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({proc.returncode}): {err.decode()[-2000:]}")
    # --csv quotes the test title without escaping the JSON quotes inside it:
    # read the numbers from the right.
    rps = None
    lines = out.decode(errors="replace").strip().splitlines()  # the title echoes packed args
    head = next(csv.reader(io.StringIO(lines[0]))) if lines else []
    for line in lines[1:]:
        nums = [v.strip('"') for v in line.rsplit(",", len(head) - 1)[1:]]
        with contextlib.suppress(IndexError, ValueError):
            rps = float(nums[0])
            phase.extra["rb_latency_ms"] = {h: float(v) for h, v in zip(head[2:], nums[1:],
                                                                         strict=False)}
    if rps is None:
        raise RuntimeError("could not read redis-benchmark output:\n"
                           + out.decode(errors="replace")[-2000:])
    ok = d1 - d0
    phase.extra["evalsha_calls"] = c1 - c0
    phase.extra["requests"] = requests
    phase.seconds = wall
    phase.ok = ok
    phase.outcomes["ok"] = ok
    phase.outcomes["not ok (duplicate id / error)"] = max(0, requests - ok)
    phase.cpu = cpu_cores(cpu0, cpu1)
    phase.script_calls, phase.script_usec = c1 - c0, u1 - u0
    phase.gifts_in_calls = c1 - c0
    phase.aof_rewrites = rw1 - rw0
    phase.extra["rps"] = rps
    phase.extra["ok_fraction"] = ok / requests
    # Its own rps, times the share of requests that really debited.
    phase.extra["gifts_per_s"] = rps * ok / requests
    return phase


# --------------------------------------------------------------------------
# the ledger check: a benchmark that loses gifts is worthless
# --------------------------------------------------------------------------

async def wait_drained(redis: Redis, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        backlog = await redis.xlen(keys.LEDGER_STREAM)
        if backlog == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the flusher did not drain the ledger stream in {timeout_s}s "
                       f"({await redis.xlen(keys.LEDGER_STREAM)} entries left)")


async def verify_ledger(pool: asyncpg.Pool, redis: Redis, people: list[Principal],
                        acked_ok: set[str], acked_ok_n: int, unacked: int) -> dict[str, Any]:
    rows = await pool.fetch("SELECT event_id, amount_coins FROM gift_events")
    ledger_ids = {r["event_id"] for r in rows}
    ledger_amount = sum(r["amount_coins"] for r in rows)
    unbalanced = await pool.fetchval(
        "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id "
        "HAVING sum(amount) <> 0) x")
    gift_entries = await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'gift'")
    spent = 0
    for p in people:
        spent += COINS_PER_VIEWER - int(await redis.get(keys.balance(p.user_id)) or 0)
    res = {
        "acked_ok": acked_ok_n,
        "acked_ok_distinct_event_ids": len(acked_ok),
        "ledger_rows": len(rows),
        "ledger_distinct_event_ids": len(ledger_ids),
        "acked_missing_from_ledger": len(acked_ok - ledger_ids),
        "ledger_rows_not_acked": len(ledger_ids - acked_ok),
        "journal_gift_entries": gift_entries,
        "unbalanced_journal_entries": unbalanced,
        "coins_debited_redis": spent,
        "coins_in_ledger": ledger_amount,
    }
    res["sends_never_acked"] = unacked
    # A send whose ack never came may or may not have been debited (the client
    # would retry it with the same id); every acked one must be there, once.
    res["ok"] = (acked_ok_n == len(acked_ok) and len(rows) == len(ledger_ids) == gift_entries
                 and not res["acked_missing_from_ledger"]
                 and res["ledger_rows_not_acked"] <= unacked
                 and unbalanced == 0 and spent == ledger_amount)
    return res


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------

@dataclass
class Config:
    conns: int
    viewers: int
    window: int
    warmup_s: float
    seconds: float
    paced_s: float
    paced_shares: list[float]
    paced_window: int
    raw_callers: int
    raw_batch: int
    raw_s: float
    send_many_s: float
    rb_clients: int
    rb_pipeline: int
    rb_s: float
    durability: str
    profile: bool
    sweep: list[tuple[int, int]]
    flusher_process: bool = False


def machine_facts() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "load average": " ".join(Path("/proc/loadavg").read_text().split()[:3])
                        + " (1/5/15 min, before the run)",
        "python": platform.python_version(),
    }


async def bench(cfg: Config, tmp: Path) -> int:
    facts = machine_facts()
    run_tag = f"b{int(time.time())}"
    settings = Settings()

    log("starting embedded Valkey and Postgres")
    OWNED.valkey = EmbeddedValkey(tmp / "valkey", appendfsync=cfg.durability)  # type: ignore[arg-type]
    OWNED.valkey.start()
    OWNED.pg = EmbeddedPostgres(tmp / "postgres", fsync=False)
    OWNED.pg.start()
    redis_url, database_url = OWNED.valkey.url, OWNED.pg.url
    redis = Redis.from_url(redis_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        info = await redis.info("server")
        facts["valkey"] = str(info.get("valkey_version") or info.get("redis_version"))
        facts["postgres"] = str(await pool.fetchval("SHOW server_version"))
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp)], capture_output=True,
                            text=True).stdout.strip()
        facts["data dir"] = f"{tmp} ({fs})"
        facts["fsync"] = fsync_probe(tmp)
        facts["redis-benchmark"] = (redis_benchmark_version()
                                    or "missing (apt-get install redis-tools)")
        print_header(facts, cfg)

        log(f"creating the room and {cfg.viewers} viewers (argon2 hashing, grants, credit script)")
        streamer, people = await setup_accounts(pool, redis, cfg.viewers)

        log("starting `giftd serve` (subprocess, flusher "
            + ("in its own `giftd flush` process)" if cfg.flusher_process else "in-process)"))
        base = start_giftd(tmp, redis_url, database_url, cfg.flusher_process)
        log(f"giftd is up on {base}")
        clients = await connect_clients(base, people, cfg.conns, run_tag)
        log(f"{len(clients)} WebSocket clients joined room '{ROOM}'")
        mem0 = int((await redis.info("memory"))["used_memory"])

        phases: list[Phase] = []
        try:
            log(f"(a) peak: {cfg.conns} conns x window {cfg.window}, "
                f"{cfg.warmup_s:g}s warm-up + {cfg.seconds:g}s")
            a = await run_ws_phase(clients, redis, f"giftd over WebSocket, {cfg.conns} conns x "
                                   f"{cfg.window} in flight", cfg.warmup_s, cfg.seconds,
                                   cfg.window, None,
                                   profile=tmp / "giftd-peak.folded" if cfg.profile else None)
            phases.append(a)
            log(f"    {a.rate:,.0f} ok gifts/s, p50 {a.pct(0.5):.1f} ms, p99 {a.pct(0.99):.1f} ms")
            for share in cfg.paced_shares if cfg.paced_s > 0 and a.rate > 0 else []:
                # Each paced phase starts from a drained write-behind stream, so it
                # does not pay for the previous phase's flusher backlog.
                drained = await wait_drained(redis, DRAIN_TIMEOUT_S)
                target = a.rate * share
                log(f"(a2) flusher drained in {drained:.1f}s; paced at {share:.0%} of peak = "
                    f"{target:,.0f} gifts/s, {cfg.warmup_s:g}s warm-up + {cfg.paced_s:g}s")
                a2 = await run_ws_phase(clients, redis, f"giftd paced at {share:.0%} "
                                        f"of peak ({target:,.0f}/s offered)", cfg.warmup_s,
                                        cfg.paced_s, cfg.paced_window, target,
                                        profile=(tmp / f"giftd-paced-{share:.0%}.folded"
                                                 if cfg.profile else None))
                a2.extra["offered"] = target
                a2.extra["drained_before_s"] = drained
                phases.append(a2)
                log(f"    {a2.rate:,.0f} ok gifts/s, p50 {a2.pct(0.5):.1f} ms, "
                    f"p99 {a2.pct(0.99):.1f} ms")
        finally:
            ticks = sum(c.ticks for c in clients)
            tick_bytes = sum(c.tick_bytes for c in clients)
            acked_ids: list[str] = [e for c in clients for e in c.ok_event_ids]
            unacked = sum(c.unacked_total + len(c.pending) for c in clients)
            for c in clients:
                await c.close()
        metrics = scrape_metrics(base)

        log("load stopped; waiting for the flusher to drain the write-behind stream")
        drain_s = await wait_drained(redis, DRAIN_TIMEOUT_S)
        check = await verify_ledger(pool, redis, people, set(acked_ids), len(acked_ids),
                                    unacked)
        check["drain_s"] = drain_s
        mem1 = int((await redis.info("memory"))["used_memory"])
        check["valkey_bytes_per_acked_gift"] = (mem1 - mem0) / max(1, len(acked_ids))
        log(f"drained in {drain_s:.1f}s; ledger check: {'PASS' if check['ok'] else 'FAIL'}")
        log("stopping giftd")
        OWNED.stop_giftd()

        # (b) the script alone, on the same Valkey, nothing else running
        row = await pool.fetchrow("SELECT code, name, price_coins, animation, kind FROM gifts "
                                  "WHERE code = $1", GIFT)
        if row is None:
            raise RuntimeError(f"giftd did not seed the catalog: no gift {GIFT!r}")
        gift = Gift(row["code"], row["name"], row["price_coins"], row["animation"], row["kind"])
        spec = GiftSpec(ROOM, streamer.user_id, gift,
                        replace(settings, ledger_backlog_max=10**12))
        log(f"(b) raw EVALSHA: {cfg.raw_callers} callers x {cfg.raw_batch} gifts/call, "
            f"{cfg.raw_s:g}s")
        b = await raw_script_phase(redis_url, spec, people, cfg.raw_callers, cfg.raw_batch,
                                   cfg.raw_s, run_tag)
        phases.append(b)
        log(f"    {b.rate:,.0f} gifts/s")
        if cfg.send_many_s > 0:
            log(f"(b2) GiftSender.send_many: {cfg.raw_callers} callers x {cfg.raw_batch}/call, "
                f"{cfg.send_many_s:g}s")
            b2 = await send_many_phase(redis_url, spec, people, cfg.raw_callers,
                                       cfg.raw_batch, cfg.send_many_s, run_tag)
            phases.append(b2)
            log(f"    {b2.rate:,.0f} gifts/s")
        for batch, callers in cfg.sweep:
            log(f"(sweep) raw EVALSHA: {callers} callers x {batch} gifts/call, 4s")
            sw = await raw_script_phase(redis_url, spec, people, callers, batch, 4.0, run_tag)
            phases.append(sw)
            log(f"    {sw.rate:,.0f} gifts/s")
        rb: Phase | None = None
        if shutil.which("redis-benchmark") is None:
            log("(b3) redis-benchmark: MISSING on PATH (Debian: apt-get install redis-tools); "
                "skipped")
        elif cfg.rb_s > 0:
            # Sized from the raw rate so that it lasts about rb_s (one-gift calls
            # with deep pipelining have run up to ~2x the batched raw rate here).
            n = int(min(20_000_000, max(50_000, 2 * b.rate * cfg.rb_s)))
            log(f"(b3) redis-benchmark: {n:,} requests, -c {cfg.rb_clients} "
                f"-P {cfg.rb_pipeline}")
            rb = await redis_benchmark_phase(redis_url, spec, people[0], cfg.rb_clients,
                                             cfg.rb_pipeline, n)
            phases.append(rb)
            log(f"    {rb.extra['rps']:,.0f} requests/s, ok fraction {rb.extra['ok_fraction']:.4f}")

        print_report(phases, check, metrics, ticks, tick_bytes, cfg, rb)
        return 0 if check["ok"] else 1
    finally:
        await pool.close()
        await redis.aclose()


def print_header(facts: dict[str, str], cfg: Config) -> None:
    print()
    print("bench_spine: giftd gift path vs the ceiling of its own send script")
    print("=" * 78)
    for k, v in facts.items():
        print(f"  {k:<16} {v}")
    print(f"  {'valkey aof':<16} appendfsync {cfg.durability}")
    print(f"  {'postgres':<16} fsync=off (EmbeddedPostgres(fsync=False))")
    print("  giftd limits     send rate limits lifted: "
          + " ".join(f"{k}={v}" for k, v in LIMITS_LIFTED.items()))
    print("  shared machine   load generator, giftd, Valkey and Postgres all run here")
    print("=" * 78, flush=True)


def print_report(phases: list[Phase], check: dict[str, Any], metrics: dict[str, float],
                 ticks: int, tick_bytes: int, cfg: Config, rb: Phase | None) -> None:
    def gps(p: Phase) -> float:
        return float(p.extra.get("gifts_per_s", p.rate))

    print()
    print("=" * 100)
    print(f"{'measurement':<58}{'gifts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'gifts/call':>12}")
    print("-" * 100)
    for p in phases:
        per_call = p.gifts_in_calls / p.script_calls if p.script_calls else float("nan")
        if p is rb:
            print(f"{p.name:<58}{gps(p):>10,.0f}{'':>9}{'':>9}{per_call:>12.1f}")
        else:
            lat_kind = "" if p.name.startswith("giftd") else " (per call)"
            print(f"{p.name:<58}{gps(p):>10,.0f}{p.pct(0.5):>9.1f}{p.pct(0.99):>9.1f}"
                  f"{per_call:>12.1f}{lat_kind}")
    print("gifts/call: debits (ledger stream entries added) / EVALSHA calls Valkey saw in the "
          "window;\n  for giftd the calls include its other scripts (end_combos, 4/s). p50/p99: "
          "send->ack for giftd,\n  one EVALSHA round trip for the raw and send_many rows.")
    print("-" * 100)
    a = phases[0]
    ceilings = [p for p in phases if not p.name.startswith("giftd")]
    for c in ceilings:
        if gps(c):
            print(f"ratio giftd peak / {c.name:<60} {a.rate / gps(c):6.3f}")
    print("=" * 100)
    print("\nwhere the time went (cores, out of the machine's total, during the measured window):")
    for p in phases:
        busy = p.script_usec / 1e6 / p.seconds if p.seconds else 0
        us_per_gift = p.script_usec / p.gifts_in_calls if p.gifts_in_calls else float("nan")
        print(f"  {p.name}")
        print(f"      {fmt_cpu(p.cpu)}")
        inner = ""
        if "inner_usec" in p.extra and p.gifts_in_calls:
            inner = (f" ({p.extra['inner_usec'] / p.gifts_in_calls:.1f} of them inside the "
                     "redis.call'd commands)")
        print(f"      valkey in the script: {busy:.2f} of a core busy, {us_per_gift:.1f} us per "
              f"gift{inner}{'; an AOF rewrite ran' if p.aof_rewrites else ''}")
        if p.errors or set(p.outcomes) - {"ok"}:
            print(f"      outcomes {dict(p.outcomes)} errors {dict(p.errors)}")
        if p.extra.get("unacked"):
            print(f"      UNACKED sends at the end: {p.extra['unacked']}")
        if p.extra.get("sender_errors"):
            print(f"      sender errors: {p.extra['sender_errors'][:3]}")
        if p.extra.get("closed"):
            print(f"      connections closed by the server: {p.extra['closed']}")
        if "profile" in p.extra:
            print("      py-spy of the giftd process during this window:")
            for line in p.extra["profile"]:
                print(f"        {line}")
        if "offered" in p.extra:
            print(f"      offered {p.extra['offered']:,.0f}/s, sent {p.sent / p.seconds:,.0f}/s; "
                  f"started once the flusher had drained ({p.extra['drained_before_s']:.1f}s)")
        if "command" in p.extra:
            print(f"      {p.extra['command']}")
            print(f"      redis-benchmark requests/s {p.extra['rps']:,.0f}; ok fraction "
                  f"{p.extra['ok_fraction']:.4f} (ledger stream entries added); EVALSHA calls "
                  f"seen by valkey {p.extra['evalsha_calls']:,} of {p.extra['requests']:,} "
                  "requests")
            lat = p.extra.get("rb_latency_ms") or {}
            if lat:
                print("      its per-request latency (ms, pipelined): "
                      + ", ".join(f"{k.removesuffix('_latency_ms')} {v:g}"
                                  for k, v in lat.items()))
    print(f"\nfan-out seen by the load generator: {ticks:,} tick frames, "
          f"{tick_bytes / 1e6:,.1f} MB to {cfg.conns} viewers")
    keep = ("giftd_frames_written", "giftd_deliveries", "giftd_slow_consumer_closes",
            "giftd_tick_lag_ms", "giftd_flush_lag_ms")
    shown = {k: metrics[k] for k in keep if k in metrics}
    if shown:
        print("giftd /metrics at the end: " + ", ".join(f"{k}={v:,.0f}" for k, v in shown.items()))
    gc_parts = []
    for gen in range(3):
        n = metrics.get(f'giftd_gc_pause_seconds_count{{generation="{gen}"}}')
        if n is None:
            continue
        total_ms = metrics.get(f'giftd_gc_pause_seconds_sum{{generation="{gen}"}}', 0.0) * 1000
        under = f'giftd_gc_pause_seconds_bucket{{generation="{gen}",le="0.01"}}'
        over_10ms = n - metrics.get(under, n)
        gc_parts.append(f"gen {gen}: {n:,.0f} collections, {total_ms:,.0f} ms in all, "
                        f"{over_10ms:,.0f} over 10 ms")
    if gc_parts:
        print("giftd garbage collection over the run (event-loop pauses): " + "; ".join(gc_parts))
    if PRE_JOIN:
        print(f"messages received before the `joined` answer: {dict(PRE_JOIN)}")
    print("\nledger check (after the flusher drained; Postgres vs the acks the clients got):")
    for k, v in check.items():
        if k != "ok":
            print(f"  {k:<32} {v:,.1f}" if isinstance(v, float) else f"  {k:<32} {v:,}")
    verdict = ("PASS: one ledger row per ok ack, same event ids, journal balanced"
               if check["ok"] else "FAIL: the ledger does not match the acks")
    print(f"  => {verdict}")


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="longer phases, more connections")
    ap.add_argument("--durability", choices=("always", "everysec"), default="always",
                    help="Valkey appendfsync (default: always, giftd's default)")
    ap.add_argument("--conns", type=int, help="WebSocket connections (default 16; --full 64)")
    ap.add_argument("--viewers", type=int, help="viewer accounts (default = conns)")
    ap.add_argument("--window", type=int, default=32,
                    help="sends in flight per connection (server allows 64)")
    ap.add_argument("--seconds", type=float, help="peak phase length (default 15; --full 60)")
    ap.add_argument("--paced-seconds", type=float,
                    help="paced phase length, 0 skips it (default 8; --full 30)")
    ap.add_argument("--paced-share", default="0.8,0.5",
                    help="paced rate / peak rate, comma-separated: one paced phase each")
    ap.add_argument("--raw-callers", type=int, default=4)
    ap.add_argument("--raw-batch", type=int, default=256,
                    help="gifts per EVALSHA in (b) (giftd's send_batch_max is 256)")
    ap.add_argument("--raw-seconds", type=float, help="default 8; --full 30")
    ap.add_argument("--rb-clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--rb-pipeline", type=int, default=16, help="redis-benchmark -P")
    ap.add_argument("--rb-seconds", type=float, help="redis-benchmark target length, 0 skips "
                    "(default 6; --full 30)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the giftd process during the peak window (costs CPU on a "
                         "small machine: the peak figure is then not comparable)")
    ap.add_argument("--sweep", action="store_true",
                    help="also run raw EVALSHA at other batch sizes (gifts/call x callers: "
                         "4x32, 16x16, 64x4, 128x2), 4 s each")
    ap.add_argument("--flusher-process", action="store_true",
                    help="run the ledger flusher as its own `giftd flush` process, not inside "
                         "the gateway's event loop")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = ap.parse_args(argv)
    full = args.full
    conns = args.conns or (64 if full else 16)
    cfg = Config(
        conns=conns,
        viewers=args.viewers or conns,
        window=args.window,
        warmup_s=3.0 if full else 2.0,
        seconds=args.seconds or (60.0 if full else 15.0),
        paced_s=args.paced_seconds if args.paced_seconds is not None else (30.0 if full else 8.0),
        paced_shares=[float(x) for x in args.paced_share.split(",") if x.strip()],
        paced_window=64,
        raw_callers=args.raw_callers,
        raw_batch=args.raw_batch,
        raw_s=args.raw_seconds or (30.0 if full else 8.0),
        send_many_s=(20.0 if full else 5.0),
        rb_clients=args.rb_clients,
        rb_pipeline=args.rb_pipeline,
        rb_s=args.rb_seconds if args.rb_seconds is not None else (30.0 if full else 6.0),
        durability=args.durability,
        profile=args.profile,
        sweep=[(4, 32), (16, 16), (64, 4), (128, 2)] if args.sweep else [],  # (batch, callers)
        flusher_process=args.flusher_process,
    )
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores it (background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="giftd-bench-"))
    os.chmod(tmp, 0o755)  # the unprivileged postgres user (when we are root) must traverse it
    OWNED.tmp, OWNED.keep_tmp = tmp, args.keep
    try:
        try:
            import uvloop

            return uvloop.run(bench(cfg, tmp))
        except ImportError:
            return asyncio.run(bench(cfg, tmp))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        OWNED.close()


if __name__ == "__main__":
    raise SystemExit(main())
