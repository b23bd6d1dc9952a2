"""Demo data for `giftd serve --demo`: streamers with rooms, viewers with coins, an admin.

Idempotent: run it on every start; what exists is left alone. Coins are given
through the real credit path (a promotion journal entry + outbox), so the
conservation invariant holds from the first second.
"""

from __future__ import annotations

import logging
from typing import Any

from billing.credits import book_grant
from billing.db import Db
from server.auth import Role
from server.users import UserError, create_room, create_user

log = logging.getLogger("giftd.demo")

DEMO_PASSWORD = "giftd-demo"

# username, display name, role, starting coins, room id (streamers)
DEMO_USERS: list[tuple[str, str, Role, int, str | None]] = [
    ("aurora", "Aurora", Role.STREAMER, 0, "aurora"),
    ("blaze", "Blaze", Role.STREAMER, 0, "blaze"),
    ("ann", "Ann", Role.VIEWER, 200_000, None),
    ("ben", "Ben", Role.VIEWER, 50_000, None),
    ("cat", "Cat", Role.VIEWER, 20_000, None),
    ("dan", "Dan", Role.VIEWER, 30, None),  # runs out fast: shows insufficient_balance
    ("admin", "Admin", Role.ADMIN, 0, None),
    ("finance", "Fiona (finance)", Role.FINANCE, 0, None),
    ("ops", "Oscar (ops)", Role.OPS, 0, None),
    ("support", "Sam (support)", Role.SUPPORT, 0, None),
]


async def overlay_url(ctx: Any, base: str, streamer: str = "aurora") -> str:
    """A ready-to-paste overlay URL for a demo streamer (an OBS browser source)."""
    from server import keys
    from server.auth import issue_overlay_token

    row = await ctx.pool.fetchrow(
        "SELECT u.id, u.display_name, r.id AS room FROM users u JOIN rooms r "
        "ON r.streamer_id = u.id WHERE u.username = $1", streamer)
    version = int(await ctx.redis.get(keys.overlay_version(row["id"])) or 0)
    token = issue_overlay_token(ctx.secret, row["id"], row["display_name"], version)
    return f"{base}/overlay/?room={row['room']}&token={token}"


async def seed(conn: Db) -> None:
    for username, name, role, coins, room in DEMO_USERS:
        try:
            p = await create_user(conn, username=username, password=DEMO_PASSWORD,
                                  display_name=name, role=role)
            uid = p.user_id
        except UserError:
            uid = await conn.fetchval("SELECT id FROM users WHERE username = $1", username)
        if room:
            await create_room(conn, room_id=room, streamer_id=uid, title=f"{name}'s live room")
        if coins:
            await book_grant(conn, user_id=uid, amount=coins, ref=f"demo:{username}",
                             memo="demo starting coins")
    log.info("demo data ready (password %r)", DEMO_PASSWORD)
