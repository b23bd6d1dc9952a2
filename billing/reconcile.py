"""Daily reconciliation: the channel's statement against our orders, our orders against
the ledger, and every Redis wallet against the journal at a consistent cut.

The diffs are pure functions of what was read (`diff_channel`, `diff_orders_ledger`,
`diff_wallets`); the readers do the I/O.

The wallet cut. Redis balances move ahead of Postgres: gift debits wait in
the write-behind stream, credits wait in the outbox, refund/adjustment debits
wait between their Redis step and their journal entry. One MULTI/EXEC reads,
atomically: the stream's last generated id (the cut position), every
unflushed stream entry, every balance, and the markers of the credits and
debits that were still in flight just before. Postgres is read after, and
gift entries past the cut position are left out, so in-flight gifts are
counted exactly once. A credit or debit booked in the instant between the
two reads can still look like a difference, so any wallet that differs is
read again at a fresh cut; only a difference seen at every cut is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from redis.asyncio import Redis

from billing.channels.alipay_bill import parse_alipay_bill
from billing.channels.sandbox import StatementRow, parse_statement
from billing.channels.wechatpay_bill import parse_wechatpay_bill
from server import keys

CONFIRM_CUTS = 3  # a wallet difference must be seen at this many consecutive cuts
IN_FLIGHT_WINDOW_S = 600  # credits/debits this recent are checked by marker at the cut


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str     # missing_in_channel | missing_in_ours | duplicate_in_channel | ...
    key: str      # order id, refund id, account
    ours: Any = None
    theirs: Any = None
    detail: str = ""


# --- the channel's statement file ---------------------------------------------------
STATEMENT_FORMATS = ("sandbox", "alipay", "wechatpay")


def parse_statement_file(data: bytes, fmt: str) -> list[StatementRow]:
    """A statement file as the channel publishes it -> rows. `sandbox`: our normalized CSV
    (UTF-8); `alipay`: the trade bill (业务明细, GBK, zip or CSV); `wechatpay`: the v3
    `ALL` trade bill (plain or gzip). ValueError, naming the line, on a malformed file."""
    if fmt == "sandbox":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the statement is not UTF-8 text") from None
        return parse_statement(text)
    if fmt == "alipay":
        return parse_alipay_bill(data)
    if fmt == "wechatpay":
        return parse_wechatpay_bill(data)
    raise ValueError(f"unknown statement format {fmt!r} (one of {', '.join(STATEMENT_FORMATS)})")


# --- channel vs us ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OurPayment:
    order_id: str
    trade_no: str
    amount_fen: int
    status: str
    paid_in_day: bool  # paid within the reconciled day (else: looked up for a channel row)


@dataclass(frozen=True, slots=True)
class OurRefund:
    refund_id: str
    order_id: str
    amount_fen: int


def diff_channel(statement: Sequence[StatementRow], payments: Iterable[OurPayment],
                 refunds: Iterable[OurRefund]) -> list[Difference]:
    out: list[Difference] = []
    ours = {p.order_id: p for p in payments}
    seen: dict[str, StatementRow] = {}
    for row in (r for r in statement if r.type == "PAY"):
        if row.out_trade_no in seen:
            out.append(Difference("duplicate_in_channel", row.out_trade_no, None,
                                  row.amount_fen, f"trade {row.trade_no} listed twice"))
            continue
        seen[row.out_trade_no] = row
        p = ours.get(row.out_trade_no)
        if p is None:
            out.append(Difference("missing_in_ours", row.out_trade_no, None, row.amount_fen,
                                  f"the channel was paid (trade {row.trade_no}); we have no "
                                  "such order"))
        elif p.status not in ("SUCCESS", "REFUNDED"):
            out.append(Difference("status_mismatch", p.order_id, p.status, "PAID"))
        elif p.amount_fen != row.amount_fen:
            out.append(Difference("amount_mismatch", p.order_id, p.amount_fen, row.amount_fen))
        elif p.trade_no != row.trade_no:
            out.append(Difference("trade_mismatch", p.order_id, p.trade_no, row.trade_no))
    for p in ours.values():
        if p.paid_in_day and p.status in ("SUCCESS", "REFUNDED") and p.order_id not in seen:
            out.append(Difference("missing_in_channel", p.order_id, p.amount_fen, None,
                                  "we credited it; the channel's statement does not list it"))
    ours_r = {r.refund_id: r for r in refunds}
    seen_r: set[str] = set()
    for row in (r for r in statement if r.type == "REFUND"):
        if row.out_refund_no in seen_r:
            out.append(Difference("duplicate_in_channel", row.out_refund_no, None,
                                  row.amount_fen, "refund listed twice"))
            continue
        seen_r.add(row.out_refund_no)
        mine = ours_r.get(row.out_refund_no)
        if mine is None:
            out.append(Difference("refund_missing_in_ours", row.out_refund_no, None,
                                  row.amount_fen))
        elif mine.amount_fen != row.amount_fen:
            out.append(Difference("refund_amount_mismatch", mine.refund_id, mine.amount_fen,
                                  row.amount_fen))
    for r in ours_r.values():
        if r.refund_id not in seen_r:
            out.append(Difference("refund_missing_in_channel", r.refund_id, r.amount_fen, None))
    return out


# --- orders vs ledger ---------------------------------------------------------------------
def diff_orders_ledger(orders: dict[str, int], entries: dict[str, int]) -> list[Difference]:
    """orders: paid order id -> coins credited (coins + bonus); entries: recharge ref -> the
    wallet posting of its journal entry."""
    out = []
    for oid, coins in orders.items():
        if oid not in entries:
            out.append(Difference("order_without_entry", oid, coins, None))
        elif entries[oid] != coins:
            out.append(Difference("entry_amount_mismatch", oid, coins, entries[oid]))
    for ref, amount in entries.items():
        if ref not in orders:
            out.append(Difference("entry_without_order", ref, None, amount))
    return out


# --- Redis vs ledger -----------------------------------------------------------------------
def diff_wallets(redis_balances: dict[int, int], expected: dict[int, int]) -> list[Difference]:
    return [Difference("wallet_mismatch", f"wallet:{uid}", expected.get(uid, 0),
                       redis_balances.get(uid, 0), "ours = journal at the cut; theirs = Redis")
            for uid in sorted(set(redis_balances) | set(expected))
            if redis_balances.get(uid, 0) != expected.get(uid, 0)]


def _sid(s: str) -> tuple[int, int]:
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Cut:
    position: str
    balances: dict[int, int]
    unflushed: dict[str, tuple[int, int]]  # event id -> (user, coins)
    credit_applied: dict[str, bool]
    debit_applied: dict[str, bool]


async def take_cut(pool: asyncpg.Pool, redis: Redis) -> tuple[Cut, dict[int, int]]:
    """(the cut, the journal's wallets at the cut turned into expected Redis balances)."""
    users = [r["owner_id"] for r in await pool.fetch(
        "SELECT owner_id FROM accounts WHERE kind = 'wallet'")]
    async for k in redis.scan_iter(match=keys.PREFIX + "bal:*", count=1000):
        uid = int(k.decode().rsplit(":", 1)[1])
        users.append(uid)
    users = sorted(set(users))
    credits = [r["op_id"] for r in await pool.fetch(
        """SELECT op_id FROM credit_outbox WHERE applied_at IS NULL
              OR applied_at > now() - $1 * interval '1 s'""", IN_FLIGHT_WINDOW_S)]
    debits = [r["op_id"] for r in await pool.fetch(
        """SELECT op_id FROM wallet_debits WHERE status = 'pending'
              OR updated_at > now() - $1 * interval '1 s'""", IN_FLIGHT_WINDOW_S)]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.exists(keys.LEDGER_STREAM)
        pipe.xinfo_stream(keys.LEDGER_STREAM)
        pipe.xrange(keys.LEDGER_STREAM)
        pipe.time()
        if users:
            pipe.mget([keys.balance(u) for u in users])
        for op in credits:
            pipe.exists(keys.credit_marker(op))
        for op in debits:
            pipe.exists(keys.debit_marker(op))
        res = await pipe.execute(raise_on_error=False)
    has_stream, info, entries, t = res[0], res[1], res[2], res[3]
    i = 4
    bals: list[Any] = []
    if users:
        bals, i = res[4], 5
    credit_applied = {op: bool(res[i + n]) for n, op in enumerate(credits)}
    i += len(credits)
    debit_applied = {op: bool(res[i + n]) for n, op in enumerate(debits)}
    if has_stream:
        last = info["last-generated-id"]
        position = last.decode() if isinstance(last, bytes) else str(last)
    else:
        position = "0-0"
    unflushed = {}
    for eid, f in entries:
        unflushed[eid.decode() if isinstance(eid, bytes) else eid] = (int(f[b"s"]), int(f[b"a"]))
    cut = Cut(position, {u: int(b) for u, b in zip(users, bals, strict=False) if b is not None},
              unflushed, credit_applied, debit_applied)
    cut_time = datetime.fromtimestamp(int(t[0]) + int(t[1]) / 1e6, UTC)
    ms, seq = _sid(position)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        ledger = {int(r["account"].split(":")[1]): int(r["s"]) for r in await conn.fetch(
            """SELECT p.account, sum(p.amount)::bigint AS s
                 FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                WHERE p.account LIKE 'wallet:%'
                  AND NOT (j.kind = 'gift' AND (split_part(j.ref, '-', 1)::bigint,
                                                split_part(j.ref, '-', 2)::bigint) > ($1, $2))
                GROUP BY p.account""", ms, seq)}
        flushed = {r["event_id"] for r in await conn.fetch(
            "SELECT event_id FROM gift_events WHERE event_id = ANY($1::text[])",
            list(unflushed))}
        outbox = await conn.fetch("SELECT op_id, user_id, amount, applied_at FROM credit_outbox "
                                  "WHERE applied_at IS NULL OR applied_at > $1::timestamptz - "
                                  "$2 * interval '1 s'", cut_time, IN_FLIGHT_WINDOW_S)
        wdebits = await conn.fetch("SELECT op_id, user_id, amount, status FROM wallet_debits "
                                   "WHERE status <> 'refused'")
    expected = dict(ledger)

    def add(uid: int, v: int) -> None:
        expected[uid] = expected.get(uid, 0) + v
    for eid, (uid, amount) in unflushed.items():
        if eid not in flushed:
            add(uid, -amount)
    for r in outbox:
        applied = cut.credit_applied.get(r["op_id"])
        if applied is None:  # booked after the first read: applied if it says so before the cut
            applied = r["applied_at"] is not None and r["applied_at"] <= cut_time
        if not applied:
            add(r["user_id"], -r["amount"])
    for r in wdebits:
        applied = cut.debit_applied.get(r["op_id"])
        if applied is None:
            applied = r["status"] == "done"
        if r["status"] == "pending" and applied:
            add(r["user_id"], -r["amount"])       # left Redis, not journaled yet
        elif r["status"] == "done" and not applied:
            add(r["user_id"], r["amount"])        # journaled, not yet left Redis (cannot be)
    return cut, expected


async def reconcile_wallets(pool: asyncpg.Pool, redis: Redis,
                            confirm_cuts: int = CONFIRM_CUTS) -> tuple[str, list[Difference]]:
    cut, expected = await take_cut(pool, redis)
    diffs = diff_wallets(cut.balances, expected)
    for _ in range(confirm_cuts - 1):
        if not diffs:
            break
        cut2, expected2 = await take_cut(pool, redis)
        again = {d.key for d in diff_wallets(cut2.balances, expected2)}
        diffs = [d for d in diffs if d.key in again]
    return cut.position, diffs


# --- the whole run ------------------------------------------------------------------------
@dataclass
class Report:
    date: str
    channel: str
    cut_position: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "channel": self.channel, "ok": self.ok,
                "cut_position": self.cut_position, "counts": self.counts,
                "differences": [asdict(d) for d in self.differences]}


