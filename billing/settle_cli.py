"""`giftd settle --date D`: settle one local day (or a range) of creator income.

Idempotent per creator and day: safe to re-run and to run late. JSON report on
stdout; exit 0 when done, 1 when income arrived after a day was settled
(`late`, see docs/money.md), 2 when it could not run (bad date, day not over,
gifts of the day still unflushed, servers unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date, timedelta
from typing import Any

from server.settings import Settings


def cmd_settle(args: argparse.Namespace) -> int:
    import asyncpg
    from redis.asyncio import Redis

    from billing.cli import _urls
    from billing.settlement import SettleError, settle_day

    try:
        first = date.fromisoformat(args.date)
        last = date.fromisoformat(args.to) if args.to else first
    except ValueError:
        print("giftd settle: dates are YYYY-MM-DD", file=sys.stderr)
        return 2
    if last < first or (last - first).days > 366:
        print("giftd settle: --to must be on or after --date, within a year", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    urls = _urls(settings)
    if urls is None:
        print("giftd settle: set REDIS_URL and DATABASE_URL, or run it beside `giftd serve`",
              file=sys.stderr)
        return 2

    async def run() -> tuple[list[dict[str, Any]], str]:
        redis = Redis.from_url(urls[0])
        pool = await asyncpg.create_pool(urls[1], min_size=1, max_size=2)
        out: list[dict[str, Any]] = []
        try:
            d = first
            while d <= last:
                try:
                    rep = await settle_day(pool, redis, day=d, settings=settings)
                except SettleError as exc:
                    return out, f"{d}: {exc.code}: {exc}"
                out.append(rep.as_json())
                d += timedelta(days=1)
            return out, ""
        finally:
            await pool.close()
            await redis.aclose()

    try:
        reports, error = asyncio.run(run())
    except OSError as exc:
        print(f"giftd settle: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reports if args.to else (reports[0] if reports else {}), indent=2))
    if error:
        print(f"giftd settle: {error}", file=sys.stderr)
        return 2
    return 1 if any(r["late"] for r in reports) else 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("settle", help="settle creator income of a local day (idempotent)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD, in GIFTD_TIMEZONE")
    p.add_argument("--to", default="", help="settle every day from --date to this one")
    p.set_defaults(fn=cmd_settle)
