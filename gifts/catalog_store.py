"""The gift catalog in Postgres: load it, change it (ops), audited.

Every process keeps the catalog in memory (pricing never touches the
network). A change is written here, audited in the same transaction, then
announced on the control channel; each process reloads on that notice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from billing import audit
from billing.db import Db
from gifts.catalog import Catalog, Gift, default_catalog

CODE_RE = re.compile(r"^[a-z0-9_]{1,32}$")
PRICE_COINS_MAX = 10_000_000  # one gift costs at most this many coins
NAME_CHARS_MAX = 40
RESERVED_CODES = ("tip_custom",)  # priced by the sender, never a catalog entry


class CatalogError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class GiftChange:
    code: str
    name: str
    price_coins: int
    animation: str
    kind: str
    active: bool
    sort_order: int


def parse_change(code: str, data: dict[str, Any]) -> GiftChange:
    """Validate an ops edit (pure). Every field is required: an edit states the whole gift."""
    if not CODE_RE.match(code) or code in RESERVED_CODES:
        raise CatalogError("bad_code", "gift codes are 1-32 of a-z 0-9 _ (not tip_custom)")
    name, animation, kind = data.get("name"), data.get("animation"), data.get("kind", "gift")
    price, active, order = data.get("price_coins"), data.get("active", True), data.get(
        "sort_order", 0)
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS_MAX:
        raise CatalogError("bad_field", f"name: 1-{NAME_CHARS_MAX} characters")
    if not isinstance(animation, str) or not CODE_RE.match(animation):
        raise CatalogError("bad_field", "animation: 1-32 of a-z 0-9 _")
    if kind not in ("gift", "tip"):
        raise CatalogError("bad_field", "kind: gift or tip")
    if type(price) is not int or not 1 <= price <= PRICE_COINS_MAX:
        raise CatalogError("bad_price", f"price_coins: an integer 1..{PRICE_COINS_MAX}")
    if type(active) is not bool:
        raise CatalogError("bad_field", "active: true or false")
    if type(order) is not int or not -1000 <= order <= 1000:
        raise CatalogError("bad_field", "sort_order: an integer -1000..1000")
    return GiftChange(code, name, price, animation, kind, active, order)


async def load_catalog(pool: asyncpg.Pool, coins_per_yuan: int) -> Catalog:
    """The active catalog; an empty table is seeded with the default one first."""
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT count(*) FROM gifts") == 0:
            await conn.executemany(
                """INSERT INTO gifts (code, name, price_coins, animation, kind, sort_order)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                [(g.code, g.name, g.price_coins, g.animation, g.kind, i)
                 for i, g in enumerate(default_catalog(coins_per_yuan))],
            )
        rows = await conn.fetch(
            """SELECT code, name, price_coins, animation, kind FROM gifts
                WHERE active ORDER BY sort_order, code""")
    return Catalog([Gift(r["code"], r["name"], r["price_coins"], r["animation"], r["kind"])
                    for r in rows])


async def all_gifts(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT code, name, price_coins, animation, kind, sort_order, active "
                            "FROM gifts ORDER BY sort_order, code")
    return [dict(r) for r in rows]


async def save_gift(conn: Db, change: GiftChange, *, actor_id: int, actor: str,
                    reason: str) -> dict[str, Any] | None:
    """Create or change one gift, audited in the same transaction. Returns the old row."""
    async with conn.transaction():
        old = await conn.fetchrow("SELECT code, name, price_coins, animation, kind, sort_order, "
                                  "active FROM gifts WHERE code = $1 FOR UPDATE", change.code)
        await conn.execute(
            """INSERT INTO gifts (code, name, price_coins, animation, kind, sort_order, active)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (code) DO UPDATE SET name = $2, price_coins = $3, animation = $4,
                   kind = $5, sort_order = $6, active = $7""",
            change.code, change.name, change.price_coins, change.animation, change.kind,
            change.sort_order, change.active)
        before = dict(old) if old else None
        await audit.record(conn, actor_id=actor_id, actor=actor, action="gift.save",
                           target=f"gift:{change.code}", reason=reason,
                           detail={"before": before, "after": {
                               "name": change.name, "price_coins": change.price_coins,
                               "animation": change.animation, "kind": change.kind,
                               "sort_order": change.sort_order, "active": change.active}})
    return before
