"""Locust load test for giftd: a PK battle between two live rooms, then its final-30-s storm.

Users:
  Watcher        WebSocket, joins a room and only receives. Checks the room's seq
                 sequence (gaps / repeats, merged events' `seqs` expanded) and reports
                 send->receipt latency of gifts whose id carries the send time.
  Gifter         WebSocket, joins a room and sends at a human pace: streaks of the
                 same gift (server-side combos), batch sends (count 10/66/99), now and
                 then an expensive gift. Reports ack latency by outcome.
  StormGifter    a Gifter in the last 30 s of the round: short pauses, long streaks.
  StreamerPair   one per run: both streamers on WebSocket (they get `earnings`), and
                 over HTTP it starts a PK battle (POST /api/pk/invite + /accept) and
                 polls it, starting the next one when a battle is over.
  Recharger      HTTP: registers, recharges through the sandbox channel (order with an
                 Idempotency-Key, the sandbox pay endpoint, then polls the order until
                 the signed notify has credited it).
  BoardReader    HTTP: room leaderboards, day boards, the battle's state.

Custom metrics, in locust's table with request_type "WS":
  gift ack <outcome>   send -> ack (ms) per outcome; errors are failures
  send->receipt        gift sent by any gifter -> the tick carrying it at a watcher (ms)
  join                 WebSocket upgrade + join -> joined (ms)
  seq check            a failure for every gap or repeat in a watcher's seq sequence

The shape (PKSurge): the audience ramps up and stays (-u users, at -r per second),
then in the last `GIFTD_LOCUST_STORM_S` (30) seconds of the run (-t) StormGifters
join: the gift storm of a PK final. Without -t the run is 90 s.

Accounts: `loadtest/run_locust.py` seeds them through the real paths (register,
sandbox recharge) and passes them in the JSON file named by GIFTD_LOCUST_ACCOUNTS.
Without it, the demo accounts of `giftd serve --demo` are used (ann, ben, cat as
gifters; aurora and blaze as the streamer pair).

Run it with `.venv/bin/python loadtest/run_locust.py` (see README, "Load testing").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import time
import uuid
import warnings
from typing import Any

import gevent
import orjson
from locust import HttpUser, LoadTestShape, User, between, events, task
from locust.exception import StopUser
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

warnings.filterwarnings("ignore", category=DeprecationWarning, module="websockets")

DEMO_PASSWORD = "giftd-demo"
ROOMS_DEFAULT = ("aurora", "blaze")
STORM_S = float(os.environ.get("GIFTD_LOCUST_STORM_S", "30"))
RECEIPT_SAMPLE = float(os.environ.get("GIFTD_LOCUST_RECEIPT_SAMPLE", "0.2"))  # share of events
SENT_RE = re.compile(r"-t(\d+)$")
# (weight, gift, counts): single cheap gifts most of the time, batch sends, a few costly ones
MIX: list[tuple[float, str, tuple[int, ...]]] = [
    (45, "rose", (1,)), (15, "rose", (10, 66, 99)), (15, "heart", (1,)),
    (5, "heart", (10, 66, 99)), (10, "donut", (1,)), (6, "crown", (1,)),
    (3.5, "sports_car", (1,)), (0.5, "rocket", (1,)),
]


# --------------------------------------------------------------------------
# accounts and tokens, once per process
# --------------------------------------------------------------------------

class Accounts:
    """Tokens for the users, from run_locust.py's file or the demo accounts."""

    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None
        self._gifters: itertools.cycle[dict[str, Any]] | None = None
        self._viewers: itertools.cycle[dict[str, Any]] | None = None

    def load(self, host: str) -> dict[str, Any]:
        if self.data is not None:
            return self.data
        path = os.environ.get("GIFTD_LOCUST_ACCOUNTS")
        if path:
            with open(path, "rb") as f:
                self.data = json.loads(f.read())
        else:  # a demo server: log the demo accounts in once
            import httpx

            def login(name: str) -> dict[str, Any]:
                r = httpx.post(host + "/api/login", json={"username": name,
                                                          "password": DEMO_PASSWORD},
                               timeout=10)
                r.raise_for_status()
                return {"name": name, "token": r.json()["token"]}

            gifters = [login(n) for n in ("ann", "ben", "cat")]
            self.data = {"rooms": list(ROOMS_DEFAULT), "gifters": gifters,
                         "viewers": gifters,
                         "streamers": [login("aurora"), login("blaze")]}
        assert self.data is not None
        self._gifters = itertools.cycle(self.data["gifters"])
        self._viewers = itertools.cycle(self.data["viewers"])
        return self.data

    def gifter(self, host: str) -> dict[str, Any]:
        self.load(host)
        assert self._gifters is not None
        return next(self._gifters)

    def viewer(self, host: str) -> dict[str, Any]:
        self.load(host)
        assert self._viewers is not None
        return next(self._viewers)


