"""`giftd reconcile` and `giftd audit verify`: the money checks an operator runs.

Exit codes: 0 all consistent, 1 a difference (or a broken audit chain) was
found, 2 the command could not run (bad arguments, servers unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from server.settings import Settings


def _urls(settings: Settings) -> tuple[str, str] | None:
    from server.cli import _urls_from_running_serve

    redis_url, database_url = settings.redis_url, settings.database_url
    if not (redis_url and database_url):
        running = _urls_from_running_serve(settings)
        if running is None:
            return None
        redis_url = redis_url or running[0]
        database_url = database_url or running[1]
    return redis_url, database_url


def cmd_reconcile(args: argparse.Namespace) -> int:
    import asyncpg
    from redis.asyncio import Redis
    from tqdm import tqdm

    from billing import reconcile
    from billing.channels.sandbox import SandboxChannel, statement_csv

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"giftd reconcile: --date must be YYYY-MM-DD, not {args.date!r}", file=sys.stderr)
        return 2
    # --format defaults to the channel, --channel to the format (alipay bills are alipay's).
    channel = args.channel or args.format or "sandbox"
    fmt = args.format or channel
    if fmt not in reconcile.STATEMENT_FORMATS:
        print(f"giftd reconcile: --format is one of {', '.join(reconcile.STATEMENT_FORMATS)}",
              file=sys.stderr)
        return 2
    if fmt != "sandbox" and not args.statement:
        print(f"giftd reconcile: give --statement FILE (the {fmt} bill)", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    urls = _urls(settings)
    if urls is None:
        print("giftd reconcile: set REDIS_URL and DATABASE_URL, or run it beside `giftd serve`",
              file=sys.stderr)
        return 2

    given = b""
    if args.statement:
        try:
            given = Path(args.statement).read_bytes()
        except OSError as exc:
            print(f"giftd reconcile: cannot read the statement: {exc}", file=sys.stderr)
            return 2
    produced: list[str] = []

    async def run() -> reconcile.Report | None:
        redis = Redis.from_url(urls[0])
        pool = await asyncpg.create_pool(urls[1], min_size=1, max_size=2)
        bar = tqdm(total=4, desc=f"reconcile {day}", unit="step", file=sys.stderr,
                   disable=args.quiet)
        try:
            if args.statement:
                data = given
            elif channel == "sandbox":
                # The sandbox's statement file, as the provider would publish it.
                sb = SandboxChannel(pool, key=b"", notify_url="", schedule_s=(0,),
                                    duplicate_pct=0, timezone=settings.timezone)
                text = statement_csv(await sb.statement(day))
                produced.append(text)
                data = text.encode("utf-8")
            else:
                print(f"giftd reconcile: give --statement FILE for channel {channel}",
                      file=sys.stderr)
                return None
            try:
                rows = reconcile.parse_statement_file(data, fmt)
            except ValueError as exc:
                print(f"giftd reconcile: bad statement file: {exc}", file=sys.stderr)
                return None
            bar.update(1)

            def progress(step: str, n: int) -> None:
                bar.set_postfix_str(f"{step}: {n}")
                bar.update(1)
            return await reconcile.reconcile(pool, redis, day=day, tz=settings.timezone,
                                             channel=channel, statement=rows,
                                             progress=progress)
        finally:
            bar.close()
            await pool.close()
            await redis.aclose()

    try:
        report = asyncio.run(run())
    except OSError as exc:
        print(f"giftd reconcile: {exc}", file=sys.stderr)
        return 2
    if report is None:
        return 2
    if produced:  # keep the sandbox's statement file beside the report
        out_dir = settings.var_dir / "statements"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"sandbox-{day}.csv").write_text(produced[0], encoding="utf-8")
    text = json.dumps(report.as_json(), indent=2, ensure_ascii=False, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0 if report.ok else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    import asyncpg

    from billing import audit

    settings = Settings.from_env()
    urls = _urls(settings)
    if urls is None:
        print("giftd audit verify: set DATABASE_URL (and REDIS_URL), or run it beside "
              "`giftd serve`", file=sys.stderr)
        return 2

    async def run() -> audit.ChainReport:
        from redis.asyncio import Redis

        conn = await asyncpg.connect(urls[1])
        redis = Redis.from_url(urls[0])
        try:
            return audit.verify_chain(await audit.load(conn), await audit.load_witness(redis))
        finally:
            await conn.close()
            await redis.aclose()

    report = asyncio.run(run())
    out: dict[str, Any] = {"ok": report.ok, "records": report.records,
                           "head_hash": report.head_hash,
                           "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail}
                                        for p in report.problems]}
    print(json.dumps(out, indent=2))
    return 0 if report.ok else 1


def add_commands(sub: Any) -> None:
    """Register the money subcommands on `giftd`'s argparse subparsers."""
    p = sub.add_parser("reconcile", help="reconcile one day: channel statement vs orders vs "
                       "ledger vs Redis wallets (exit 1 on any difference)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD, in GIFTD_TIMEZONE")
    p.add_argument("--channel", default="", help="sandbox | alipay | wechatpay: whose orders "
                   "(default: the --format's channel, else sandbox)")
    p.add_argument("--statement", default="", help="the channel's statement file (default for "
                   "sandbox: produced from the sandbox's books)")
    p.add_argument("--format", default="", help="the statement's format: sandbox (our CSV), "
                   "alipay (trade bill 业务明细, zip or GBK CSV), wechatpay (v3 tradebill ALL, "
                   "plain or gzip); default: the channel's")
    p.add_argument("--out", default="", help="write the JSON report here (default: stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_reconcile)
    p = sub.add_parser("audit", help="the audit log")
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    v = asub.add_parser("verify", help="recompute the hash chain (exit 1 if broken)")
    v.set_defaults(fn=cmd_audit_verify)
