"""A new broadcast session clears the room's live ranking and earnings, for everyone."""

from __future__ import annotations

import asyncpg
import httpx
from redis.asyncio import Redis

from tests.support import Client, RunningServer, make_room, make_user, token_for


async def test_new_session_resets_live_ranking(server: RunningServer, redis: Redis,
                                               pool: asyncpg.Pool) -> None:
    room, streamer = await make_room(pool, redis)
    ann = await make_user(pool, redis, coins=1000)
    ben = await make_user(pool, redis, coins=1000)
    a = await Client.connect(server, ann)
    await a.join(room)
    await a.gift(room, "heart", 3)
    await a.wait_for(lambda c: c.gifts)
    async with httpx.AsyncClient(base_url=server.base) as http:
        board = (await http.get(f"/api/rooms/{room}/leaderboard",
                                headers={"authorization": f"Bearer {token_for(ann)}"})).json()
        assert board["items"][0]["score"] == 30 and board["me"] == {"rank": 1, "score": 30}
        refused = await http.post(f"/api/rooms/{room}/session",
                                  headers={"authorization": f"Bearer {token_for(ann)}"})
        assert refused.status_code == 403
        r = await http.post(f"/api/rooms/{room}/session",
                            headers={"authorization": f"Bearer {token_for(streamer)}"})
        assert r.json()["epoch"] == 1
        # viewers see the reset in order, as an event, and their board empties
        await a.wait_for(lambda c: any(e["type"] == "session_start" for e in c.events))
        emptied = [d for t in a.ticks for d in t.get("rank", []) if d.get("id") is None]
        assert emptied == [{"rank": 1, "id": None}]
        assert (await http.get(f"/api/rooms/{room}/leaderboard")).json()["items"] == []
    b = await Client.connect(server, ben)
    joined = await b.join(room)
    assert (joined["epoch"], joined["ranking"], joined["room_total"]) == (1, [], 0)
    await b.gift(room, "rose", 1)
    await b.wait_for(lambda c: c.gifts)
    assert b.ticks[-1]["rank"] == [{"rank": 1, "id": ben.user_id, "name": ben.name, "score": 1}]
    await a.close()
    await b.close()
