"""The starlette app: shared clients built in the lifespan, routes, static pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from billing import api as billing_api
from billing import credits
from billing.flusher import Flusher
from billing.migrate import migrate
from gifts.catalog_store import load_catalog
from gifts.scripts import Scripts
from gifts.sender import GiftSender
from rooms.board_feed import BoardFeed
from rooms.bus import RoomBus
from rooms.directory import RoomDirectory
from rooms.hub import Hub
from rooms.names import NameCache
from rooms.pk import Battles
from server import admin_api, api, catalog_api, keys
from server.context import Ctx
from server.gc_watch import GcWatch
from server.metrics import Metrics
from server.ratelimit import UserBuckets
from server.settings import Settings
from server.websocket import Sweeper

log = logging.getLogger("giftd.app")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
OUTBOX_EVERY_S = 1.0  # unapplied credits are retried this often
REDIS_CONNECTIONS_MAX = 64  # per process
REDIS_POOL_WAIT_S = 5  # a request waits this long for a free Redis connection, then fails
PAGES = ("overlay", "room", "console", "admin")  # /<name>/ serves static/<name>/index.html


def load_secret(settings: Settings) -> str:
    if settings.secret:
        return settings.secret
    path = settings.var_dir / "secret"
    if path.exists():
        return path.read_text().strip()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


async def warn_on_weak_persistence(redis: Redis, settings: Settings) -> None:
    """An external Redis keeps its own persistence settings; say so when they are
    weaker than the durability mode we promise (acked = in the AOF)."""
    try:
        conf = await redis.config_get("append*")
    except Exception:  # CONFIG is often disabled on managed Redis
        log.warning("cannot read the external Redis persistence settings; make sure "
                    "appendonly is yes and appendfsync is %s", settings.durability)
        return
    def get(name: str) -> str:
        v = conf.get(name.encode(), conf.get(name, b""))  # type: ignore[call-overload]
        return v.decode() if isinstance(v, bytes) else str(v)
    if get("appendonly") != "yes" or get("appendfsync") != settings.durability:
        log.warning("external Redis has appendonly=%s appendfsync=%s, weaker than or "
                    "different from GIFTD_DURABILITY=%s: acked gifts may be lost on a crash",
                    get("appendonly"), get("appendfsync"), settings.durability)


COMBO_END_EVERY_S = 0.25  # streak ends are noticed this late at most (on top of the window)
COMBO_ENDS_PER_CALL_MAX = 500  # streaks closed by one script call


async def _combo_end_loop(ctx: Ctx) -> None:
    """Close streaks whose window passed. Every process runs this; the script makes
    each end happen exactly once."""
    from gifts.catalog import TIER_FLOORS_COINS

    s = ctx.settings
    args = [keys.PREFIX, s.combo_window_ms, s.room_history_max, COMBO_ENDS_PER_CALL_MAX,
            *TIER_FLOORS_COINS[1:]]
    while True:
        try:
            await ctx.scripts.end_combos(ctx.redis, args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("combo ends: %r", exc)
        await asyncio.sleep(COMBO_END_EVERY_S)


SHUTDOWN_STEP_S = 5.0  # each shutdown step gets this long before it is cut short


async def _bounded(aw: Any, what: str) -> None:
    try:
        await asyncio.wait_for(aw, SHUTDOWN_STEP_S)
    except asyncio.CancelledError:
        pass  # a cancelled background task: the normal way it ends
    except Exception as exc:  # includes TimeoutError
        log.warning("shutdown: %s did not finish cleanly: %r", what, exc)


async def _outbox_loop(ctx: Ctx) -> None:
    while True:
        try:
            await credits.apply_pending(ctx.pool, ctx.redis, ctx.scripts.credit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("credit outbox: %r", exc)
        await asyncio.sleep(OUTBOX_EVERY_S)


def create_app(settings: Settings, redis_url: str, database_url: str,
               on_ready: Callable[[Ctx], Awaitable[None]] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A blocking pool: a burst of joins waits for a free connection instead of
        # failing with "too many connections" (a reconnect storm after a restart).
        redis = Redis(connection_pool=BlockingConnectionPool.from_url(
            redis_url, max_connections=REDIS_CONNECTIONS_MAX, timeout=REDIS_POOL_WAIT_S,
            health_check_interval=30))
        pool = await asyncpg.create_pool(database_url, min_size=2, max_size=10)
        async with pool.acquire() as conn:
            await migrate(conn)
        if settings.redis_url:
            await warn_on_weak_persistence(redis, settings)
        scripts = Scripts()
        await scripts.load(redis)
        metrics = Metrics()
        hub = Hub(settings)
        names = NameCache(pool)
        directory = RoomDirectory(pool)
        await directory.load()
        ctx = Ctx(
            settings=settings,
            secret=load_secret(settings),
            redis=redis,
            pool=pool,
            scripts=scripts,
            catalog=await load_catalog(pool, settings.coins_per_yuan),
            rooms=directory,
            names=names,
            sender=GiftSender(redis, scripts.send_gifts, settings),
            hub=hub,
            bus=RoomBus(redis, hub, names, settings.node_id),
            metrics=metrics,
            user_buckets=UserBuckets(settings.user_send_rate_per_s, settings.user_send_burst),
            battles=Battles(redis, scripts.pk, settings),
            board_feed=BoardFeed(redis, names, settings),
        )
        app.state.ctx = ctx
        ctx.sender.start()
        hub.start()
        ctx.board_feed.start()
        ctx.bus.on_control = ctx.on_control
        await ctx.bus.start()
        tasks = [asyncio.create_task(_outbox_loop(ctx), name="credit-outbox"),
                 asyncio.create_task(_combo_end_loop(ctx), name="combo-ends"),
                 asyncio.create_task(ctx.battles.run_ticks(), name="pk-ticks"),
                 asyncio.create_task(Sweeper(ctx).run(), name="ws-keepalive")]
        if settings.flusher_enabled:
            ctx.flusher = Flusher(redis, pool, consumer=f"flusher-{settings.node_id}",
                                  batch_max=settings.flush_batch_max,
                                  block_ms=settings.flush_block_ms,
                                  claim_idle_ms=settings.flush_claim_idle_ms,
                                  linger_ms=settings.flush_linger_ms)
            tasks.append(asyncio.create_task(ctx.flusher.run(), name="flusher"))
        tasks += billing_api.start(app, ctx)  # recharge sweeps, sandbox notifier, debit resume
        gc_watch = GcWatch(metrics.registry)
        gc_watch.start()
        if on_ready is not None:
            await on_ready(ctx)
        try:
            yield
        finally:
            gc_watch.stop()
            ctx.say_goodbye()  # usually done already by GiftdServer.shutdown
            if ctx.flusher is not None:
                ctx.flusher.stop()
            for t in tasks:
                t.cancel()
            # Every step is bounded: a stuck task or a connection that is never
            # released must not keep the process from exiting.
            for t in tasks:
                await _bounded(t, t.get_name())
            await _bounded(ctx.bus.stop(), "room bus")
            await _bounded(ctx.board_feed.stop(), "board feed")
            await _bounded(hub.stop(), "room ticks")
            await _bounded(ctx.sender.stop(), "gift sender")
            try:
                await asyncio.wait_for(pool.close(), SHUTDOWN_STEP_S)
            except TimeoutError:
                log.warning("shutdown: Postgres connections still busy; terminating them")
                pool.terminate()
            await _bounded(redis.aclose(), "redis")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    def page(name: str) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:  # the pages: static/<name>/index.html
            return FileResponse(STATIC_DIR / name / "index.html")
        return serve

    app = Starlette(
        routes=[
            Route("/", index),
            *[Route(f"/{name}/", page(name)) for name in PAGES],
            Route("/health", api.health),
            Route("/metrics", api.metrics),
            Route("/api/register", api.register, methods=["POST"]),
            Route("/api/login", api.login, methods=["POST"]),
            Route("/api/gifts", api.catalog),
            Route("/api/me", api.me),
            Route("/api/me/balance", api.balance),
            Route("/api/me/transactions", api.transactions),
            Route("/api/rooms", api.rooms),
            Route("/api/demo", api.demo),
            Route("/api/rooms/{room}/leaderboard", api.leaderboard),
            Route("/api/rooms/{room}/session", api.start_session, methods=["POST"]),
            Route("/api/boards/{kind}/{period}", api.board),
            Route("/api/pk/invite", api.pk_invite, methods=["POST"]),
            Route("/api/overlay/token", api.overlay_token, methods=["POST"]),
            Route("/api/overlay/revoke", api.overlay_revoke, methods=["POST"]),
            Route("/api/pk/{pk_id}/{answer:str}", api.pk_answer, methods=["POST"]),
            Route("/api/pk/{pk_id}", api.pk_get),
            *billing_api.routes(),
            *admin_api.routes(),
            *catalog_api.routes(),
            Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        ],
        lifespan=lifespan,
        exception_handlers={api.ApiError: _api_error},  # type: ignore[dict-item]
    )
    return app


async def _api_error(request: Request, exc: api.ApiError) -> Response:
    return api.error_response(exc)
