"""A PK round across two rooms on two processes, to the coin against the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from server.auth import Role
from tests.integration.test_two_processes import ServeProcess
from tests.support import Client, RunningServer, flush_all, make_room, make_user, token_for

ROUND_MS, PUNISH_MS, MULT_WINDOW_MS, MULT = 3000, 800, 1000, 2
PK_ENV = {"GIFTD_PK_ROUND_MS": str(ROUND_MS), "GIFTD_PK_PUNISH_MS": str(PUNISH_MS),
          "GIFTD_PK_MULTIPLIER_WINDOW_MS": str(MULT_WINDOW_MS), "GIFTD_PK_MULTIPLIER": str(MULT),
          "GIFTD_SEND_RATE_PER_S": "1000", "GIFTD_SEND_BURST": "1000",
          # slow state ticks: the round is still 'running' for a while after end_ms, so
          # only the server clock check keeps late gifts out of the score
          "GIFTD_PK_TICK_MS": "1500"}


def of_type(c: Client, kind: str) -> list[dict]:
    return [e for e in c.events if e["type"] == kind]


async def test_pk_round_across_processes(redis_url: str, database_url: str, redis: Redis,
                                         pool: asyncpg.Pool, tmp_path: Path) -> None:
    one = RunningServer(redis_url, database_url, pk_round_ms=ROUND_MS, pk_punish_ms=PUNISH_MS,
                        pk_multiplier_window_ms=MULT_WINDOW_MS, pk_multiplier=MULT,
                        pk_tick_ms=1500)
    await one.start()
    two = ServeProcess(redis_url, database_url, tmp_path / "two")
    two.env.update(PK_ENV)
    await two.start()
    try:
        room_a, sa = await make_room(pool, redis)
        room_b, sb = await make_room(pool, redis)
        ga = await make_user(pool, redis, coins=1_000_000)
        gb = await make_user(pool, redis, coins=1_000_000)
        va = await Client.connect(one, await make_user(pool, redis))
        vb = await Client.connect(two, await make_user(pool, redis))  # type: ignore[arg-type]
        a = await Client.connect(one, ga)
        b = await Client.connect(two, gb)  # type: ignore[arg-type]
        for c, r in ((va, room_a), (a, room_a), (vb, room_b), (b, room_b)):
            assert (await c.join(r))["pk"] is None

        async with httpx.AsyncClient() as http:
            # only the invited streamer may answer; viewers have no room to battle with
            viewer = await make_user(pool, redis, role=Role.VIEWER)
            r = await http.post(f"{one.base}/api/pk/invite", json={"room": room_b},
                                headers={"authorization": f"Bearer {token_for(viewer)}"})
            assert r.json()["code"] == "no_room"
            r = await http.post(f"{one.base}/api/pk/invite", json={"room": room_b},
                                headers={"authorization": f"Bearer {token_for(sa)}"})
            assert r.status_code == 200, r.text
            pk_id = r.json()["pk_id"]
            again = await http.post(f"{one.base}/api/pk/invite", json={"room": room_b},
                                    headers={"authorization": f"Bearer {token_for(sa)}"})
            assert again.json()["outcome"] == "busy"
            wrong = await http.post(f"http://127.0.0.1:{two.port}/api/pk/{pk_id}/accept",
                                    headers={"authorization": f"Bearer {token_for(sa)}"})
            assert wrong.json()["outcome"] == "not_yours"
            r = await http.post(f"http://127.0.0.1:{two.port}/api/pk/{pk_id}/accept",
                                headers={"authorization": f"Bearer {token_for(sb)}"})
            assert r.json()["outcome"] == "ok" and r.json()["pk"]["state"] == "running"
        start = await va.wait_for(lambda c: of_type(c, "pk_start"))
        assert (await vb.wait_for(lambda c: of_type(c, "pk_start")))[0] == {
            **start[0], "room": room_b, "seq": of_type(vb, "pk_start")[0]["seq"],
            "ts_ms": start[0]["ts_ms"]}
        end_ms = start[0]["end_ms"]

        # gifts on both sides through the round, across the multiplier window, past the end
        sent = [0]

        async def storm(c: Client, room: str, gift: str, until_s: float) -> None:
            while time.time() < until_s:
                sent[0] += 1
                await c.gift(room, gift, 1 + sent[0] % 3, cid=f"{room}-{sent[0]}")
                await asyncio.sleep(0.02)

        until = end_ms / 1000 + 1.0
        # halfway, restart process two: the battle lives in Redis and carries on
        async def restart_two() -> None:
            await asyncio.sleep(ROUND_MS / 2000)
            assert two.proc is not None
            two.proc.send_signal(signal.SIGKILL)
            two.proc.wait()
            await two.start()
        storm_b_client = await Client.connect(one, gb)  # gb keeps gifting via process one
        await storm_b_client.join(room_b)
        await asyncio.gather(storm(a, room_a, "heart", until),
                             storm(storm_b_client, room_b, "donut", until), restart_two())
        result_a = (await va.wait_for(lambda c: of_type(c, "pk_result"), timeout=5))[0]
        vb2 = await Client.connect(two, await make_user(pool, redis))  # type: ignore[arg-type]
        joined = await vb2.join(room_b)
        if joined["pk"] is not None:  # still in the punishment phase
            assert joined["pk"]["state"] == "punish"
            assert (joined["pk"]["score_a"], joined["pk"]["score_b"]) == (
                result_a["score_a"], result_a["score_b"])
        async with httpx.AsyncClient() as http:  # the restarted process knows the battle
            state = (await http.get(f"http://127.0.0.1:{two.port}/api/pk/{pk_id}")).json()
        assert state["state"] in ("punish", "done") and state["winner"] == result_a["winner"]
        assert (state["score_a"], state["score_b"]) == (result_a["score_a"], result_a["score_b"])
        over = await va.wait_for(lambda c: of_type(c, "pk_over"), timeout=5)
        assert len(over) == 1 and len(of_type(va, "pk_result")) == 1

        # the ledger decides: gifts in [start, end), x2 in the last window, none after
        await flush_all(redis, pool)
        async def side(room: str) -> int:
            rows = await pool.fetch("SELECT amount_coins, created_at FROM gift_events "
                                    "WHERE room_id = $1", room)
            total = 0
            for r in rows:
                ms = round(r["created_at"].timestamp() * 1000)
                if start[0]["start_ms"] <= ms < end_ms:
                    total += r["amount_coins"] * (MULT if ms >= end_ms - MULT_WINDOW_MS else 1)
            late = [r for r in rows if round(r["created_at"].timestamp() * 1000) >= end_ms]
            assert late, "some gifts landed after the end"
            return total
        assert (result_a["score_a"], result_a["score_b"]) == (await side(room_a),
                                                             await side(room_b))
        winner = ("a" if result_a["score_a"] > result_a["score_b"] else
                  "b" if result_a["score_b"] > result_a["score_a"] else "draw")
        assert result_a["winner"] == winner
        # scores reached room B too, live, as pk_score events
        assert of_type(va, "pk_score") and of_type(storm_b_client, "pk_score")
        for c in (va, vb, a, b, vb2, storm_b_client):
            with contextlib.suppress(Exception):
                await c.close()
    finally:
        await one.stop()
        with contextlib.suppress(Exception):
            two.stop()
