"""What one process shares: built in the app's lifespan, passed explicitly."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from redis.asyncio import Redis

from billing.flusher import Flusher
from gifts.catalog import Catalog
from gifts.scripts import Scripts
from gifts.sender import GiftSender
from rooms.board_feed import BoardFeed
from rooms.bus import RoomBus
from rooms.conn import Conn
from rooms.directory import RoomDirectory
from rooms.hub import Hub
from rooms.names import NameCache
from rooms.pk import Battles
from server.metrics import Metrics
from server.protocol import Limits
from server.ratelimit import UserBuckets
from server.settings import Settings

if TYPE_CHECKING:
    from server.gateway import Session

log = logging.getLogger("giftd.ctx")

BYE_RECONNECT_AFTER_MS = 500  # told to viewers on shutdown: reconnect after about this long


@dataclass
class Ctx:
    settings: Settings
    secret: str
    redis: Redis
    pool: asyncpg.Pool
    scripts: Scripts
    catalog: Catalog
    rooms: RoomDirectory
    names: NameCache
    sender: GiftSender
    hub: Hub
    bus: RoomBus
    metrics: Metrics
    battles: Battles
    board_feed: BoardFeed
    user_buckets: UserBuckets = field(default_factory=lambda: UserBuckets(50, 100))
    flusher: Flusher | None = None
    connections: dict[int, Conn] = field(default_factory=dict)  # every open /ws, by id
    # sessions that have not joined a room (or subscribed to a board) yet: the
    # keepalive sweep closes them after join_timeout_s
    unjoined: dict[int, Session] = field(default_factory=dict)
    # overlay connections by streamer id, so a revocation can close them
    overlays: dict[int, dict[int, Conn]] = field(default_factory=dict)

    _background: set[asyncio.Task[None]] = field(default_factory=set)
    # the loop this process serves on (built inside it); see gateway.spawn for why it is kept
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def __post_init__(self) -> None:
        s = self.settings
        # what an inbound frame may be (server/protocol.py), the same for every session
        self.limits = Limits(s.frame_bytes_max, s.gift_count_max, s.client_id_chars_max,
                             s.custom_tip_min_coins, s.custom_tip_max_coins)

    async def reload_catalog(self) -> None:
        from gifts.catalog_store import load_catalog

        try:
            self.catalog = await load_catalog(self.pool, self.settings.coins_per_yuan)
        except Exception as exc:  # keep the old catalog; the next notice retries
            log.warning("catalog reload failed: %r", exc)

    def on_control(self, data: bytes) -> None:
        """A process-wide notice from the control channel."""
        kind, _, arg = data.decode(errors="replace").partition(":")
        if kind == "catalog_changed":
            task = asyncio.get_running_loop().create_task(self.reload_catalog())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if kind == "overlay_revoked" and arg.isdigit():
            from rooms.conn import CLOSE_REVOKED

            for conn in list(self.overlays.pop(int(arg), {}).values()):
                conn.close(CLOSE_REVOKED, "overlay token revoked")

    def say_goodbye(self) -> None:
        """Tell every viewer to reconnect (elsewhere), then close with 1001."""
        from rooms.conn import CLOSE_GOING_AWAY

        bye = {"type": "bye", "reason": "shutdown", "reconnect_after_ms": BYE_RECONNECT_AFTER_MS}
        for conn in list(self.connections.values()):  # in a room or not (board widgets)
            conn.send(bye)
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
