"""Overlay tokens: read-only, scoped to one streamer, revocable; board subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest
import websockets
from redis.asyncio import Redis

from rooms.ranking import apply_diff
from tests.support import Client, RunningServer, make_room, make_user, serving, token_for


@pytest.fixture
async def fast_boards(redis_url: str, database_url: str) -> AsyncIterator[RunningServer]:
    async with serving(redis_url, database_url, board_push_ms=300) as srv:
        yield srv


async def overlay_client(server: RunningServer, token: str) -> Client:
    ws = await websockets.connect(f"{server.ws_url}?token={token}")
    return Client(ws, False)


async def test_overlay_token_read_only_scoped_revocable(
        fast_boards: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    server = fast_boards
    room, streamer = await make_room(pool, redis)
    other_room, other = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100_000)
    ben = await make_user(pool, redis, coins=100_000)
    async with httpx.AsyncClient(base_url=server.base) as http:
        hdr = {"authorization": f"Bearer {token_for(streamer)}"}
        r = (await http.post("/api/overlay/token", headers=hdr)).json()
        token, url = r["token"], r["url"]
        assert url.endswith(token) and r["room"] == room
        viewer = await http.post("/api/overlay/token",
                                 headers={"authorization": f"Bearer {token_for(ann)}"})
        assert viewer.json()["code"] == "no_room"
        # the overlay token is no key to the API
        denied = await http.get("/api/me", headers={"authorization": f"Bearer {token}"})
        assert (denied.status_code, denied.json()["code"]) == (403, "read_only")

        ov = await overlay_client(server, token)
        joined = await ov.join(room)
        assert joined["type"] == "joined"
        n = len(ov.errors)
        await ov.send({"type": "gift", "id": "x1", "room": room, "gift": "rose"})
        await ov.send({"type": "join", "room": other_room})
        await ov.send({"type": "subscribe", "board": "fans", "streamer": other.user_id,
                       "span": "day"})
        await ov.wait_for(lambda c: len(c.errors) >= n + 3)
        assert [e["code"] for e in ov.errors[n:]] == ["read_only", "out_of_scope",
                                                      "out_of_scope"]
        # its own fan board: a snapshot, then coalesced diffs, latest value wins
        await ov.send({"type": "subscribe", "board": "fans", "streamer": streamer.user_id,
                       "span": "day"})
        snap = await ov.wait_for(lambda c: next(
            (m for m in c.received if m["type"] == "board"), None))
        assert snap["snapshot"] is True and snap["rank"] == []
        a = await Client.connect(server, ann)
        b = await Client.connect(server, ben)
        await a.join(room)
        await b.join(room)
        await asyncio.gather(*(a.gift(room, "heart", 1, cid=f"a{i}") for i in range(30)),
                             *(b.gift(room, "rose", 5, cid=f"b{i}") for i in range(30)))
        await asyncio.sleep(0.9)
        boards = [m for m in ov.received if m["type"] == "board"]
        assert 2 <= len(boards) <= 5  # 60 gifts, a handful of pushes
        board: list[dict] = []
        for m in boards:
            board = m["rank"] if m.get("snapshot") else apply_diff(board, m["rank"])
        assert [(e["id"], e["score"]) for e in board] == [(ann.user_id, 300),
                                                         (ben.user_id, 150)]
        # the overlay saw the gifts in its room feed too
        await ov.wait_for(lambda c: len(c.gifts) == 60)

        # revoke: the live widget is closed with 4003, the old token is refused
        r = await http.post("/api/overlay/revoke", headers=hdr)
        assert r.json()["version"] == 1
        await asyncio.wait_for(ov.ws.wait_closed(), 5)
        assert ov.ws.close_code == 4003
        with pytest.raises(websockets.InvalidStatus) as e:
            await websockets.connect(f"{server.ws_url}?token={token}")
        assert orjson.loads(e.value.response.body)["code"] == "token_revoked"
        fresh = (await http.post("/api/overlay/token", headers=hdr)).json()
        assert fresh["version"] == 1
        ov2 = await overlay_client(server, fresh["token"])
        assert (await ov2.join(room))["type"] == "joined"
        await ov2.close()
        await a.close()
        await b.close()
