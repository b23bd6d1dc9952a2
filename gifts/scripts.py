"""Lua scripts, each in its own file, loaded once by sha."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

PRELUDE = "_room_event"  # shared helpers, prepended to every script that appends room events


def lua_source(name: str) -> str:
    """The script's source, with the shared prelude in front when it uses it."""
    text = (resources.files("gifts") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    if "room_event(" in text or "end_combo(" in text or "now_ms_of_redis(" in text:
        prelude = (resources.files("gifts") / "lua" / f"{PRELUDE}.lua").read_text(
            encoding="utf-8")
        text = prelude + "\n" + text
    return text


class Script:
    """A script loaded by sha; reloaded transparently after SCRIPT FLUSH or a restart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = lua_source(name)
        self.sha = ""

    async def load(self, redis: Redis) -> None:
        self.sha = await redis.script_load(self.source)

    async def __call__(self, redis: Redis, args: list[Any]) -> Any:
        if not self.sha:
            await self.load(redis)
        try:
            return await redis.evalsha(self.sha, 0, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, 0, *args)


class Scripts:
    """The scripts one process uses."""

    def __init__(self) -> None:
        self.send_gifts = Script("send_gifts")
        self.credit = Script("credit")
        self.end_combos = Script("end_combos")
        self.pk = Script("pk")
        self.start_session = Script("start_session")

    async def load(self, redis: Redis) -> None:
        for s in vars(self).values():
            if isinstance(s, Script):
                await s.load(redis)
