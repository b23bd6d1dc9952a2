"""Load-generator processes driven over pipes: the parent's handle on them.

bench_fanout, surge and bench each fork a few load-generator processes first
thing (nothing of the parent's loop or threads to inherit) and talk to them
with small command tuples over one pipe each. `ask` sends a command to every
process (or one per process with `each`) and gathers the answers; a daemon
thread per pipe does the blocking reads, so the parent's event loop never waits
on a pipe. A process that dies turns its next answer into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any


class ProcessPool:
    def __init__(self, n: int, target: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
        ctx = mp.get_context("fork")
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        self.inbox: list[asyncio.Queue[Any]] | None = None
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=target, args=(child, *args), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _start_readers(self) -> None:
        loop = asyncio.get_running_loop()
        self.inbox = [asyncio.Queue() for _ in self.pipes]

        def reader(pipe: Any, q: asyncio.Queue[Any]) -> None:
            while True:
                try:
                    msg = pipe.recv()
                    loop.call_soon_threadsafe(q.put_nowait, msg)
                except (EOFError, OSError, RuntimeError) as exc:  # RuntimeError: loop closed
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(q.put_nowait, exc)
                    return

        for p, q in zip(self.pipes, self.inbox, strict=True):
            threading.Thread(target=reader, args=(p, q), daemon=True).start()

    async def ask(self, *msg: Any, each: list[tuple[Any, ...]] | None = None,
                  timeout: float = 60) -> list[Any]:
        """Send `msg` (or each process its own `each[i]`); every process's answer."""
        if self.inbox is None:
            self._start_readers()
        assert self.inbox is not None
        for i, p in enumerate(self.pipes):
            p.send(each[i] if each is not None else msg)

        async def one(q: asyncio.Queue[Any]) -> Any:
            r = await q.get()
            if isinstance(r, BaseException):
                raise RuntimeError(f"a load-generator process died: {r!r}; exit codes "
                                   f"{[p.exitcode for p in self.procs]}")
            return r

        return list(await asyncio.wait_for(asyncio.gather(*(one(q) for q in self.inbox)),
                                           timeout))

    def stop(self) -> None:
        for p in self.pipes:
            with contextlib.suppress(Exception):
                p.send(("exit",))
        for pr in self.procs:
            pr.join(timeout=3)
            if pr.is_alive():
                pr.terminate()
                pr.join(timeout=2)
            if pr.is_alive():
                pr.kill()
                pr.join(timeout=2)
        self.procs, self.pipes = [], []
