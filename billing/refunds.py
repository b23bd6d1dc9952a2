"""Refunds: give a recharge's money back, taking back exactly the coins it credited.

Only while the coins are unspent: the Redis debit is an atomic check-and-debit
(debit.lua); if the wallet no longer holds them the refund is refused with
`coins_spent` and nothing moves. A refund of part of an order takes back that
part's coins exactly (the fen amount must map to whole coins) and the bonus
in proportion (billing.orders.refund_split). Every refund, done or refused,
is in the audit log with who asked and why.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from billing import audit
from billing.debits import Debit, debit
from billing.orders import AmountError, OrderState, format_yuan, new_id, refund_split
from billing.recharge import Billing, OrderError, log_event
from server.auth import Principal

log = logging.getLogger("giftd.refunds")


def refund_json(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "order_id": r["order_id"], "amount_fen": r["amount_fen"],
            "amount_yuan": format_yuan(r["amount_fen"]), "coins": r["coins"],
            "bonus_coins": r["bonus_coins"], "status": r["status"], "reason": r["reason"],
            "created_at": r["created_at"].isoformat()}


async def request_refund(b: Billing, *, order_id: str, amount_fen: int | None, reason: str,
                         actor: Principal, idem_key: str) -> dict[str, Any]:
    """Refund (part of) a paid order. Returns the refund; raises OrderError when refused."""
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise OrderError("reason_required", "a refund needs a reason (1..500 chars)")
    async with b.pool.acquire() as conn, conn.transaction():
        prev = await conn.fetchrow("SELECT * FROM refunds WHERE idem_key = $1", idem_key)
        if prev is not None:
            if prev["order_id"] != order_id or (amount_fen is not None
                                                and amount_fen != prev["amount_fen"]):
                raise OrderError("idempotency_conflict",
                                 "this idempotency key was used for another refund", 409)
            refund_id = prev["id"]
        else:
            o = await conn.fetchrow("SELECT * FROM recharge_orders WHERE id = $1 FOR UPDATE",
                                    order_id)
            if o is None:
                raise OrderError("unknown_order", "no such order", 404)
            if o["status"] not in (OrderState.SUCCESS, OrderState.REFUNDED):
                await log_event(conn, order_id, o["status"], "REFUNDED", False, "refund",
                                "order is not paid")
                raise OrderError("order_not_refundable",
                                 f"an order in state {o['status']} cannot be refunded", 409)
            pending = await conn.fetchval(
                "SELECT coalesce(sum(amount_fen), 0)::bigint FROM refunds "
                "WHERE order_id = $1 AND status = 'pending'", order_id)
            before = o["refunded_fen"] + pending
            amount = amount_fen if amount_fen is not None else o["amount_fen"] - before
            if amount_fen is None and amount <= 0:
                raise OrderError("refund_exceeds_order", "nothing is left to refund", 409)
            try:
                split = refund_split(amount_fen=o["amount_fen"], coins=o["coins"],
                                     bonus_coins=o["bonus_coins"],
                                     refunded_before_fen=before, refund_fen=amount)
            except AmountError as exc:
                raise OrderError(exc.code, str(exc), 409 if exc.code == "refund_exceeds_order"
                                 else 400) from None
            refund_id = new_id("F")
            await conn.execute(
                """INSERT INTO refunds (id, order_id, amount_fen, coins, bonus_coins, status,
                                        reason, requested_by, idem_key)
                   VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)""",
                refund_id, order_id, amount, split.coins, split.bonus_coins, reason,
                actor.user_id, idem_key)
            await conn.execute(
                """INSERT INTO wallet_debits (op_id, user_id, amount, kind, status)
                   VALUES ($1, $2, $3, 'refund', 'pending')""",
                f"refund:{refund_id}", o["user_id"], split.coins + split.bonus_coins)
    row = await b.pool.fetchrow(
        """SELECT f.*, d.user_id, d.amount AS debit, d.status AS debit_status
             FROM refunds f JOIN wallet_debits d ON d.op_id = 'refund:' || f.id
            WHERE f.id = $1""", refund_id)
    assert row is not None
    if row["status"] == "pending":
        outcome = await debit(b.redis, b.debit_script, f"refund:{refund_id}", row["user_id"],
                              row["debit"])
        await finish(b.pool, refund_id, outcome)
        row = await b.pool.fetchrow("SELECT * FROM refunds WHERE id = $1", refund_id)
        assert row is not None
    if row["status"] == "refused":
        raise OrderError("coins_spent", "the coins of this order have been spent; the refund "
                         "is refused (nothing was taken)", 409)
    order = await b.get_order(row["order_id"])
    assert order is not None
    # Pay the money back through the channel. Only the sandbox can today; for the
    # others the refund shows in reconciliation as missing on the channel's side.
    pay_back = getattr(b.channels.get(order["channel"]), "refund", None)
    paid_back = bool(pay_back is not None
                     and await pay_back(row["order_id"], row["id"], row["amount_fen"],
                                        total_fen=order["amount_fen"]))
    if not paid_back:
        log.warning("refund %s: the %s channel did not pay it back; settle it by hand",
                    row["id"], order["channel"])
    return {**refund_json(row), "channel_refunded": paid_back}


async def finish(pool: asyncpg.Pool, refund_id: str, outcome: Debit) -> None:
    """Step 3: journal a debited refund, or record the refusal. Idempotent."""
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute(
            "UPDATE wallet_debits SET status = $2, updated_at = now() "
            "WHERE op_id = $1 AND status = 'pending'",
            f"refund:{refund_id}", "done" if outcome is Debit.OK else "refused")
        if not done.endswith(" 1"):
            return  # finished by someone else
        f = await conn.fetchrow(
            """SELECT f.*, o.user_id, o.status AS order_status, o.refunded_fen, o.amount_fen AS
                      order_fen, u.display_name AS actor
                 FROM refunds f JOIN recharge_orders o ON o.id = f.order_id
                 JOIN users u ON u.id = f.requested_by WHERE f.id = $1 FOR UPDATE OF o""",
            refund_id)
        assert f is not None
        detail = {"order": f["order_id"], "amount_fen": f["amount_fen"], "coins": f["coins"],
                  "bonus_coins": f["bonus_coins"], "user_id": f["user_id"]}
        if outcome is not Debit.OK:
            await conn.execute("UPDATE refunds SET status = 'refused' WHERE id = $1", refund_id)
            await audit.record(conn, actor_id=f["requested_by"], actor=f["actor"],
                               action="refund.refused", target=f"order:{f['order_id']}",
                               reason=f["reason"], detail={**detail, "why": "coins_spent"})
            return
        entry = await conn.fetchval(
            "INSERT INTO journal_entries (kind, ref, memo) VALUES ('refund', $1, $2) RETURNING id",
            refund_id, f"order {f['order_id']}")
        bonus = f["bonus_coins"]
        await conn.execute(
            "INSERT INTO postings (entry_id, account, amount) VALUES ($1, $2, $3), "
            "($1, 'refunds', $4)" + (", ($1, 'promotion', $5)" if bonus else ""),
            entry, f"wallet:{f['user_id']}", -(f["coins"] + bonus), f["coins"],
            *((bonus,) if bonus else ()))
        await conn.execute(
            """UPDATE recharge_orders SET status = 'REFUNDED', refunded_fen = refunded_fen + $2,
                      updated_at = now() WHERE id = $1""", f["order_id"], f["amount_fen"])
        await log_event(conn, f["order_id"], f["order_status"], "REFUNDED", True, "refund",
                        f"{refund_id} {f['amount_fen']} fen")
        await conn.execute("UPDATE refunds SET status = 'done', done_at = now() WHERE id = $1",
                           refund_id)
        await audit.record(conn, actor_id=f["requested_by"], actor=f["actor"],
                           action="refund", target=f"order:{f['order_id']}",
                           reason=f["reason"], detail=detail)
