"""Recharge orders, the I/O part: create, settle a paid order exactly once, notifies, fallback.

Settling a paid order is ONE Postgres transaction: lock the order row, move
its state (PENDING|CLOSED -> SUCCESS), book the journal entry
(channel_clearing -> wallet, and promotion -> wallet for a first-recharge
bonus) and queue the Redis credit in credit_outbox. The order row lock plus
the unique constraints (journal_entries (kind, ref), credit_outbox op_id,
first_recharge_bonus user_id) make a second settle of the same order a
no-op, however many notifies race. Only after the commit is the idempotent
credit script called; the outbox loop retries it if Redis was away.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg
from redis.asyncio import Redis

from billing import credits
from billing.channels.base import Channel, Notice, Rejected, Reply, TradeStatus
from billing.channels.sandbox import SandboxChannel
from billing.db import Db
from billing.orders import (
    OrderRequest,
    OrderState,
    can_transition,
    coins_for_fen,
    first_recharge_bonus,
    format_yuan,
    new_id,
)
from gifts.scripts import Script
from server import keys
from server.settings import Settings

log = logging.getLogger("giftd.recharge")


class OrderError(Exception):
    """A refused request; `code` is the stable API error code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Settled(StrEnum):
    """What a verified notice did to an order: a business outcome, not an exception."""

    CREDITED = "credited"                  # this call moved the order to SUCCESS
    ALREADY = "already"                    # the order was already paid by this trade
    NOT_PAID = "not_paid"                  # the channel says: not yet
    CLOSED = "closed"                      # the channel says the trade closed: order FAILED
    UNKNOWN_ORDER = "unknown_order"
    WRONG_CHANNEL = "wrong_channel"
    AMOUNT_MISMATCH = "amount_mismatch"
    SECOND_PAYMENT = "second_payment"      # paid again by another trade: needs a manual refund
    ILLEGAL_STATE = "illegal_state"        # e.g. a payment for a FAILED order: logged, refused


# Outcomes after which the channel may stop retrying.
ACKNOWLEDGED = frozenset({Settled.CREDITED, Settled.ALREADY, Settled.NOT_PAID, Settled.CLOSED,
                          Settled.SECOND_PAYMENT})


def order_json(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"], "user_id": r["user_id"], "channel": r["channel"],
        "amount_fen": r["amount_fen"], "amount_yuan": format_yuan(r["amount_fen"]),
        "coins": r["coins"], "bonus_coins": r["bonus_coins"], "status": r["status"],
        "refunded_fen": r["refunded_fen"],
        "created_at": r["created_at"].isoformat(), "expires_at": r["expires_at"].isoformat(),
        "paid_at": r["paid_at"].isoformat() if r["paid_at"] else None,
    }