ACCOUNTS = Accounts()
_user_ids = itertools.count(1)


def fire(name: str, ms: float, exc: Exception | None = None, length: int = 0) -> None:
    events.request.fire(request_type="WS", name=name, response_time=ms,
                        response_length=length, exception=exc, context={})


# --------------------------------------------------------------------------
# WebSocket users
# --------------------------------------------------------------------------

class WsUser(User):
    """A `websockets` sync client (gevent makes it cooperative) with a reader greenlet."""

    abstract = True
    room = ""
    token = ""

    def ws_url(self) -> str:
        return self.host.replace("http://", "ws://").replace("https://", "wss://") + "/ws"

    def open(self) -> None:
        t0 = time.perf_counter()
        try:
            self._cm = connect(self.ws_url(), subprotocols=["giftd.json"],  # type: ignore[list-item]
                               additional_headers={"Authorization": f"Bearer {self.token}"},
                               compression=None, max_size=None, open_timeout=20,
                               ping_interval=None)
            self.ws: ClientConnection = self._cm.__enter__()
            self.ws.send(orjson.dumps({"type": "join", "room": self.room}).decode())
            while True:
                msg = orjson.loads(self.ws.recv(timeout=20))
                if msg.get("type") == "joined":
                    break
                if msg.get("type") == "error":
                    if msg.get("code") == "unavailable":  # documented: retry the join
                        gevent.sleep(0.2)
                        self.ws.send(orjson.dumps({"type": "join", "room": self.room}).decode())
                        continue
                    raise RuntimeError(f"join refused: {msg}")
        except Exception as exc:
            fire("join", (time.perf_counter() - t0) * 1000, exc)
            raise StopUser() from exc
        fire("join", (time.perf_counter() - t0) * 1000)
        self.last_seq = int(msg["seq"])
        self.balance = msg.get("balance")
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        try:
            while True:
                raw = self.ws.recv()
                now_us = time.time_ns() // 1000
                msg = orjson.loads(raw)
                kind = msg.get("type")
                if kind == "tick":
                    self.on_tick(msg, now_us)
                else:
                    self.on_message(msg, now_us)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            if code not in (1000, 1001):
                fire("closed by server", 0, RuntimeError(f"close code {code}"))
        except gevent.GreenletExit:
            pass

    def on_tick(self, msg: dict[str, Any], now_us: int) -> None:
        """Every tick: the seq check; a sample of gifts: send->receipt."""
        n = 0
        for ev in msg.get("events", ()):
            n += len(ev["seqs"]) if "seqs" in ev else 1
            cid = ev.get("client_id")
            if cid and random.random() < RECEIPT_SAMPLE:
                m = SENT_RE.search(str(cid))
                if m:
                    fire("send->receipt", (now_us - int(m.group(1))) / 1000)
        seq = int(msg["seq"])
        if n:
            first = seq - n + 1
            if first != self.last_seq + 1:
                what = "gap" if first > self.last_seq + 1 else "repeat"
                fire("seq check", 0, RuntimeError(f"{what}: events {first}..{seq} after "
                                                  f"{self.last_seq}"))
            self.last_seq = max(self.last_seq, seq)

    def on_message(self, msg: dict[str, Any], now_us: int) -> None:
        pass

    def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(Exception):
            self.reader.kill(block=False)


class Watcher(WsUser):
    """A viewer who only watches."""

    weight = 8
    wait_time = between(5, 10)

    def on_start(self) -> None:
        data = ACCOUNTS.load(self.host)
        self.token = ACCOUNTS.viewer(self.host)["token"]
        self.room = random.choice(data["rooms"])
        self.open()

    @task
    def watch(self) -> None:
        pass  # the reader greenlet does the work


