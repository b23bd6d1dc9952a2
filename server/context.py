"""What one process shares: built in the app's lifespan, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from billing.flusher import Flusher
from gifts.catalog import Catalog
from gifts.scripts import Scripts
from gifts.sender import GiftSender
from rooms.bus import RoomBus
from rooms.directory import RoomDirectory
from rooms.hub import Hub
from rooms.names import NameCache
from server.metrics import Metrics
from server.settings import Settings


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
    flusher: Flusher | None = None
