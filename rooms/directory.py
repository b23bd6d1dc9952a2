"""Which rooms exist: cached in memory, Postgres on a miss (rooms made by another process)."""

from __future__ import annotations

import time

import asyncpg

from server.users import Room, load_rooms

MISS_CACHE_S = 2.0  # an unknown room id is not looked up again for this long


class RoomDirectory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._rooms: dict[str, Room] = {}
        self._misses: dict[str, float] = {}

    async def load(self) -> None:
        self._rooms = await load_rooms(self.pool)

    async def all(self) -> list[Room]:
        """Every room, fresh from Postgres (rooms may be made by another process)."""
        await self.load()
        return sorted(self._rooms.values(), key=lambda r: r.id)

    async def get(self, room_id: str) -> Room | None:
        room = self._rooms.get(room_id)
        if room is not None:
            return room
        now = time.monotonic()
        if self._misses.get(room_id, 0) > now:
            return None
        row = await self.pool.fetchrow(
            """SELECT r.id, r.streamer_id, u.display_name, r.title
                 FROM rooms r JOIN users u ON u.id = r.streamer_id WHERE r.id = $1""", room_id)
        if row is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[room_id] = now + MISS_CACHE_S
            return None
        room = Room(row["id"], row["streamer_id"], row["display_name"], row["title"])
        self._rooms[room_id] = room
        return room