def day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time(), ZoneInfo(tz))
    return start, start + timedelta(days=1)


async def reconcile(pool: asyncpg.Pool, redis: Redis, *, day: date, tz: str, channel: str,
                    statement: Sequence[StatementRow],
                    progress: Callable[[str, int], None] = lambda step, n: None) -> Report:
    rep = Report(day.isoformat(), channel)
    start, end = day_bounds(day, tz)
    ids = sorted({r.out_trade_no for r in statement if r.type == "PAY"})
    rows = await pool.fetch(
        """SELECT id, channel_trade_no, amount_fen, status,
                  (paid_at >= $2 AND paid_at < $3) AS in_day
             FROM recharge_orders
            WHERE channel = $4 AND ((paid_at >= $2 AND paid_at < $3) OR id = ANY($1::text[]))""",
        ids, start, end, channel)
    payments = [OurPayment(r["id"], r["channel_trade_no"] or "", r["amount_fen"], r["status"],
                           bool(r["in_day"])) for r in rows]
    refunds = [OurRefund(r["id"], r["order_id"], r["amount_fen"]) for r in await pool.fetch(
        """SELECT f.id, f.order_id, f.amount_fen FROM refunds f
             JOIN recharge_orders o ON o.id = f.order_id
            WHERE f.status = 'done' AND f.done_at >= $1 AND f.done_at < $2 AND o.channel = $3""",
        start, end, channel)]
    progress("statement", len(statement))
    rep.differences += diff_channel(statement, payments, refunds)
    # Every order paid that day has its one recharge entry crediting exactly coins + bonus.
    # Both carry the settling transaction's now(), so the same window selects both sides.
    orders = {r["id"]: r["coins"] for r in await pool.fetch(
        """SELECT id, coins + bonus_coins AS coins FROM recharge_orders
            WHERE paid_at >= $1 AND paid_at < $2""", start, end)}
    entries = {r["ref"]: r["amount"] for r in await pool.fetch(
        """SELECT j.ref, sum(p.amount)::bigint AS amount FROM journal_entries j
             JOIN postings p ON p.entry_id = j.id AND p.account LIKE 'wallet:%'
            WHERE j.kind = 'recharge' AND j.created_at >= $1 AND j.created_at < $2
            GROUP BY j.ref""", start, end)}
    progress("orders", len(orders))
    rep.differences += diff_orders_ledger(orders, entries)
    rep.cut_position, wallet_diffs = await reconcile_wallets(pool, redis)
    progress("wallets", len(wallet_diffs))
    rep.differences += wallet_diffs
    rep.counts = {"statement_rows": len(statement), "our_payments": sum(p.paid_in_day
                                                                        for p in payments),
                  "our_refunds": len(refunds), "paid_orders": len(orders),
                  "differences": len(rep.differences)}
    return rep
