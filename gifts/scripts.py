"""Lua scripts, each in its own file, loaded once by sha."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


def lua_source(name: str) -> str:
    return (resources.files("gifts") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


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

    async def load(self, redis: Redis) -> None:
        for s in (self.send_gifts, self.credit):
            await s.load(redis)
