"""Display names by user id, cached (bounded) in front of Postgres."""

from __future__ import annotations

from collections import OrderedDict

import asyncpg

NAMES_CACHED_MAX = 50_000  # entries kept; least recently used go first


class NameCache:
    def __init__(self, pool: asyncpg.Pool, max_entries: int = NAMES_CACHED_MAX) -> None:
        self.pool = pool
        self.max_entries = max_entries
        self._names: OrderedDict[int, str] = OrderedDict()

    def put(self, user_id: int, name: str) -> None:
        self._names[user_id] = name
        self._names.move_to_end(user_id)
        while len(self._names) > self.max_entries:
            self._names.popitem(last=False)

    async def get_many(self, ids: list[int]) -> dict[int, str]:
        out = {i: self._names[i] for i in ids if i in self._names}
        missing = [i for i in ids if i not in out]
        if missing:
            rows = await self.pool.fetch(
                "SELECT id, display_name FROM users WHERE id = ANY($1::bigint[])", missing
            )
            for r in rows:
                out[r["id"]] = r["display_name"]
                self.put(r["id"], r["display_name"])
        return out
