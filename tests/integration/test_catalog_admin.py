"""Ops edits the gift catalog: audited, and every process prices with the new catalog."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from redis.asyncio import Redis

from billing import audit
from server.auth import Role
from tests.support import Client, make_room, make_user, serving, token_for


async def test_ops_changes_the_catalog_everywhere(redis_url: str, database_url: str,
                                                  redis: Redis, pool: asyncpg.Pool) -> None:
    async with serving(redis_url, database_url) as one, serving(redis_url, database_url) as two:
        room, _ = await make_room(pool, redis)
        ops = await make_user(pool, redis, role=Role.OPS)
        support = await make_user(pool, redis, role=Role.SUPPORT)
        ann = await make_user(pool, redis, coins=10_000)
        hdr = {"authorization": f"Bearer {token_for(ops)}"}
        async with httpx.AsyncClient(base_url=one.base) as http:
            body = {"name": "Rose", "price_coins": 3, "animation": "rose_float",
                    "kind": "gift", "active": True, "sort_order": 0}
            for who, payload, status, code in [
                (support, {**body, "reason": "x"}, 403, "forbidden"),
                (ann, {**body, "reason": "x"}, 403, "forbidden"),
                (ops, body, 400, "reason_required"),
                (ops, {**body, "price_coins": 0, "reason": "x"}, 400, "bad_price"),
                (ops, {**body, "price_coins": 2.5, "reason": "x"}, 400, "bad_price"),
            ]:
                r = await http.put("/api/admin/gifts/rose", json=payload,
                                   headers={"authorization": f"Bearer {token_for(who)}"})
                assert (r.status_code, r.json()["code"]) == (status, code)
            bad = await http.put("/api/admin/gifts/tip_custom", json={**body, "reason": "x"},
                                 headers=hdr)
            assert bad.json()["code"] == "bad_code"
            r = await http.put("/api/admin/gifts/rose", json={**body, "reason": "spring sale"},
                               headers=hdr)
            assert r.status_code == 200 and r.json()["created"] is False
            r = await http.put("/api/admin/gifts/lantern", headers=hdr, json={
                "name": "Lantern", "price_coins": 88, "animation": "lantern_glow",
                "kind": "gift", "active": True, "sort_order": 3, "reason": "festival"})
            assert r.status_code == 201
            listed = (await http.get("/api/admin/gifts", headers=hdr)).json()["gifts"]
            assert {"lantern", "rose"} <= {g["code"] for g in listed}
        # both processes price with the new catalog (reloaded on the control notice)
        for srv in (one, two):
            for _ in range(100):
                cat = srv.ctx.catalog
                if cat.get("lantern") and cat.get("rose").price_coins == 3:
                    break
                await asyncio.sleep(0.05)
        c2 = await Client.connect(two, ann)
        await c2.join(room)
        assert (await c2.gift(room, "rose", 2))["balance"] == 10_000 - 6
        assert (await c2.gift(room, "lantern", 1))["balance"] == 10_000 - 6 - 88
        # take the lantern off sale: unknown to every process again
        async with httpx.AsyncClient(base_url=two.base) as http:
            await http.put("/api/admin/gifts/lantern", headers=hdr, json={
                "name": "Lantern", "price_coins": 88, "animation": "lantern_glow",
                "kind": "gift", "active": False, "sort_order": 3, "reason": "festival over"})
        for _ in range(100):
            if one.ctx.catalog.get("lantern") is None:
                break
            await asyncio.sleep(0.05)
        c1 = await Client.connect(one, ann)
        await c1.join(room)
        err = await c1.gift(room, "lantern", 1)
        assert err["code"] == "unknown_gift"
        # every change is in the audit chain, with who and why
        records = await audit.load(pool)
        saves = [r for r in records if r.action == "gift.save"]
        assert [(r.target, r.reason) for r in saves] == [
            ("gift:rose", "spring sale"), ("gift:lantern", "festival"),
            ("gift:lantern", "festival over")]
        assert audit.verify_chain(records).ok
        await c1.close()
        await c2.close()
