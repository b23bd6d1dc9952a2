"""Manual adjustments: an admin credits or debits a wallet, with a reason, journaled, audited.

A credit is one transaction (adjustment row, journal entry adjustments ->
wallet, credit_outbox row, audit record), then the idempotent credit script.
A debit goes through billing.debits (pending -> debit.lua -> journal), so it
only takes coins that are there; otherwise it is refused (`insufficient_balance`)
and the refusal is audited too.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from billing import audit
from billing.debits import Debit, debit
from billing.orders import new_id
from billing.recharge import Billing, OrderError
from server.auth import Principal


def adjustment_json(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "user_id": r["user_id"], "amount": r["amount"],
            "status": r["status"], "reason": r["reason"],
            "created_at": r["created_at"].isoformat()}


async def adjust(b: Billing, *, user_id: int, amount: int, reason: str, actor: Principal,
                 idem_key: str) -> dict[str, Any]:
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise OrderError("reason_required", "an adjustment needs a reason (1..500 chars)")
    limit = b.settings.adjustment_coins_max
    if amount == 0 or abs(amount) > limit:
        raise OrderError("amount_out_of_range", f"amount must be ±1..{limit} coins, not 0")
    async with b.pool.acquire() as conn, conn.transaction():
        prev = await conn.fetchrow("SELECT * FROM adjustments WHERE idem_key = $1", idem_key)
        if prev is not None:
            if (prev["user_id"], prev["amount"]) != (user_id, amount):
                raise OrderError("idempotency_conflict",
                                 "this idempotency key was used for another adjustment", 409)
            adj_id = prev["id"]
        else:
            if not await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id):
                raise OrderError("unknown_user", "no such user", 404)
            adj_id = new_id("A")
            await conn.execute(
                """INSERT INTO adjustments (id, user_id, amount, status, reason, requested_by,
                                            idem_key)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                adj_id, user_id, amount, "done" if amount > 0 else "pending", reason,
                actor.user_id, idem_key)
            if amount > 0:
                entry = await conn.fetchval(
                    "INSERT INTO journal_entries (kind, ref, memo) VALUES ('adjustment', $1, $2) "
                    "RETURNING id", adj_id, reason[:200])
                await conn.execute(
                    "INSERT INTO postings (entry_id, account, amount) VALUES "
                    "($1, 'adjustments', $2), ($1, $3, $4)",
                    entry, -amount, f"wallet:{user_id}", amount)
                await conn.execute(
                    "INSERT INTO credit_outbox (op_id, user_id, amount) VALUES ($1, $2, $3)",
                    f"adjust:{adj_id}", user_id, amount)
                await audit.record(conn, actor_id=actor.user_id, actor=actor.name,
                                   action="adjustment", target=f"user:{user_id}", reason=reason,
                                   detail={"adjustment": adj_id, "amount": amount})
            else:
                await conn.execute(
                    """INSERT INTO wallet_debits (op_id, user_id, amount, kind, status)
                       VALUES ($1, $2, $3, 'adjustment', 'pending')""",
                    f"adjust:{adj_id}", user_id, -amount)
    row = await b.pool.fetchrow("SELECT * FROM adjustments WHERE id = $1", adj_id)
    assert row is not None
    if amount > 0:
        try:
            await b.apply_credit(f"adjust:{adj_id}", user_id, amount)
        except Exception:  # the outbox loop retries it
            pass
    elif row["status"] == "pending":
        outcome = await debit(b.redis, b.debit_script, f"adjust:{adj_id}", user_id, -amount)
        await finish(b.pool, adj_id, outcome)
        row = await b.pool.fetchrow("SELECT * FROM adjustments WHERE id = $1", adj_id)
        assert row is not None
    if row["status"] == "refused":
        raise OrderError("insufficient_balance",
                         "the wallet does not hold that many coins; nothing was taken", 409)
    return adjustment_json(row)


async def finish(pool: asyncpg.Pool, adj_id: str, outcome: Debit) -> None:
    """Journal a debited adjustment, or record the refusal. Idempotent."""
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.execute(
            "UPDATE wallet_debits SET status = $2, updated_at = now() "
            "WHERE op_id = $1 AND status = 'pending'",
            f"adjust:{adj_id}", "done" if outcome is Debit.OK else "refused")
        if not done.endswith(" 1"):
            return
        a = await conn.fetchrow(
            """SELECT a.*, u.display_name AS actor FROM adjustments a
                 JOIN users u ON u.id = a.requested_by WHERE a.id = $1""", adj_id)
        assert a is not None
        status = "done" if outcome is Debit.OK else "refused"
        await conn.execute("UPDATE adjustments SET status = $2 WHERE id = $1", adj_id, status)
        if outcome is Debit.OK:
            entry = await conn.fetchval(
                "INSERT INTO journal_entries (kind, ref, memo) VALUES ('adjustment', $1, $2) "
                "RETURNING id", adj_id, a["reason"][:200])
            await conn.execute(
                "INSERT INTO postings (entry_id, account, amount) VALUES "
                "($1, $2, $3), ($1, 'adjustments', $4)",
                entry, f"wallet:{a['user_id']}", a["amount"], -a["amount"])
        await audit.record(conn, actor_id=a["requested_by"], actor=a["actor"],
                           action="adjustment" if outcome is Debit.OK else "adjustment.refused",
                           target=f"user:{a['user_id']}", reason=a["reason"],
                           detail={"adjustment": adj_id, "amount": a["amount"]})
