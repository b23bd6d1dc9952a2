"""uvicorn, configured the way giftd needs it, with two changes to its Server.

* Before uvicorn closes WebSockets on shutdown (with 1012), each viewer gets
  a `bye` message and a 1001 close from us, so clients know to reconnect
  elsewhere rather than guess.
* `capture_signals` does not re-raise SIGINT/SIGTERM after shutdown, which
  would kill `giftd serve` before it stops its embedded Valkey and Postgres.
* Once it listens, what start-up built is frozen out of garbage collection
  (server/gc_watch.py).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from server.gc_watch import freeze_startup
from server.websocket import GiftdWebSocket


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning",
                   **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        # /ws sockets are ours (server/websocket.py): message size, pings and
        # compression (none) are set there, not by uvicorn's ws_* options.
        app, host=host, port=port, loop="uvloop", ws=GiftdWebSocket,
        lifespan="on", log_level=log_level, timeout_graceful_shutdown=5, access_log=False,
        log_config=None,  # uvicorn's loggers go through ours (JSON with GIFTD_LOG_FORMAT)
        **extra)


class GiftdServer(uvicorn.Server):
    capture_process_signals = True  # tests running it in-process turn this off ...
    freeze_gc = True  # ... and this (a test process starts many servers)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.freeze_gc:
            freeze_startup()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.capture_process_signals:
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.loaded_app
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)  # through uvicorn's middleware wrappers
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is not None:
            ctx.say_goodbye()
        await super().shutdown(sockets)
