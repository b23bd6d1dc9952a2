"""Load-generator processes driven over pipes: both ends.

bench_fanout, surge and bench each fork a few load-generator processes first
thing (nothing of the parent's loop or threads to inherit) and talk to them
with small command tuples over one pipe each. In the parent, `ProcessPool.ask`
sends a command to every process (or one per process with `each`) and gathers
the answers; in each child, `run_child` answers every command with its
handler's result until `("exit",)`. On both sides a daemon thread does the
blocking pipe reads: the loop's add_reader would make the fd non-blocking, and
a large message would then fail half-read. A process that dies turns its next
answer into an error in the parent; a child whose parent dies dies too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing as mp
import os
import resource
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

# A child's answer to one command: (command, its arguments) -> the reply to send.
Handler = Callable[[str, list[Any]], Awaitable[Any]]


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def raise_nofile() -> int:
    """Lift RLIMIT_NOFILE to its hard limit (thousands of sockets per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_child(pipe: Any, make_handler: Callable[[], Handler]) -> None:
    """A load-generator process's whole life: answer commands until ("exit",)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    raise_nofile()
    import uvloop

    uvloop.run(_serve(pipe, make_handler))


async def _serve(pipe: Any, make_handler: Callable[[], Handler]) -> None:
    loop = asyncio.get_running_loop()
    cmds: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone
            loop.call_soon_threadsafe(cmds.put_nowait, msg)

    threading.Thread(target=reader, daemon=True).start()
    handle = make_handler()
    while True:
        cmd, *args = await cmds.get()
        if cmd == "exit":
            pipe.send(True)
            return
        pipe.send(await handle(cmd, args))


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
