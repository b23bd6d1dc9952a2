"""PK battles: two streamers' rooms compete for gifts in a timed round.

The state machine and the clock live in Redis (gifts/lua/pk.lua; scoring in
send_gifts.lua), so a battle survives any gateway restart and every process
agrees on it. This module is the Python face: actions by streamers, the tick
that moves battles along, and the state a joiner needs for the score bar.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from gifts.scripts import Script
from server import keys
from server.settings import Settings

log = logging.getLogger("giftd.pk")

PK_TRANSITIONS_PER_CALL_MAX = 200


class PkOutcome(StrEnum):
    OK = "ok"
    BUSY = "busy"  # one of the rooms is already in a battle or an invitation
    NOT_FOUND = "not_found"
    NOT_YOURS = "not_yours"  # only the invited streamer may accept or decline
    BAD_STATE = "bad_state"  # not (or no longer) waiting for an answer


def pk_key(pk_id: str) -> str:
    return f"{keys.PREFIX}pk:{pk_id}"


def room_pk_key(room: str) -> str:
    return f"{keys.PREFIX}room:{room}:pk"


class Battles:
    def __init__(self, redis: Redis, script: Script, settings: Settings) -> None:
        self.redis = redis
        self.script = script
        self.settings = settings

    def _head(self, action: str) -> list[str | int]:
        return [keys.PREFIX, action, self.settings.room_history_max]

    async def invite(self, room_a: str, streamer_a: int, room_b: str,
                     streamer_b: int) -> tuple[PkOutcome, str]:
        pk_id = secrets.token_hex(8)
        out, pid = await self.script(self.redis, [
            *self._head("invite"), pk_id, room_a, room_b, streamer_a, streamer_b,
            self.settings.pk_invite_ttl_ms])
        return PkOutcome(_s(out)), _s(pid)

    async def answer(self, pk_id: str, streamer_id: int, accept: bool) -> PkOutcome:
        s = self.settings
        if accept:
            args = [*self._head("accept"), pk_id, streamer_id, s.pk_round_ms, s.pk_punish_ms,
                    s.pk_multiplier_window_ms, s.pk_multiplier]
        else:
            args = [*self._head("decline"), pk_id, streamer_id]
        out, _ = await self.script(self.redis, args)
        return PkOutcome(_s(out))

    async def tick(self) -> int:
        return int(await self.script(self.redis, [*self._head("tick"),
                                                  PK_TRANSITIONS_PER_CALL_MAX]))

    async def state(self, pk_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(pk_key(pk_id))
        if not raw:
            return None
        return public_state({_s(k): _s(v) for k, v in raw.items()})

    async def of_room(self, room: str) -> dict[str, Any] | None:
        pk_id = await self.redis.get(room_pk_key(room))
        return await self.state(_s(pk_id)) if pk_id else None

    async def run_ticks(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pk tick: %r", exc)
            await asyncio.sleep(self.settings.pk_tick_ms / 1000)


INT_FIELDS = ("streamer_a", "streamer_b", "score_a", "score_b", "invited_ms", "expires_ms",
              "start", "end", "mult_from", "mult", "punish_end", "punish_ms")


def public_state(raw: dict[str, str]) -> dict[str, Any]:
    """The battle as clients see it (pure)."""
    out: dict[str, Any] = {"id": raw["id"], "state": raw["state"], "room_a": raw["room_a"],
                           "room_b": raw["room_b"]}
    for f in INT_FIELDS:
        if f in raw:
            out[f] = int(raw[f])
    if "winner" in raw:
        out["winner"] = raw["winner"]
    # clearer names on the wire
    for old, new in (("start", "start_ms"), ("end", "end_ms"), ("mult_from", "multiplier_from_ms"),
                     ("mult", "multiplier"), ("punish_end", "punish_end_ms")):
        if old in out:
            out[new] = out.pop(old)
    return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