async def log_event(conn: Db, order_id: str, src: str | None, dst: str, accepted: bool,
                    source: str, detail: str = "") -> None:
    await conn.execute(
        """INSERT INTO order_events (order_id, from_state, to_state, accepted, source, detail)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        order_id, src, dst, accepted, source, detail[:500] or None)
    if not accepted:
        log.warning("order %s: refused %s -> %s (%s) %s", order_id, src, dst, source, detail)


@dataclass
class Billing:
    """The money-in services of one process; built in the app's lifespan."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    credit_script: Script
    debit_script: Script = field(default_factory=lambda: Script("debit"))
    channels: dict[str, Channel] = field(default_factory=dict)

    @property
    def sandbox(self) -> SandboxChannel | None:
        ch = self.channels.get("sandbox")
        return ch if isinstance(ch, SandboxChannel) else None

    # --- orders ---------------------------------------------------------------
    async def create_order(self, user_id: int, req: OrderRequest,
                           idem_key: str) -> tuple[dict[str, Any], bool]:
        """(order, replayed). Same key + same body replays; a different body is refused."""
        s = self.settings
        coins = coins_for_fen(req.amount_fen, s.coins_per_yuan)
        fp = req.fingerprint()
        order_id = new_id("R")
        async with self.pool.acquire() as conn, conn.transaction():
            # One user's orders are created one at a time: the pending cap holds under races.
            await conn.execute("SELECT pg_advisory_xact_lock(7, $1::int)", user_id % 2**31)
            prev = await conn.fetchrow(
                "SELECT * FROM recharge_orders WHERE user_id = $1 AND idem_key = $2",
                user_id, idem_key)
            if prev is not None:
                if prev["request_fp"] != fp:
                    raise OrderError("idempotency_conflict",
                                     "this idempotency key was used with a different request",
                                     409)
                return order_json(prev), True
            pending = await conn.fetchval(
                "SELECT count(*) FROM recharge_orders WHERE user_id = $1 AND status = 'PENDING'",
                user_id)
            if pending >= s.orders_pending_max:
                raise OrderError("too_many_pending_orders",
                                 f"at most {s.orders_pending_max} unpaid orders at a time", 429)
            row = await conn.fetchrow(
                """INSERT INTO recharge_orders (id, user_id, channel, amount_fen, coins, status,
                                                idem_key, request_fp, expires_at)
                   VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $7, now() + $8 * interval '1 s')
                   RETURNING *""",
                order_id, user_id, req.channel, req.amount_fen, coins, idem_key, fp,
                s.order_expiry_s)
            await log_event(conn, order_id, None, "PENDING", True, "api")
        sandbox = self.sandbox
        if req.channel == "sandbox" and sandbox is not None:
            await sandbox.open_trade(order_id, req.amount_fen)
        assert row is not None
        out = order_json(row)
        make_pay = getattr(self.channels.get(req.channel), "pay_params", None)
        if make_pay is not None:  # e.g. Alipay's signed app-pay order string
            pay = make_pay(order_id, req.amount_fen, f"{coins} coins")
            if inspect.isawaitable(pay):  # a provider call (WeChat Pay prepay)
                pay = await pay
            if pay:
                out["pay"] = pay
        return out, False

    async def get_order(self, order_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM recharge_orders WHERE id = $1", order_id)

    # --- settling ---------------------------------------------------------------
    async def settle(self, channel: str, notice: Notice, source: str) -> Settled:
        """Apply a verified notice to its order, exactly once. Then credit Redis."""
        outcome, user_id, credit = await self._settle_tx(channel, notice, source)
        if outcome is Settled.CREDITED and credit:
            try:
                await self.apply_credit(f"recharge:{notice.order_id}", user_id, credit)
            except Exception as exc:  # the outbox loop retries it
                log.warning("order %s credited in Postgres; Redis credit deferred: %r",
                            notice.order_id, exc)
        return outcome

    async def apply_credit(self, op_id: str, user_id: int, amount: int) -> None:
        await self.credit_script(self.redis, [keys.PREFIX, op_id, user_id, amount,
                                              credits.CREDIT_MARKER_TTL_S])
        await self.pool.execute("UPDATE credit_outbox SET applied_at = now() WHERE op_id = $1 "
                                "AND applied_at IS NULL", op_id)

    async def _settle_tx(self, channel: str, n: Notice,
                         source: str) -> tuple[Settled, int, int]:
        s = self.settings
        async with self.pool.acquire() as conn, conn.transaction():
            o = await conn.fetchrow("SELECT * FROM recharge_orders WHERE id = $1 FOR UPDATE",
                                    n.order_id)
            if o is None:
                return Settled.UNKNOWN_ORDER, 0, 0
            state = OrderState(o["status"])
            if o["channel"] != channel:
                await log_event(conn, o["id"], state, state, False, source,
                                f"notice from {channel}, order is {o['channel']}")
                return Settled.WRONG_CHANNEL, 0, 0
            if n.amount_fen != o["amount_fen"]:
                await log_event(conn, o["id"], state, "SUCCESS", False, source,
                                f"amount {n.amount_fen} fen, order is {o['amount_fen']}")
                return Settled.AMOUNT_MISMATCH, 0, 0
            if n.status is TradeStatus.NOT_PAID:
                return Settled.NOT_PAID, 0, 0
            if n.status is TradeStatus.CLOSED:
                if state is OrderState.PENDING:
                    await conn.execute("UPDATE recharge_orders SET status = 'FAILED', "
                                       "updated_at = now() WHERE id = $1", o["id"])
                    await log_event(conn, o["id"], state, "FAILED", True, source, n.raw_status)
                return Settled.CLOSED, 0, 0
            # PAID
            if state in (OrderState.SUCCESS, OrderState.REFUNDED):
                if o["channel_trade_no"] == n.trade_no:
                    return Settled.ALREADY, 0, 0
                await log_event(conn, o["id"], state, "SUCCESS", False, source,
                                f"second payment {n.trade_no}: refund it by hand")
                return Settled.SECOND_PAYMENT, 0, 0
            if not can_transition(state, OrderState.SUCCESS):
                await log_event(conn, o["id"], state, "SUCCESS", False, source,
                                f"paid by {n.trade_no}")
                return Settled.ILLEGAL_STATE, 0, 0
            bonus = 0
            candidate = first_recharge_bonus(o["coins"], bonus_pct=s.first_recharge_bonus_pct,
                                             bonus_max_coins=s.first_recharge_bonus_max_coins)
            if candidate > 0:
                got = await conn.fetchval(
                    """INSERT INTO first_recharge_bonus (user_id, order_id) VALUES ($1, $2)
                       ON CONFLICT (user_id) DO NOTHING RETURNING user_id""",
                    o["user_id"], o["id"])
                bonus = candidate if got is not None else 0
            await conn.execute(
                """UPDATE recharge_orders SET status = 'SUCCESS', paid_at = now(),
                          channel_trade_no = $2, bonus_coins = $3, updated_at = now()
                    WHERE id = $1""", o["id"], n.trade_no, bonus)
            entry = await conn.fetchval(
                """INSERT INTO journal_entries (kind, ref, memo) VALUES ('recharge', $1, $2)
                   RETURNING id""", o["id"], f"{channel} {n.trade_no}")
            wallet = f"wallet:{o['user_id']}"
            await conn.execute(
                "INSERT INTO postings (entry_id, account, amount) VALUES ($1, $2, $3), "
                "($1, 'channel_clearing', $4)" + (", ($1, 'promotion', $5)" if bonus else ""),
                entry, wallet, o["coins"] + bonus, -o["coins"], *((-bonus,) if bonus else ()))
            await conn.execute(
                "INSERT INTO credit_outbox (op_id, user_id, amount) VALUES ($1, $2, $3)",
                f"recharge:{o['id']}", o["user_id"], o["coins"] + bonus)
            await log_event(conn, o["id"], state, "SUCCESS", True, source,
                            f"{n.trade_no} bonus={bonus}")
            return Settled.CREDITED, o["user_id"], o["coins"] + bonus

    # --- notifies ---------------------------------------------------------------
    async def handle_notify(self, channel_name: str, headers: Mapping[str, str],
                            body: bytes) -> Reply:
        """Verify, settle, log, answer. Forged or malformed input never raises."""
        channel = self.channels.get(channel_name)
        digest = hashlib.sha256(body).hexdigest()
        if channel is None:
            return Reply(404, b"fail", "text/plain")
        verdict: str
        order_id: str | None
        try:
            checked = channel.verify_notify(headers, body, time.time())
        except Exception as exc:  # a verifier bug must not become a 5xx for hostile input
            log.warning("%s notify verifier raised %r", channel_name, exc)
            checked = Rejected("malformed")
        if isinstance(checked, Rejected):
            verdict, order_id, ok = f"rejected:{checked.reason}", checked.order_id, False
            log.warning("%s notify rejected: %s (order %s)", channel_name, checked.reason,
                        (checked.order_id or "-")[:64])
        else:
            outcome = await self.settle(channel_name, checked, f"notify:{channel_name}")
            ok = outcome in ACKNOWLEDGED
            verdict, order_id = outcome.value, checked.order_id
        await self.pool.execute(
            """INSERT INTO payment_notifies (channel, order_id, verdict, body_bytes, body_sha256)
               VALUES ($1, $2, $3, $4, $5)""",
            channel_name, (order_id or None) and order_id[:64], verdict, len(body), digest)
        return channel.reply(ok)

    # --- query fallback and expiry -------------------------------------------------
    async def sweep_pending(self) -> dict[str, int]:
        """Orders pending past `order_query_after_s` are asked about; expired ones close."""
        s = self.settings
        counts = {"queried": 0, "credited": 0, "closed": 0}
        rows = await self.pool.fetch(
            """SELECT id, channel, amount_fen, expires_at <= now() AS expired
                 FROM recharge_orders
                WHERE status = 'PENDING' AND created_at <= now() - $1 * interval '1 s'
                ORDER BY created_at LIMIT 200""", s.order_query_after_s)
        for r in rows:
            channel = self.channels.get(r["channel"])
            notice = await channel.query(r["id"]) if channel is not None else None
            counts["queried"] += notice is not None
            if notice is not None and notice.status is not TradeStatus.NOT_PAID:
                outcome = await self.settle(r["channel"], notice, "query")
                counts["credited"] += outcome is Settled.CREDITED
                continue
            if r["expired"]:
                close = getattr(channel, "close", None)
                if channel is not None and close is not None:
                    await close(r["id"])  # so no payment can land after we give up
                    again = await channel.query(r["id"])  # paid in the meantime?
                    if again is not None and again.status is TradeStatus.PAID:
                        await self.settle(r["channel"], again, "query")
                        continue
                async with self.pool.acquire() as conn, conn.transaction():
                    done = await conn.execute(
                        "UPDATE recharge_orders SET status = 'CLOSED', updated_at = now() "
                        "WHERE id = $1 AND status = 'PENDING'", r["id"])
                    if done.endswith(" 1"):
                        await log_event(conn, r["id"], "PENDING", "CLOSED", True, "expiry")
                        counts["closed"] += 1
        return counts

