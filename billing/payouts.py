"""Creators' money out: verification (KYC), payout methods, withdrawals, statements.

Withdrawal, in the ledger (journal kind, ref = withdrawal id):
  request   withdrawal_freeze   creator_earnings:C -a, creator_frozen:C +a
  reject    withdrawal_release  creator_frozen:C -a,   creator_earnings:C +a
  paid      withdrawal_payout   creator_frozen:C -a,   withdrawals_paid +a
  failed    withdrawal_release  creator_frozen:C -a,   creator_earnings:C +a
States REQUESTED -> APPROVED -> PAID | FAILED, REQUESTED -> REJECTED
(billing/revenue.py w_transition). Each step locks the withdrawal row and the
journal's UNIQUE (kind, ref) backs it up, so a double approval or a notify
delivered 20 times moves money once. Requests of one creator are serialized on
a row lock of their earnings account: two requests spending the same coins at
once cannot both pass the available-balance check.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import secrets
import string
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from billing import audit
from billing.channels.base import PayoutChannel, PayoutNotice, PayoutStatus, Rejected, Reply
from billing.crypto import Sealer
from billing.db import Db
from billing.identity import (
    IdentityError,
    check_account,
    check_kyc,
    mask_account,
    mask_id_number,
    mask_name,
)
from billing.revenue import (
    LEDGER_ON,
    WEvent,
    WithdrawLimits,
    WState,
    check_withdraw,
    coins_to_fen,
    day_bounds,
    local_day,
    w_transition,
)
from billing.settlement import balances, post, settlement_json
from server.auth import Principal
from server.settings import Settings

log = logging.getLogger("giftd.payouts")

METHODS_MAX = 10  # active payout methods per creator
STATEMENT_DAYS_MAX = 366  # one statement covers at most this many days
_ALNUM = string.ascii_letters + string.digits


class PayoutError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def new_withdrawal_id() -> str:
    return "W" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def kyc_json(r: asyncpg.Record | None) -> dict[str, Any]:
    if r is None:
        return {"status": "none"}
    return {"creator_id": r["creator_id"], "status": r["status"], "real_name": r["name_masked"],
            "id_number": r["id_masked"], "reason": r["reason"],
            "submitted_at": r["submitted_at"].isoformat(),
            "reviewed_at": r["reviewed_at"].isoformat() if r["reviewed_at"] else None}


def method_json(r: asyncpg.Record) -> dict[str, Any]:
    return {"id": r["id"], "kind": r["kind"], "account": r["masked"], "bank": r["bank"],
            "created_at": r["created_at"].isoformat()}


def withdrawal_json(r: asyncpg.Record) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return v.isoformat() if v else None
    return {"id": r["id"], "creator_id": r["creator_id"], "method_id": r["method_id"],
            "method": ({"kind": r.get("kind"), "account": r.get("masked")}
                       if r.get("kind") else None),
            "amount_coins": r["amount_coins"], "amount_fen": r["amount_fen"],
            "status": r["status"], "reason": r["reason"], "reviewed_by": r["reviewed_by"],
            "reviewed_at": iso(r["reviewed_at"]), "channel": r["channel"],
            "payout_no": r["payout_no"], "created_at": iso(r["created_at"]),
            "done_at": iso(r["done_at"])}


_W_SELECT = """SELECT w.*, m.kind, m.masked FROM withdrawals w
                 JOIN payout_methods m ON m.id = w.method_id"""


async def _book(conn: Db, kind: str, ref: str, postings: list[tuple[str, int]]) -> bool:
    """One journal entry, once: False if (kind, ref) was booked already."""
    entry = await conn.fetchval(
        """INSERT INTO journal_entries (kind, ref) VALUES ($1, $2)
           ON CONFLICT (kind, ref) DO NOTHING RETURNING id""", kind, ref)
    if entry is None:
        return False
    await post(conn, entry, postings)
    return True


async def _ensure_accounts(conn: Db, uid: int) -> None:
    await conn.execute(
        """INSERT INTO accounts (code, kind, owner_id)
           VALUES ('creator_earnings:' || $1::bigint, 'creator_earnings', $1),
                  ('creator_frozen:' || $1::bigint, 'creator_frozen', $1)
           ON CONFLICT (code) DO NOTHING""", uid)


class Payouts:
    def __init__(self, *, pool: asyncpg.Pool, settings: Settings, sealer: Sealer,
                 channels: Mapping[str, PayoutChannel]) -> None:
        self.pool = pool
        self.settings = settings
        self.sealer = sealer
        self.channels = dict(channels)

    @property
    def limits(self) -> WithdrawLimits:
        s = self.settings
        return WithdrawLimits(s.withdraw_min_coins, s.withdraw_max_coins,
                              s.withdraw_daily_max_coins)

    # --- KYC ---------------------------------------------------------------------------
    async def submit_kyc(self, creator: Principal, real_name: str, id_number: str
                         ) -> dict[str, Any]:
        try:
            name, idn = check_kyc(real_name, id_number)
        except IdentityError as exc:
            raise PayoutError(400, exc.code, str(exc)) from None
        uid = creator.user_id
        name_enc = self.sealer.seal(name, f"kyc:name:{uid}")
        id_enc = self.sealer.seal(idn, f"kyc:id:{uid}")
        async with self.pool.acquire() as conn, conn.transaction():
            cur = await conn.fetchrow("SELECT status FROM creator_kyc WHERE creator_id = $1 "
                                      "FOR UPDATE", uid)
            if cur is not None and cur["status"] == "approved":
                raise PayoutError(409, "kyc_already_approved",
                                  "the verification is approved; ask support to change it")
            row = await conn.fetchrow(
                """INSERT INTO creator_kyc (creator_id, name_enc, id_number_enc, name_masked,
                                            id_masked, status)
                   VALUES ($1, $2, $3, $4, $5, 'pending')
                   ON CONFLICT (creator_id) DO UPDATE SET name_enc = $2, id_number_enc = $3,
                       name_masked = $4, id_masked = $5, status = 'pending', reason = NULL,
                       reviewed_by = NULL, reviewed_at = NULL, submitted_at = now()
                   RETURNING *""", uid, name_enc, id_enc, mask_name(name), mask_id_number(idn))
        return kyc_json(row)

    async def get_kyc(self, creator_id: int) -> dict[str, Any]:
        return kyc_json(await self.pool.fetchrow(
            "SELECT * FROM creator_kyc WHERE creator_id = $1", creator_id))

    async def review_kyc(self, actor: Principal, creator_id: int, approve: bool,
                         reason: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            cur = await conn.fetchrow("SELECT * FROM creator_kyc WHERE creator_id = $1 "
                                      "FOR UPDATE", creator_id)
            if cur is None:
                raise PayoutError(404, "unknown_kyc", "no verification submitted")
            if cur["status"] != "pending":
                raise PayoutError(409, "illegal_transition",
                                  f"the verification is already {cur['status']}")
            status = "approved" if approve else "rejected"
            row = await conn.fetchrow(
                """UPDATE creator_kyc SET status = $2, reason = $3, reviewed_by = $4,
                          reviewed_at = now() WHERE creator_id = $1 RETURNING *""",
                creator_id, status, reason, actor.user_id)
            await audit.record(conn, actor_id=actor.user_id, actor=actor.name,
                               action=f"kyc.{'approve' if approve else 'reject'}",
                               target=f"creator:{creator_id}", reason=reason,
                               detail={"real_name": cur["name_masked"],
                                       "id_number": cur["id_masked"]})
        return kyc_json(row)

    def reveal_kyc(self, row: asyncpg.Record) -> tuple[str, str]:
        """Decrypt (for the payout channel's name check; never sent to browsers)."""
        uid = row["creator_id"]
        return (self.sealer.open(row["name_enc"], f"kyc:name:{uid}"),
                self.sealer.open(row["id_number_enc"], f"kyc:id:{uid}"))

    # --- payout methods -----------------------------------------------------------------
    async def add_method(self, creator: Principal, kind: str, account: str,
                         bank: str | None) -> dict[str, Any]:
        try:
            account = check_account(kind, account)
        except IdentityError as exc:
            raise PayoutError(400, exc.code, str(exc)) from None
        if bank is not None and not 1 <= len(bank) <= 64:
            raise PayoutError(400, "bad_field", "bank is 1..64 characters")
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", creator.user_id)
            n = await conn.fetchval("SELECT count(*) FROM payout_methods WHERE creator_id = $1 "
                                    "AND active", creator.user_id)
            if n >= METHODS_MAX:
                raise PayoutError(409, "too_many_methods",
                                  f"at most {METHODS_MAX} payout methods")
            mid = await conn.fetchval("SELECT nextval('payout_methods_id_seq')")
            row = await conn.fetchrow(
                """INSERT INTO payout_methods (id, creator_id, kind, account_enc, masked, bank)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
                mid, creator.user_id, kind,
                self.sealer.seal(account, f"method:{mid}:{creator.user_id}"),
                mask_account(kind, account), bank)
        assert row is not None
        return method_json(row)

    async def list_methods(self, creator_id: int) -> list[dict[str, Any]]:
        return [method_json(r) for r in await self.pool.fetch(
            "SELECT * FROM payout_methods WHERE creator_id = $1 AND active ORDER BY id",
            creator_id)]

    async def remove_method(self, creator_id: int, method_id: int) -> bool:
        r = await self.pool.execute("UPDATE payout_methods SET active = false WHERE id = $1 "
                                    "AND creator_id = $2 AND active", method_id, creator_id)
        return r.endswith(" 1")

    # --- withdrawals ----------------------------------------------------------------------
    async def request_withdrawal(self, creator: Principal, *, amount_coins: int,
                                 method_id: int, idem_key: str,
                                 now: datetime | None = None) -> tuple[dict[str, Any], bool]:
        """Freeze the coins and record the request. Returns (withdrawal, replayed)."""
        uid = creator.user_id
        fp = hashlib.sha256(f"{amount_coins}:{method_id}".encode()).hexdigest()
        now = now or datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            await _ensure_accounts(conn, uid)
            # Serializes this creator's requests: the balance read below stays true.
            await conn.execute("SELECT 1 FROM accounts WHERE code = $1 FOR UPDATE",
                               f"creator_earnings:{uid}")
            old = await conn.fetchrow(_W_SELECT + " WHERE w.creator_id = $1 AND w.idem_key = $2",
                                      uid, idem_key)
            if old is not None:
                if old["request_fp"] != fp:
                    raise PayoutError(409, "idempotency_conflict",
                                      "this Idempotency-Key was used with another request")
                return withdrawal_json(old), True
            kyc = await conn.fetchval("SELECT status FROM creator_kyc WHERE creator_id = $1", uid)
            if kyc != "approved":
                raise PayoutError(409, "kyc_required", "withdrawals need an approved real-name "
                                  "verification")
            if not await conn.fetchval("SELECT 1 FROM payout_methods WHERE id = $1 AND "
                                       "creator_id = $2 AND active", method_id, uid):
                raise PayoutError(400, "unknown_method", "no such payout method")
            bal = await balances(conn, uid, self.settings, now)
            start, end = day_bounds(local_day(now, self.settings.timezone),
                                    self.settings.timezone)
            today = await conn.fetchval(
                """SELECT coalesce(sum(amount_coins), 0)::bigint FROM withdrawals
                    WHERE creator_id = $1 AND created_at >= $2 AND created_at < $3
                      AND status NOT IN ('REJECTED', 'FAILED')""", uid, start, end)
            refused = check_withdraw(amount_coins, available=bal["available_coins"],
                                     today_coins=today, limits=self.limits)
            if refused is not None:
                status = 409 if refused in ("insufficient_available", "daily_limit") else 400
                raise PayoutError(status, refused, {
                    "below_minimum": f"at least {self.limits.min_coins} coins",
                    "above_maximum": f"at most {self.limits.max_coins} coins",
                    "daily_limit": f"at most {self.limits.daily_max_coins} coins a day",
                    "insufficient_available": f"only {bal['available_coins']} coins are "
                                              "available"}[refused])
            wid = new_withdrawal_id()
            fen = coins_to_fen(amount_coins, self.settings.payout_fen_per_kcoin)
            await _book(conn, "withdrawal_freeze", wid, [(f"creator_earnings:{uid}", -amount_coins),
                                                        (f"creator_frozen:{uid}", amount_coins)])
            await conn.execute(
                """INSERT INTO withdrawals (id, creator_id, method_id, amount_coins, amount_fen,
                                            status, idem_key, request_fp, created_at, updated_at)
                   VALUES ($1, $2, $3, $4, $5, 'REQUESTED', $6, $7, $8, $8)""",
                wid, uid, method_id, amount_coins, fen, idem_key, fp, now)
            await conn.execute(
                """INSERT INTO withdrawal_events (withdrawal_id, from_state, to_state, accepted,
                                                  source) VALUES ($1, NULL, 'REQUESTED', true,
                                                  'api')""", wid)
            await audit.record(conn, actor_id=uid, actor=creator.name, action="withdrawal.request",
                               target=f"withdrawal:{wid}", reason="requested by the creator",
                               detail={"amount_coins": amount_coins, "amount_fen": fen,
                                       "method_id": method_id})
            row = await conn.fetchrow(_W_SELECT + " WHERE w.id = $1", wid)
        assert row is not None
        return withdrawal_json(row), False

    async def _move(self, conn: Db, w: asyncpg.Record, event: WEvent, source: str,
                    detail: str) -> tuple[WState | None, bool]:
        """Apply one event to a locked withdrawal row. Returns (new state, already)."""
        cur = WState(w["status"])
        out = w_transition(cur, event)
        if out.to is None:
            await conn.execute(
                """INSERT INTO withdrawal_events (withdrawal_id, from_state, to_state, accepted,
                                                  source, detail)
                   VALUES ($1, $2, $3, false, $4, $5)""", w["id"], cur.value,
                event.value, source, out.reason or "already")
            return None, out.already
        uid, amount = w["creator_id"], w["amount_coins"]
        kind = LEDGER_ON.get(out.to)
        if kind is not None:
            to_acct = ("withdrawals_paid" if out.to is WState.PAID
                       else f"creator_earnings:{uid}")
            if not await _book(conn, kind, w["id"], [(f"creator_frozen:{uid}", -amount),
                                                     (to_acct, amount)]):
                raise RuntimeError(f"withdrawal {w['id']}: {kind} was booked already")
        await conn.execute(
            """INSERT INTO withdrawal_events (withdrawal_id, from_state, to_state, accepted,
                                              source, detail) VALUES ($1, $2, $3, true, $4, $5)""",
            w["id"], cur.value, out.to.value, source, detail)
        return out.to, False

    async def review_withdrawal(self, actor: Principal, wid: str, approve: bool,
                                reason: str) -> dict[str, Any]:
        channel = self.settings.payout_channel
        if approve and channel not in self.channels:
            raise PayoutError(503, "payout_channel_unavailable",
                              f"the payout channel {channel!r} is not configured")
        event = WEvent.APPROVE if approve else WEvent.REJECT
        async with self.pool.acquire() as conn, conn.transaction():
            w = await conn.fetchrow("SELECT * FROM withdrawals WHERE id = $1 FOR UPDATE", wid)
            if w is None:
                raise PayoutError(404, "unknown_withdrawal", "no such withdrawal")
            to, already = await self._move(conn, w, event, f"review:{actor.user_id}", reason)
            if to is None and not already:
                raise PayoutError(409, "illegal_transition",
                                  f"cannot {event.value} a withdrawal that is {w['status']}")
            if to is not None:
                await conn.execute(
                    """UPDATE withdrawals SET status = $2, reason = $3, reviewed_by = $4,
                              reviewed_at = now(), updated_at = now(), channel = $5,
                              done_at = CASE WHEN $2 = 'REJECTED' THEN now() END
                        WHERE id = $1""", wid, to.value, reason, actor.user_id,
                    channel if approve else None)
                await audit.record(conn, actor_id=actor.user_id, actor=actor.name,
                                   action=f"withdrawal.{event.value}",
                                   target=f"withdrawal:{wid}", reason=reason,
                                   detail={"creator_id": w["creator_id"],
                                           "amount_coins": w["amount_coins"],
                                           "amount_fen": w["amount_fen"]})
        if to is WState.APPROVED:
            await self.send_payout(wid)
        row = await self.pool.fetchrow(_W_SELECT + " WHERE w.id = $1", wid)
        assert row is not None
        return {**withdrawal_json(row), "already": already}

    async def send_payout(self, wid: str) -> bool:
        """Ask the channel to pay an approved withdrawal (idempotent at the channel)."""
        row = await self.pool.fetchrow(
            """SELECT w.*, m.kind, m.masked, m.account_enc FROM withdrawals w
                 JOIN payout_methods m ON m.id = w.method_id WHERE w.id = $1""", wid)
        if row is None or row["status"] != "APPROVED":
            return False
        chan = self.channels.get(row["channel"] or "")
        if chan is None:
            log.error("withdrawal %s: payout channel %r is not configured", wid, row["channel"])
            return False
        account = self.sealer.open(row["account_enc"],
                                   f"method:{row['method_id']}:{row['creator_id']}")
        try:
            payout_no = await chan.payout(wid, row["amount_fen"], row["kind"], account,
                                          row["masked"])
        except Exception as exc:  # retried by the sweep
            log.warning("withdrawal %s: payout request failed: %r", wid, exc)
            return False
        await self.pool.execute(
            """UPDATE withdrawals SET payout_no = coalesce(payout_no, $2), updated_at = now()
                WHERE id = $1 AND status = 'APPROVED'""", wid, payout_no)
        return True

    async def sweep(self) -> int:
        """Re-send approved withdrawals that have no payout yet (a crash after approval)."""
        rows = await self.pool.fetch(
            """SELECT id FROM withdrawals WHERE status = 'APPROVED'
                 AND updated_at < now() - make_interval(secs => $1) ORDER BY updated_at
                 LIMIT 100""", self.settings.payout_retry_after_s)
        n = 0
        for r in rows:
            n += await self.send_payout(r["id"])
        return n

    async def handle_payout_notify(self, channel_name: str, headers: Mapping[str, str],
                                   body: bytes) -> tuple[Reply, str]:
        """A signed payout result. Returns (the channel's answer, our verdict)."""
        chan = self.channels[channel_name]
        notice = chan.verify_payout_notify({k.lower(): v for k, v in headers.items()}, body,
                                           time.time())
        if isinstance(notice, Rejected):
            log.warning("%s payout notify rejected: %s", channel_name, notice.reason)
            return Reply(400, chan.reply(False).body, chan.reply(False).content_type), \
                f"rejected:{notice.reason}"
        verdict = await self._settle_payout(channel_name, notice)
        ok = verdict in ("paid", "failed", "already")
        return chan.reply(ok), verdict

    async def _settle_payout(self, channel_name: str, n: PayoutNotice) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            w = await conn.fetchrow("SELECT * FROM withdrawals WHERE id = $1 FOR UPDATE",
                                    n.withdrawal_id)
            if w is None:
                return "unknown_withdrawal"
            if w["channel"] != channel_name:
                return "wrong_channel"
            if w["amount_fen"] != n.amount_fen:
                log.error("withdrawal %s: channel says %d fen, we asked %d", w["id"],
                          n.amount_fen, w["amount_fen"])
                return "amount_mismatch"
            event = WEvent.PAID if n.status is PayoutStatus.PAID else WEvent.FAILED
            to, already = await self._move(conn, w, event, f"notify:{channel_name}",
                                           n.detail or n.payout_no)
            if to is None:
                return "already" if already else "illegal_state"
            await conn.execute(
                """UPDATE withdrawals SET status = $2, payout_no = $3, updated_at = now(),
                          done_at = now(), reason = CASE WHEN $2 = 'FAILED' THEN $4
                                                         ELSE reason END
                    WHERE id = $1""", w["id"], to.value, n.payout_no, n.detail)
            await audit.record(conn, actor_id=None, actor=f"channel:{channel_name}",
                               action=f"withdrawal.{event.value}", target=f"withdrawal:{w['id']}",
                               reason=n.detail or "payout notify",
                               detail={"payout_no": n.payout_no, "amount_fen": n.amount_fen,
                                       "amount_coins": w["amount_coins"]})
            return to.value.lower()

    async def list_withdrawals(self, *, creator_id: int | None = None, status: str | None = None,
                               limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            _W_SELECT + """ WHERE ($1::bigint IS NULL OR w.creator_id = $1)
                              AND ($2::text IS NULL OR w.status = $2)
                            ORDER BY w.created_at DESC LIMIT $3""", creator_id, status, limit)
        return [withdrawal_json(r) for r in rows]

    # --- statements -----------------------------------------------------------------------
    async def statement(self, creator_id: int, first: date, last: date) -> dict[str, Any]:
        if last < first or (last - first).days >= STATEMENT_DAYS_MAX:
            raise PayoutError(400, "bad_range", f"from <= to, at most {STATEMENT_DAYS_MAX} days")
        tz = self.settings.timezone
        start, end = day_bounds(first, tz)[0], day_bounds(last, tz)[1]
        daily = await self.pool.fetch(
            """SELECT (created_at AT TIME ZONE $4)::date AS day, count(*)::int AS gifts,
                      sum(count)::bigint AS items, sum(amount_coins)::bigint AS gross
                 FROM gift_events WHERE streamer_id = $1 AND created_at >= $2
                  AND created_at < $3 GROUP BY 1 ORDER BY 1""", creator_id, start, end, tz)
        gifts = await self.pool.fetch(
            """SELECT gift_code, count(*)::int AS sends, sum(count)::bigint AS items,
                      sum(amount_coins)::bigint AS gross
                 FROM gift_events WHERE streamer_id = $1 AND created_at >= $2
                  AND created_at < $3 GROUP BY 1 ORDER BY 4 DESC, 1""", creator_id, start, end)
        setts = await self.pool.fetch(
            "SELECT * FROM settlements WHERE creator_id = $1 AND day BETWEEN $2 AND $3 "
            "ORDER BY day", creator_id, first, last)
        ws = await self.pool.fetch(
            _W_SELECT + " WHERE w.creator_id = $1 AND w.created_at >= $2 AND w.created_at < $3 "
            "ORDER BY w.created_at", creator_id, start, end)
        return {
            "creator_id": creator_id, "from": first.isoformat(), "to": last.isoformat(),
            "timezone": tz, "balances": await balances(self.pool, creator_id, self.settings),
            "daily": [{"day": r["day"].isoformat(), "gifts": r["gifts"], "items": r["items"],
                       "gross_coins": r["gross"]} for r in daily],
            "by_gift": [{"gift_code": r["gift_code"], "sends": r["sends"], "items": r["items"],
                         "gross_coins": r["gross"]} for r in gifts],
            "settlements": [settlement_json(r) for r in setts],
            "withdrawals": [withdrawal_json(r) for r in ws],
        }


CSV_KINDS = ("daily", "by_gift", "settlements", "withdrawals")
_CSV_COLUMNS = {
    "daily": ("day", "gifts", "items", "gross_coins"),
    "by_gift": ("gift_code", "sends", "items", "gross_coins"),
    "settlements": ("day", "gross_coins", "creator_coins", "platform_coins",
                    "month_before_coins", "gift_count", "rule_id", "rule_kind", "rule_tiers",
                    "hold_days", "available_on"),
    "withdrawals": ("id", "created_at", "amount_coins", "amount_fen", "status", "method_kind",
                    "method_account", "reason", "payout_no", "done_at"),
}


def statement_csv(st: dict[str, Any], kind: str) -> str:
    """One section of a statement as CSV (header row + one row per item)."""
    cols = _CSV_COLUMNS[kind]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for item in st[kind]:
        if kind == "settlements":
            item = {**item, "rule_kind": item["rule"]["kind"],
                    "rule_tiers": ";".join(f"{a}:{b}" for a, b in item["rule"]["tiers"])}
        elif kind == "withdrawals":
            m = item.get("method") or {}
            item = {**item, "method_kind": m.get("kind"), "method_account": m.get("account")}
        w.writerow(["" if item.get(c) is None else item[c] for c in cols])
    return buf.getvalue()


def parse_day(raw: str | None, default: date) -> date:
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise PayoutError(400, "bad_field", "dates are YYYY-MM-DD") from None


def default_range(now: datetime, tz: str) -> tuple[date, date]:
    today = local_day(now, tz)
    return today.replace(day=1), today