class Gifter(WsUser):
    """A viewer who sends gifts at a human pace: streaks, batch sends, now and then a big one."""

    weight = 2
    wait_time = between(2, 8)  # between streaks
    streak_gap_s = (0.15, 0.5)  # between sends of a streak (combos need < 3 s)
    streak_len = (1, 6)

    def on_start(self) -> None:
        data = ACCOUNTS.load(self.host)
        self.token = ACCOUNTS.gifter(self.host)["token"]
        self.room = random.choice(data["rooms"])
        self.uid = next(_user_ids)
        self.n = 0
        self.pending: dict[str, float] = {}
        self.open()

    def on_message(self, msg: dict[str, Any], now_us: int) -> None:
        kind = msg.get("type")
        if kind not in ("ack", "error"):
            return
        t0 = self.pending.pop(str(msg.get("id")), None)
        if t0 is None:
            return
        ms = (time.perf_counter() - t0) * 1000
        if kind == "ack":
            # ok, duplicate and insufficient_balance are business outcomes, not failures;
            # conflict (a reused id) and backlog_full (the ledger is behind) are
            outcome = msg["outcome"]
            fire(f"gift ack {outcome}", ms,
                 None if outcome in ("ok", "duplicate", "insufficient_balance")
                 else RuntimeError(outcome))
        else:
            fire(f"gift error {msg.get('code')}", ms, RuntimeError(str(msg.get("code"))))

    def send(self, gift: str, count: int) -> None:
        self.n += 1
        # the send time (wall clock, us) rides in the id: watchers get it back as client_id
        cid = f"lc{self.uid}-{self.n}-t{time.time_ns() // 1000}"
        self.pending[cid] = time.perf_counter()
        self.ws.send(orjson.dumps({"type": "gift", "id": cid, "room": self.room, "gift": gift,
                                   "count": count}).decode())

    @task
    def streak(self) -> None:
        _, gift, counts = random.choices(MIX, weights=[m[0] for m in MIX])[0]
        count = random.choice(counts)
        for _ in range(random.randint(*self.streak_len)):
            self.send(gift, count)
            gevent.sleep(random.uniform(*self.streak_gap_s))


class StormGifter(Gifter):
    """The PK final: everyone who can gift does, in long fast streaks."""

    # Only the storm stage lists this class (alone: locust then spawns the added users
    # from it and keeps the users already running).
    weight = 1
    wait_time = between(0.2, 1.0)
    streak_gap_s = (0.06, 0.2)
    streak_len = (5, 30)


class StreamerPair(HttpUser):
    """Both streamers on WebSocket; over HTTP they start (and restart) a PK battle."""

    fixed_count = 1
    wait_time = between(2, 3)

    def on_start(self) -> None:
        data = ACCOUNTS.load(self.host)
        self.a, self.b = data["streamers"]
        self.rooms = data["rooms"]
        self.pk_id: str | None = None
        self.socks = []
        for s, room in ((self.a, self.rooms[0]), (self.b, self.rooms[1])):
            url = self.host.replace("http://", "ws://") + "/ws"
            cm = connect(url, subprotocols=["giftd.json"],  # type: ignore[list-item]
                         additional_headers={"Authorization": f"Bearer {s['token']}"},
                         compression=None, max_size=None, ping_interval=None)
            ws = cm.__enter__()
            ws.send(orjson.dumps({"type": "join", "room": room}).decode())
            self.socks.append((ws, gevent.spawn(self._drain, ws)))
        self.start_pk()

    def _drain(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed, gevent.GreenletExit):
            for _ in ws:
                pass  # ticks and earnings: a streamer console would render them

    def start_pk(self) -> None:
        r = self.client.post("/api/pk/invite", json={"room": self.rooms[1]},
                             headers={"Authorization": f"Bearer {self.a['token']}"},
                             name="/api/pk/invite")
        if r.status_code != 201 and r.status_code != 200:
            self.pk_id = None
            return
        self.pk_id = r.json()["pk_id"]
        self.client.post(f"/api/pk/{self.pk_id}/accept", name="/api/pk/{id}/accept",
                         headers={"Authorization": f"Bearer {self.b['token']}"})

    @task
    def follow(self) -> None:
        if self.pk_id is None:
            self.start_pk()
            return
        r = self.client.get(f"/api/pk/{self.pk_id}", name="/api/pk/{id}")
        if r.ok and r.json().get("state") not in ("invited", "running"):
            self.pk_id = None  # over (punishment phase or ended): the next battle when free

    def on_stop(self) -> None:
        for ws, g in self.socks:
            with contextlib.suppress(Exception):
                ws.close()
            g.kill(block=False)


