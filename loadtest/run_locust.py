#!/usr/bin/env python
"""Run loadtest/locustfile.py headless against a local giftd and print locust's summary.

    .venv/bin/python loadtest/run_locust.py        # 60 users, 60 s (storm in the last 30 s)
    .venv/bin/python loadtest/run_locust.py -u 200 -r 40 -t 120s
    GIFTD_URL=http://127.0.0.1:8000 .venv/bin/python loadtest/run_locust.py   # a running
        `giftd serve --demo` (sandbox on): nothing is started, the demo accounts are used

Without GIFTD_URL it starts `giftd serve --demo --port 0` in a temporary var dir
(giftd starts its embedded Valkey and Postgres there), with a 60-s PK round and
the sandbox notifying at once. It seeds accounts through the real paths:
gifters register over HTTP and buy coins through the sandbox channel (order with
an Idempotency-Key, the sandbox pay endpoint, the signed notify credits the
wallet), viewers register, the demo streamers log in. Then it runs

    locust -f loadtest/locustfile.py --headless -u N -r R -t T --host <giftd> --only-summary

prints the CPU each process used (the machine is shared: other processes'
share is printed too) and giftd's gift/flusher counters from /metrics, and
stops everything it started (giftd stops its embedded servers).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from bench_spine import _machine_busy_s, _proc_table, _tree_cpu  # noqa: E402

START_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_giftd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = Path(sys.executable).with_name("giftd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]
    env = {**os.environ, "GIFTD_VAR_DIR": str(tmp / "var"),
           "GIFTD_PK_ROUND_MS": "60000", "GIFTD_PK_PUNISH_MS": "5000",
           "GIFTD_SANDBOX_NOTIFY_SCHEDULE_S": "0,2,5", "GIFTD_SANDBOX_DUPLICATE_PCT": "10"}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    logf = tmp / "giftd.log"
    with open(logf, "wb") as out:
        proc = subprocess.Popen([*cmd, "serve", "--demo", "--port", "0", "--log-level",
                                 "warning"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"giftd serve exited with {proc.returncode}:\n"
                               + logf.read_text(errors="replace")[-3000:])
        m = re.search(r"giftd is up on (http://\S+?)/?\s", logf.read_text(errors="replace"))
        if m:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(m.group(1) + "/health", timeout=2).status_code == 200:
                    return proc, m.group(1)
        time.sleep(0.2)
    raise RuntimeError("giftd serve did not come up:\n" + logf.read_text(errors="replace")[-3000:])


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def register(c: httpx.Client, name: str) -> str:
    r = c.post("/api/register", json={"username": name, "password": "password123"})
    r.raise_for_status()
    return str(r.json()["token"])


def recharge(c: httpx.Client, token: str, pack_yuan: int, more: bool = False) -> int:
    """One sandbox recharge through the real path; returns the balance once it is credited."""
    auth = {"Authorization": f"Bearer {token}"}
    before = int(c.get("/api/me/balance", headers=auth).json()["balance"]) if more else 0
    r = c.post("/api/recharge/orders", json={"channel": "sandbox", "pack_yuan": pack_yuan},
               headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
    r.raise_for_status()
    order = r.json()["order"]["id"]
    c.post(f"/sandbox/pay/{order}", headers={"Accept": "application/json"}).raise_for_status()
    for _ in range(100):
        bal = int(c.get("/api/me/balance", headers=auth).json()["balance"])
        if bal > before:
            return bal
        time.sleep(0.1)
    raise RuntimeError(f"order {order} was not credited within 10 s")


def seed(base: str, gifters: int, viewers: int, path: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]

    def gifter(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=base, timeout=30) as c:
            name = f"lg{tag}{i}"
            tok = register(c, name)
            recharge(c, tok, 648)  # the first recharge gets the first-recharge bonus
            recharge(c, tok, 648, more=True)
            return {"name": name, "token": tok, "balance": recharge(c, tok, 648, more=True)}

    def viewer(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=base, timeout=30) as c:
            name = f"lv{tag}{i}"
            return {"name": name, "token": register(c, name)}

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        g = list(ex.map(gifter, range(gifters)))
        v = list(ex.map(viewer, range(viewers)))
    with httpx.Client(base_url=base, timeout=30) as c:
        streamers = []
        for name in ("aurora", "blaze"):
            r = c.post("/api/login", json={"username": name, "password": "giftd-demo"})
            r.raise_for_status()
            streamers.append({"name": name, "token": r.json()["token"]})
    data = {"rooms": ["aurora", "blaze"], "gifters": g, "viewers": v, "streamers": streamers}
    path.write_text(json.dumps(data))
    return data


def cpu_now(named: dict[str, int | None]) -> dict[str, float]:
    t = _proc_table()
    out = {"time": time.monotonic(), "machine": _machine_busy_s()}
    for k, pid in named.items():
        out[k] = sum(_tree_cpu(t, pid))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-u", "--users", type=int, default=60, help="steady audience (locust -u)")
    ap.add_argument("-r", "--spawn-rate", type=float, default=20, help="locust -r")
    ap.add_argument("-t", "--run-time", default="60s", help="locust -t (the storm is the last "
                    "GIFTD_LOCUST_STORM_S=30 s of it)")
    ap.add_argument("--gifters", type=int, default=40, help="gifter accounts to seed")
    ap.add_argument("--viewers", type=int, default=10, help="viewer accounts to seed")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="giftd-locust-"))
    os.chmod(tmp, 0o755)  # giftd's embedded Postgres drops to an unprivileged user as root
    proc: subprocess.Popen[bytes] | None = None
    locust: subprocess.Popen[bytes] | None = None
    env = dict(os.environ)
    try:
        base = os.environ.get("GIFTD_URL", "").rstrip("/")
        if base:
            log(f"using the running giftd at {base} (demo accounts; nothing started)")
        else:
            log("starting `giftd serve --demo --port 0` (embedded Valkey + Postgres in "
                f"{tmp})")
            proc, base = start_giftd(tmp)
            log(f"giftd is up on {base}")
            t = time.monotonic()
            data = seed(base, args.gifters, args.viewers, tmp / "accounts.json")
            log(f"seeded {len(data['gifters'])} gifters (registered, recharged through the "
                f"sandbox: {data['gifters'][0]['balance']:,} coins each) and "
                f"{len(data['viewers'])} viewers in {time.monotonic() - t:.1f}s")
            env["GIFTD_LOCUST_ACCOUNTS"] = str(tmp / "accounts.json")
        cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
               "--host", base, "--only-summary", "--stop-timeout", "5",
               "--csv", str(tmp / "locust"), "--loglevel", "INFO"]
        log("running: " + " ".join(c if c != sys.executable else "python" for c in cmd))
        named: dict[str, int | None] = {"giftd (+ valkey, postgres)": proc.pid if proc else None}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c0 = cpu_now(named)
        locust = subprocess.Popen(cmd, env=env, cwd=str(HERE.parent))
        rc = locust.wait()
        c1 = cpu_now(named)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # locust, exited and reaped
        wall = c1["time"] - c0["time"]
        ours = {k: (c1[k] - c0[k]) / wall for k in named}
        ours["locust"] = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
        machine = (c1["machine"] - c0["machine"]) / wall
        others = max(0.0, machine - sum(ours.values()))
        print("\ncores used during the locust run: "
              + ", ".join(f"{k} {v:.2f}" for k, v in ours.items())
              + f"; OTHER processes on the machine {others:.2f} (of {os.cpu_count()})")
        if proc is not None:
            m = httpx.get(base + "/metrics", timeout=10).text
            wanted = ("giftd_gifts_total", "giftd_flush_lag_ms", "giftd_ledger_backlog",
                      "giftd_slow_consumer_closes", "giftd_deliveries", "giftd_frames_written")
            print("giftd /metrics at the end: " + "; ".join(
                ln for ln in m.splitlines() if ln.startswith(wanted)))
        return rc
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if locust is not None and locust.poll() is None:
            locust.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                locust.wait(timeout=10)
        stop(proc)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
