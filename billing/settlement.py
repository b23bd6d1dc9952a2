"""Revenue rules and the daily settlement (`giftd settle --date D`).

Settlement of local day D for creator C, in one transaction:
  gross    = C's gift_events with created_at in D (the configured zone)
  before   = C's gift_events from the first of D's month up to D (tier position)
  rule     = C's own rule in force on D, else the platform default, else the setting
  share    = revenue.share(rule, before, gross)
  journal  'settlement' ref 'settle:<C>:<D>':  creator_pending:C  -gross
                                               creator_earnings:C +creator
                                               platform_revenue   +platform
  row      settlements (C, D) with the rule as applied and available_on = D + N.
Everything is computed from gift_events, never from earlier settlements, so
days may be settled in any order, late, or again: the journal's (kind, ref)
and the settlements primary key make a second run a no-op (`already`).

A day is settled only once it is over in the zone, and only when the
write-behind stream holds no gift from before its end (`unflushed_gifts`):
otherwise income of D could still arrive after D was settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson

from billing import audit
from billing.db import Db
from billing.revenue import (
    Rule,
    RuleError,
    available_on,
    day_bounds,
    fixed_rule,
    local_day,
    month_start,
    parse_rule,
    settle_ready,
    share,
)
from server.auth import Principal
from server.settings import Settings


def _rule_of(row: asyncpg.Record) -> Rule:
    tiers = row["tiers"]
    if isinstance(tiers, str):
        tiers = orjson.loads(tiers)
    return parse_rule(row["kind"], tiers, row["hold_days"], row["id"])


async def rule_for(conn: Db | asyncpg.Pool, creator_id: int, day: date,
                   default_bps: int) -> Rule:
    """The rule in force for `creator_id` on `day` (own override, platform default, setting)."""
    for who in (creator_id, None):
        row = await conn.fetchrow(
            """SELECT * FROM revenue_rules
                WHERE creator_id IS NOT DISTINCT FROM $1 AND effective_from <= $2
                ORDER BY effective_from DESC, id DESC LIMIT 1""", who, day)
        if row is not None:
            return _rule_of(row)
    return fixed_rule(default_bps)


def rule_json(row: asyncpg.Record) -> dict[str, Any]:
    tiers = row["tiers"]
    return {"id": row["id"], "creator_id": row["creator_id"],
            "effective_from": row["effective_from"].isoformat(), "kind": row["kind"],
            "tiers": orjson.loads(tiers) if isinstance(tiers, str) else tiers,
            "hold_days": row["hold_days"], "reason": row["reason"],
            "created_by": row["created_by"], "created_at": row["created_at"].isoformat()}


async def add_rule(pool: asyncpg.Pool, *, creator_id: int | None, effective_from: date,
                   kind: Any, tiers: Any, hold_days: Any, reason: str,
                   actor: Principal) -> dict[str, Any]:
    """A new rule (audited). Refused when it would change a day already settled."""
    rule = parse_rule(kind, tiers, hold_days)
    if not reason.strip():
        raise RuleError("reason_required", "a reason is required")
    async with pool.acquire() as conn, conn.transaction():
        # One rule change at a time, and none while a settlement is being booked.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SETTLE_LOCK)
        if creator_id is not None and not await conn.fetchval(
                "SELECT 1 FROM users WHERE id = $1", creator_id):
            raise RuleError("unknown_creator", "no such creator")
        settled = await conn.fetchval(
            """SELECT max(day) FROM settlements
                WHERE day >= $1 AND ($2::bigint IS NULL OR creator_id = $2)""",
            effective_from, creator_id)
        if settled is not None:
            raise RuleError("already_settled",
                            f"days from {effective_from} are settled (up to {settled}); "
                            "a rule may only take effect after the last settled day")
        tiers_json = orjson.dumps([[t.from_coins, t.creator_bps] for t in rule.tiers]).decode()
        row = await conn.fetchrow(
            """INSERT INTO revenue_rules (creator_id, effective_from, kind, tiers, hold_days,
                                          reason, created_by)
               VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) RETURNING *""",
            creator_id, effective_from, rule.kind, tiers_json, rule.hold_days, reason,
            actor.user_id)
        assert row is not None
        await audit.record(conn, actor_id=actor.user_id, actor=actor.name,
                           action="revenue_rule.set",
                           target=f"creator:{creator_id}" if creator_id else "platform",
                           reason=reason, detail={"rule_id": row["id"],
                                                  "effective_from": effective_from.isoformat(),
                                                  **rule.as_json()})
    return rule_json(row)


_SETTLE_LOCK = 0x736574746C65  # advisory lock: rule changes vs settlement runs


class SettleError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SettleReport:
    day: date
    settled: list[dict[str, Any]] = field(default_factory=list)  # booked by this run
    already: int = 0       # creators settled by an earlier run, unchanged
    late: list[dict[str, Any]] = field(default_factory=list)  # income that arrived after

    def as_json(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "settled": self.settled,
                "settled_count": len(self.settled), "already": self.already, "late": self.late,
                "gross_coins": sum(s["gross_coins"] for s in self.settled),
                "creator_coins": sum(s["creator_coins"] for s in self.settled),
                "platform_coins": sum(s["platform_coins"] for s in self.settled)}


async def post(conn: Db, entry: int, postings: list[tuple[str, int]]) -> None:
    """All postings of an entry in ONE statement (the sum-to-zero trigger is per statement)."""
    kept = [(a, v) for a, v in postings if v != 0]
    await conn.execute(
        """INSERT INTO postings (entry_id, account, amount)
           SELECT $1, a, v FROM unnest($2::text[], $3::bigint[]) AS x(a, v)""",
        entry, [a for a, _ in kept], [v for _, v in kept])


async def oldest_unflushed_ms(redis: Any) -> int | None:
    from server import keys

    first = await redis.xrange(keys.LEDGER_STREAM, "-", "+", count=1)
    if not first:
        return None
    eid = first[0][0]
    return int((eid.decode() if isinstance(eid, bytes) else eid).split("-")[0])


async def settle_day(pool: asyncpg.Pool, redis: Any, *, day: date, settings: Settings,
                     actor: Principal | None = None, now: datetime | None = None
                     ) -> SettleReport:
    """Settle every creator with income on local `day`. Idempotent; see the module doc."""
    tz = settings.timezone
    now = now or datetime.now(UTC)
    if not settle_ready(day, now, tz):
        raise SettleError("day_not_over", f"{day} is not over yet in {tz}")
    start, end = day_bounds(day, tz)
    if redis is not None:
        oldest = await oldest_unflushed_ms(redis)
        if oldest is not None and oldest < end.timestamp() * 1000:
            raise SettleError("unflushed_gifts", "gifts of that day are still waiting for the "
                              "flusher; settle again once it has caught up")
    m_start = day_bounds(month_start(day), tz)[0]
    report = SettleReport(day)
    rows = await pool.fetch(
        """SELECT streamer_id, sum(amount_coins)::bigint AS gross, count(*)::int AS n
             FROM gift_events WHERE created_at >= $1 AND created_at < $2
            GROUP BY streamer_id ORDER BY streamer_id""", start, end)
    before = {r["streamer_id"]: r["s"] for r in await pool.fetch(
        """SELECT streamer_id, sum(amount_coins)::bigint AS s FROM gift_events
            WHERE created_at >= $1 AND created_at < $2 GROUP BY streamer_id""", m_start, start)}
    for r in rows:
        uid, gross = r["streamer_id"], r["gross"]
        if gross <= 0:
            continue
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _SETTLE_LOCK)
            done = await conn.fetchrow(
                "SELECT gross_coins FROM settlements WHERE creator_id = $1 AND day = $2",
                uid, day)
            if done is not None:
                if done["gross_coins"] == gross:
                    report.already += 1
                else:
                    report.late.append({"creator_id": uid, "settled_gross": done["gross_coins"],
                                        "gross_now": gross})
                continue
            rule = await rule_for(conn, uid, day, settings.revenue_default_creator_bps)
            hold = rule.hold_days if rule.hold_days is not None else settings.settlement_hold_days
            sh = share(rule, before.get(uid, 0), gross)
            entry = await conn.fetchval(
                """INSERT INTO journal_entries (kind, ref, memo) VALUES ('settlement', $1, $2)
                   ON CONFLICT (kind, ref) DO NOTHING RETURNING id""",
                f"settle:{uid}:{day.isoformat()}", f"settlement of {day}")
            if entry is None:  # booked by a concurrent run
                report.already += 1
                continue
            await conn.execute(
                """INSERT INTO accounts (code, kind, owner_id)
                   VALUES ('creator_earnings:' || $1::bigint, 'creator_earnings', $1)
                   ON CONFLICT (code) DO NOTHING""", uid)
            postings = [(f"creator_pending:{uid}", -gross),
                        (f"creator_earnings:{uid}", sh.creator),
                        ("platform_revenue", sh.platform)]
            await post(conn, entry, postings)
            avail = available_on(day, hold)
            await conn.execute(
                """INSERT INTO settlements (creator_id, day, gross_coins, creator_coins,
                       platform_coins, month_before_coins, gift_count, rule_id, rule, hold_days,
                       available_on, entry_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12)""",
                uid, day, gross, sh.creator, sh.platform, before.get(uid, 0), r["n"], rule.id,
                orjson.dumps(rule.as_json()).decode(), hold, avail, entry)
            report.settled.append({"creator_id": uid, "gross_coins": gross,
                                   "creator_coins": sh.creator, "platform_coins": sh.platform,
                                   "rule_id": rule.id, "available_on": avail.isoformat()})
    if report.settled:
        s = report.as_json()
        async with pool.acquire() as conn, conn.transaction():
            await audit.record(conn, actor_id=actor.user_id if actor else None,
                               actor=actor.name if actor else "giftd settle",
                               action="settlement.run", target=f"day:{day.isoformat()}",
                               reason="daily settlement",
                               detail={k: s[k] for k in ("settled_count", "gross_coins",
                                                         "creator_coins", "platform_coins",
                                                         "already")})
    return report


def settlement_json(r: asyncpg.Record) -> dict[str, Any]:
    rule = r["rule"]
    return {"creator_id": r["creator_id"], "day": r["day"].isoformat(),
            "gross_coins": r["gross_coins"], "creator_coins": r["creator_coins"],
            "platform_coins": r["platform_coins"],
            "month_before_coins": r["month_before_coins"], "gift_count": r["gift_count"],
            "rule_id": r["rule_id"], "rule": orjson.loads(rule) if isinstance(rule, str) else rule,
            "hold_days": r["hold_days"], "available_on": r["available_on"].isoformat(),
            "settled_at": r["created_at"].isoformat()}


async def balances(conn: Db | asyncpg.Pool, creator_id: int, settings: Settings,
                   now: datetime | None = None) -> dict[str, int]:
    """A creator's money, in coins: unsettled gift income, settled-but-pending (before
    T+N), available (withdrawable), frozen (withdrawals in review/payout), withdrawn."""
    today = local_day(now or datetime.now(UTC), settings.timezone)
    bal = {r["account"]: r["balance"] for r in await conn.fetch(
        "SELECT account, balance FROM account_balances WHERE account = ANY($1::text[])",
        [f"creator_pending:{creator_id}", f"creator_earnings:{creator_id}",
         f"creator_frozen:{creator_id}"])}
    pending = await conn.fetchval(
        """SELECT coalesce(sum(creator_coins), 0)::bigint FROM settlements
            WHERE creator_id = $1 AND available_on > $2""", creator_id, today)
    withdrawn = await conn.fetchval(
        """SELECT coalesce(sum(amount_coins), 0)::bigint FROM withdrawals
            WHERE creator_id = $1 AND status = 'PAID'""", creator_id)
    earnings = bal.get(f"creator_earnings:{creator_id}", 0)
    return {"unsettled_coins": bal.get(f"creator_pending:{creator_id}", 0),
            "pending_coins": pending, "available_coins": earnings - pending,
            "frozen_coins": bal.get(f"creator_frozen:{creator_id}", 0),
            "withdrawn_coins": withdrawn}
