"""Period boards: rollover at local midnight, Monday and the 1st (time injected, not slept);
board subscriptions that outlive their subscribers."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from redis.asyncio import Redis

from gifts.catalog import Gift
from gifts.sender import GiftSender, SendRequest
from server import keys
from tests.support import (
    RawWs,
    RunningServer,
    make_room,
    make_user,
    settings_for_tests,
    token_for,
)

SH = ZoneInfo("Asia/Shanghai")
HEART = Gift("heart", "Heart", 10, "heart_pop")


def at(local: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=SH).timestamp()


async def test_boards_roll_over_in_local_time(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    room, streamer = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=100_000, name="ann_b")
    ben = await make_user(pool, redis, coins=100_000, name="ben_b")
    now = [0.0]
    sender = GiftSender(redis, server.ctx.scripts.send_gifts, settings_for_tests(),
                        clock=lambda: now[0])
    n = [0]

    async def gift(user_id: int, local: str, count: int) -> None:
        now[0] = at(local)
        n[0] += 1
        res = await sender.send_many([SendRequest(user_id, "x", f"b{n[0]}", room,
                                                  streamer.user_id, HEART, count)])
        assert res[0].outcome.value == "ok"

    # Sunday 2026-11-29 23:59:59 and Monday 2026-11-30 00:00:00, then Dec 1st
    await gift(ann.user_id, "2026-11-29T23:59:59.900", 1)
    await gift(ben.user_id, "2026-11-30T00:00:00.000", 2)
    await gift(ann.user_id, "2026-11-30T23:59:59.999", 3)
    await gift(ben.user_id, "2026-12-01T00:00:00.001", 4)

    async with httpx.AsyncClient(base_url=server.base) as http:
        async def board(kind: str, span: str, date: str, **kw: str) -> dict:
            r = await http.get(f"/api/boards/{kind}/{span}", params={"date": date, **kw})
            assert r.status_code == 200, r.text
            return r.json()

        def scores(b: dict) -> dict[int, int]:
            return {i["id"]: i["score"] for i in b["items"]}

        assert scores(await board("gifter", "day", "2026-11-29")) == {ann.user_id: 10}
        assert scores(await board("gifter", "day", "2026-11-30")) == {ben.user_id: 20,
                                                                       ann.user_id: 30}
        assert scores(await board("gifter", "day", "2026-12-01")) == {ben.user_id: 40}
        # the ISO week turns on Monday in Shanghai: Sunday's gift is last week's
        assert scores(await board("gifter", "week", "2026-11-29")) == {ann.user_id: 10}
        assert scores(await board("gifter", "week", "2026-12-02")) == {ben.user_id: 60,
                                                                        ann.user_id: 30}
        assert scores(await board("gifter", "month", "2026-11-15")) == {ann.user_id: 40,
                                                                         ben.user_id: 20}
        assert scores(await board("gifter", "month", "2026-12-31")) == {ben.user_id: 40}
        streamers = await board("streamer", "week", "2026-11-30")
        assert streamers["items"] == [{"rank": 1, "id": streamer.user_id,
                                       "name": streamer.name, "score": 90}]
        # pagination and "my rank"
        page2 = await board("gifter", "week", "2026-12-02", offset="1", limit="1")
        assert [i["id"] for i in page2["items"]] == [ann.user_id] and page2["total"] == 2
        assert page2["items"][0]["rank"] == 2
        mine = (await http.get("/api/boards/gifter/week", params={"date": "2026-12-02"},
                               headers={"authorization": f"Bearer {token_for(ann)}"})).json()
        assert mine["me"] == {"rank": 2, "score": 30}
        nobody = await make_user(pool, redis)
        mine = (await http.get("/api/boards/gifter/week", params={"date": "2026-12-02"},
                               headers={"authorization": f"Bearer {token_for(nobody)}"})).json()
        assert mine["me"] == {"rank": None, "score": 0}
        for path, code in [("/api/boards/nope/day", "unknown_board"),
                           ("/api/boards/gifter/year", "unknown_board"),
                           ("/api/boards/gifter/day?date=2026-13-01", "bad_field"),
                           ("/api/boards/gifter/day?offset=-1", "bad_field")]:
            assert (await http.get(path)).json()["code"] == code


async def test_a_board_whose_last_subscriber_is_gone_is_no_longer_read(
        server: RunningServer, redis: Redis, pool: asyncpg.Pool) -> None:
    streamer = await make_user(pool, redis)
    fan = await make_user(pool, redis, name="fan")
    raw = await RawWs.connect(server, token_for(await make_user(pool, redis)))
    await raw.send_json({"type": "subscribe", "board": "fans", "streamer": streamer.user_id,
                         "span": "day"})
    assert (await raw.next_message())["snapshot"] is True
    feed = server.ctx.board_feed
    board = (streamer.user_id, "day")
    assert board in feed.subs
    # dropped by the server (as a slow consumer would be): the socket lingers until
    # the peer answers or is cut off, but nothing more is written to it
    conn = next(iter(server.ctx.connections.values()))
    conn.close(4008, "slow consumer")
    await redis.zincrby(keys.board_fans(streamer.user_id, feed._period("day")), 5,
                        str(fan.user_id))
    await feed.push()  # the board changed: its only subscriber is found gone
    assert board not in feed.subs and board not in feed.last
    raw.abort()