# --------------------------------------------------------------------------
# HTTP users
# --------------------------------------------------------------------------

class Recharger(HttpUser):
    """Registers, then recharges through the sandbox channel now and then."""

    weight = 1
    wait_time = between(5, 15)

    def on_start(self) -> None:
        name = f"lr{uuid.uuid4().hex[:12]}"
        r = self.client.post("/api/register", json={"username": name, "password": "password123"},
                             name="/api/register")
        if r.status_code != 201:
            raise StopUser()
        self.auth = {"Authorization": f"Bearer {r.json()['token']}"}

    @task
    def recharge(self) -> None:
        key = uuid.uuid4().hex
        body = {"channel": "sandbox", "pack_yuan": random.choice((6, 30, 98))}
        r = self.client.post("/api/recharge/orders", json=body, name="/api/recharge/orders",
                             headers={**self.auth, "Idempotency-Key": key})
        if r.status_code != 201:
            return
        order = r.json()["order"]["id"]
        if random.random() < 0.1:  # a client retry with the same key: the same order
            self.client.post("/api/recharge/orders", json=body, name="/api/recharge/orders (retry)",
                             headers={**self.auth, "Idempotency-Key": key})
        self.client.post(f"/sandbox/pay/{order}", name="/sandbox/pay/{order}",
                         headers={"Accept": "application/json"})
        t0 = time.perf_counter()
        for _ in range(40):  # the signed notify comes from the sandbox, then the credit
            r = self.client.get(f"/api/recharge/orders/{order}", headers=self.auth,
                                name="/api/recharge/orders/{id}")
            if r.ok and r.json()["order"]["status"] == "SUCCESS":
                events.request.fire(request_type="HTTP", name="recharge paid -> credited",
                                    response_time=(time.perf_counter() - t0) * 1000,
                                    response_length=0, exception=None, context={})
                return
            gevent.sleep(0.25)
        events.request.fire(request_type="HTTP", name="recharge paid -> credited",
                            response_time=(time.perf_counter() - t0) * 1000, response_length=0,
                            exception=RuntimeError("not credited within 10 s"), context={})


class BoardReader(HttpUser):
    """Overlay widgets and pages reading leaderboards."""

    weight = 2
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.rooms = ACCOUNTS.load(self.host)["rooms"]

    @task(3)
    def room_board(self) -> None:
        self.client.get(f"/api/rooms/{random.choice(self.rooms)}/leaderboard",
                        name="/api/rooms/{room}/leaderboard")

    @task(1)
    def period_board(self) -> None:
        kind = random.choice(("gifter", "streamer"))
        self.client.get(f"/api/boards/{kind}/day", name=f"/api/boards/{kind}/day")


# --------------------------------------------------------------------------
# the shape: steady audience, then the PK final's gift storm
# --------------------------------------------------------------------------

class PKSurge(LoadTestShape):
    """Audience of -u users (spawned at -r/s) for the run (-t), storm in the last STORM_S.

    Steady stage: Watchers, Gifters, Recharger, BoardReader by weight, plus the
    StreamerPair. Storm stage: half as many users again, all StormGifters (the
    steady users keep running). Then the run stops.
    """

    use_common_options = True

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        users = int(getattr(opts, "num_users", 0) or 60)
        rate = float(getattr(opts, "spawn_rate", 0) or 20)
        total = float(getattr(opts, "run_time", 0) or 90)
        t = self.get_run_time()
        steady: list[type[User]] = [Watcher, Gifter, Recharger, BoardReader, StreamerPair]
        if t >= total:
            return None
        if t < total - STORM_S:
            return users, rate, steady
        return users + max(1, users // 2), rate * 2, [StormGifter]
