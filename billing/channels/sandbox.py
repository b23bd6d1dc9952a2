"""The sandbox channel: a payment provider built in, for development and tests.

It behaves like a real one and keeps its own books (tables sandbox_trades,
sandbox_refunds), separate from our orders:

* `open_trade` is the provider's "create trade" API, called when an order is made;
* a hosted pay page (`GET/POST /sandbox/pay/{order}`) where the payer pays;
* after a payment, an asynchronous signed notify POSTed to our callback URL,
  retried on `schedule_s` (seconds after the payment) until we answer
  `success`, and now and then sent twice (`duplicate_pct`);
* `query` (the provider's trade query API), `close`, `refund`;
* `statement(date)`: the provider's daily statement file, CSV.

Notify signature: hex HMAC-SHA256 over `timestamp\\nbody` with the sandbox key,
headers `X-Sandbox-Timestamp` and `X-Sandbox-Signature`; stale timestamps
(more than `TIMESTAMP_SKEW_S` off) are refused like WeChat Pay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from billing.channels.base import (
    Notice,
    PayoutNotice,
    PayoutStatus,
    Rejected,
    Reply,
    TradeStatus,
)

log = logging.getLogger("giftd.sandbox")

TIMESTAMP_SKEW_S = 300
NOTIFY_TIMEOUT_S = 5.0  # one notify POST may take this long before it counts as failed
NOTIFY_BATCH_MAX = 50  # due notifies sent per round
STATEMENT_COLUMNS = ("type", "trade_no", "out_trade_no", "out_refund_no", "amount_fen", "time")


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(key, timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def notify_body(trade_no: str, order_id: str, amount_fen: int, status: str) -> bytes:
    return orjson.dumps({"trade_no": trade_no, "out_trade_no": order_id,
                         "amount_fen": amount_fen, "status": status})


def payout_notify_body(payout_no: str, withdrawal_id: str, amount_fen: int,
                       status: str) -> bytes:
    return orjson.dumps({"payout_no": payout_no, "out_payout_no": withdrawal_id,
                         "amount_fen": amount_fen, "status": status})


def _status(raw: str) -> TradeStatus:
    return {"PAID": TradeStatus.PAID, "CLOSED": TradeStatus.CLOSED}.get(raw, TradeStatus.NOT_PAID)


@dataclass(frozen=True, slots=True)
class StatementRow:
    type: str           # PAY | REFUND
    trade_no: str
    out_trade_no: str
    out_refund_no: str
    amount_fen: int
    time: str           # ISO 8601, UTC


def statement_csv(rows: Sequence[StatementRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(STATEMENT_COLUMNS)
    for r in rows:
        w.writerow([r.type, r.trade_no, r.out_trade_no, r.out_refund_no, r.amount_fen, r.time])
    return buf.getvalue()


def parse_statement(text: str) -> list[StatementRow]:
    """A statement file -> rows. ValueError on a malformed file."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != STATEMENT_COLUMNS:
        raise ValueError("not a statement file (bad header)")
    out = []
    for n, rec in enumerate(reader, start=2):
        if not rec:
            continue
        if len(rec) != len(STATEMENT_COLUMNS) or rec[0] not in ("PAY", "REFUND"):
            raise ValueError(f"statement line {n} is malformed")
        try:
            amount = int(rec[4])
        except ValueError:
            raise ValueError(f"statement line {n}: bad amount") from None
        out.append(StatementRow(rec[0], rec[1], rec[2], rec[3], amount, rec[5]))
    return out


class SandboxChannel:
    name = "sandbox"

    def __init__(self, pool: asyncpg.Pool, *, key: bytes, notify_url: str,
                 schedule_s: Sequence[int], duplicate_pct: int, timezone: str,
                 rng: random.Random | None = None, payout_notify_url: str = "") -> None:
        self.pool = pool
        self.key = key
        self.notify_url = notify_url
        # Payout results go to /api/payout/notify/sandbox beside the pay notify.
        self.payout_notify_url = payout_notify_url or notify_url.replace(
            "/api/pay/notify/", "/api/payout/notify/")
        self.schedule_s = tuple(schedule_s)
        self.duplicate_pct = duplicate_pct
        self.tz = ZoneInfo(timezone)
        self.rng = rng or random.Random()
        self.notifies_sent = 0

    # --- verifying what it sends (our side) ---------------------------------
    def verify_notify(self, headers: Mapping[str, str], body: bytes,
                      now_s: float) -> Notice | Rejected:
        ts = headers.get("x-sandbox-timestamp", "")
        sig = headers.get("x-sandbox-signature", "")
        if not ts or not sig:
            return Rejected("missing_signature")
        if not ts.isdigit() or len(ts) > 12:
            return Rejected("bad_timestamp")
        if abs(now_s - int(ts)) > TIMESTAMP_SKEW_S:
            return Rejected("stale_timestamp")
        if not hmac.compare_digest(sign(self.key, ts, body), sig):
            return Rejected("bad_signature")
        try:
            d = orjson.loads(body)
            order_id, trade_no = d["out_trade_no"], d["trade_no"]
            amount, raw = d["amount_fen"], d["status"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Rejected("malformed")
        if not (isinstance(order_id, str) and isinstance(trade_no, str) and type(amount) is int
                and isinstance(raw, str)):
            return Rejected("malformed")
        return Notice(order_id, amount, trade_no, _status(raw), raw)

    def reply(self, ok: bool) -> Reply:
        return Reply(200, b"success" if ok else b"fail", "text/plain")

    # --- the provider's APIs ---------------------------------------------------
    async def open_trade(self, order_id: str, amount_fen: int) -> str:
        trade_no = "S" + secrets.token_hex(12)
        await self.pool.execute(
            """INSERT INTO sandbox_trades (trade_no, out_trade_no, amount_fen, status, notify_url)
               VALUES ($1, $2, $3, 'WAIT_PAY', $4) ON CONFLICT (out_trade_no) DO NOTHING""",
            trade_no, order_id, amount_fen, self.notify_url)
        return trade_no

    async def trade(self, order_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM sandbox_trades WHERE out_trade_no = $1",
                                        order_id)

    async def pay(self, order_id: str) -> str:
        """The payer pays. Returns the trade status afterwards ('' if no such trade)."""
        row = await self.pool.fetchrow(
            """UPDATE sandbox_trades SET status = 'PAID', paid_at = now(), next_notify_at = now()
                WHERE out_trade_no = $1 AND status = 'WAIT_PAY' RETURNING status""", order_id)
        if row is not None:
            return str(row["status"])
        t = await self.trade(order_id)
        return str(t["status"]) if t else ""

    async def close(self, order_id: str) -> bool:
        r = await self.pool.execute(
            "UPDATE sandbox_trades SET status = 'CLOSED' WHERE out_trade_no = $1 "
            "AND status = 'WAIT_PAY'", order_id)
        return r.endswith(" 1")

    async def query(self, order_id: str) -> Notice | None:
        t = await self.trade(order_id)
        if t is None:
            return None
        return Notice(order_id, t["amount_fen"], t["trade_no"], _status(t["status"]),
                      t["status"])

    async def refund(self, order_id: str, out_refund_no: str, amount_fen: int,
                     total_fen: int = 0) -> bool:
        """Pay money back. Idempotent on out_refund_no. False if the trade cannot take it."""
        async with self.pool.acquire() as conn, conn.transaction():
            t = await conn.fetchrow("SELECT * FROM sandbox_trades WHERE out_trade_no = $1 "
                                    "FOR UPDATE", order_id)
            if t is None or t["status"] != "PAID":
                return False
            if await conn.fetchval("SELECT 1 FROM sandbox_refunds WHERE out_refund_no = $1",
                                   out_refund_no):
                return True
            done = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0) FROM sandbox_refunds "
                                       "WHERE trade_no = $1", t["trade_no"])
            if done + amount_fen > t["amount_fen"]:
                return False
            await conn.execute(
                """INSERT INTO sandbox_refunds (refund_no, trade_no, out_refund_no, amount_fen)
                   VALUES ($1, $2, $3, $4)""",
                "SR" + secrets.token_hex(10), t["trade_no"], out_refund_no, amount_fen)
        return True

    # --- the statement file ------------------------------------------------------
    async def statement(self, day: date) -> list[StatementRow]:
        start = datetime.combine(day, datetime.min.time(), self.tz)
        end = start + timedelta(days=1)
        rows = [StatementRow("PAY", r["trade_no"], r["out_trade_no"], "", r["amount_fen"],
                             r["paid_at"].astimezone(UTC).isoformat())
                for r in await self.pool.fetch(
                    """SELECT trade_no, out_trade_no, amount_fen, paid_at FROM sandbox_trades
                        WHERE paid_at >= $1 AND paid_at < $2 ORDER BY paid_at, trade_no""",
                    start, end)]
        rows += [StatementRow("REFUND", r["trade_no"], r["out_trade_no"], r["out_refund_no"],
                              r["amount_fen"], r["refunded_at"].astimezone(UTC).isoformat())
                 for r in await self.pool.fetch(
                     """SELECT f.trade_no, t.out_trade_no, f.out_refund_no, f.amount_fen,
                               f.refunded_at
                          FROM sandbox_refunds f JOIN sandbox_trades t USING (trade_no)
                         WHERE f.refunded_at >= $1 AND f.refunded_at < $2
                         ORDER BY f.refunded_at, f.refund_no""", start, end)]
        return rows

    # --- the notifier ---------------------------------------------------------------
    def next_delay_s(self, attempts: int) -> int | None:
        """Seconds from the payment to notify attempt number `attempts` (0-based); None: give up."""
        return self.schedule_s[attempts] if attempts < len(self.schedule_s) else None

    async def deliver_due(self) -> int:
        """Send every due notify once; returns how many were answered `success`."""
        rows = await self.pool.fetch(
            """SELECT trade_no, out_trade_no, amount_fen, status, notify_url, attempts, paid_at
                 FROM sandbox_trades
                WHERE status = 'PAID' AND notified_ok_at IS NULL AND next_notify_at <= now()
                ORDER BY next_notify_at LIMIT $1""", NOTIFY_BATCH_MAX)
        ok_count = 0
        for r in rows:
            body = notify_body(r["trade_no"], r["out_trade_no"], r["amount_fen"], r["status"])
            sends = 2 if self.rng.randrange(100) < self.duplicate_pct else 1
            results = await asyncio.gather(*(self._post(r["notify_url"], body)
                                             for _ in range(sends)))
            attempts = r["attempts"] + 1
            if any(results):
                ok_count += 1
                await self.pool.execute(
                    """UPDATE sandbox_trades SET notified_ok_at = now(), attempts = $2,
                              next_notify_at = NULL WHERE trade_no = $1""", r["trade_no"],
                    attempts)
            else:
                delay = self.next_delay_s(attempts)
                nxt = None if delay is None else r["paid_at"] + timedelta(seconds=delay)
                await self.pool.execute(
                    "UPDATE sandbox_trades SET attempts = $2, next_notify_at = $3 "
                    "WHERE trade_no = $1", r["trade_no"], attempts, nxt)
        return ok_count

    async def _post(self, url: str, body: bytes) -> bool:
        """POST one signed notify; True when the answer is exactly `success`."""
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Sandbox-Timestamp": ts,
                   "X-Sandbox-Signature": sign(self.key, ts, body)}
        self.notifies_sent += 1
        try:
            status, answer = await asyncio.wait_for(http_post(url, body, headers),
                                                    NOTIFY_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            log.info("sandbox notify to %s failed: %r", url, exc)
            return False
        return status == 200 and answer.strip() == b"success"

    # --- payouts (money out) --------------------------------------------------------
    async def payout(self, withdrawal_id: str, amount_fen: int, method: str, account: str,
                     account_masked: str) -> str:
        """Pay a creator. Idempotent on withdrawal_id (out_payout_no). Sandbox rule: an
        account ending in 0000 fails, every other one is paid at once. The result is
        notified (signed) to payout_notify_url on the same schedule as payments."""
        status = "FAILED" if account.endswith("0000") else "PAID"
        payout_no = "SP" + secrets.token_hex(10)
        row = await self.pool.fetchrow(
            """INSERT INTO sandbox_payouts (payout_no, out_payout_no, amount_fen, method,
                                            account_masked, status, notify_url, next_notify_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, now())
               ON CONFLICT (out_payout_no) DO UPDATE SET out_payout_no = EXCLUDED.out_payout_no
               RETURNING payout_no""",
            payout_no, withdrawal_id, amount_fen, method, account_masked, status,
            self.payout_notify_url)
        assert row is not None
        return str(row["payout_no"])

    def verify_payout_notify(self, headers: Mapping[str, str], body: bytes,
                             now_s: float) -> PayoutNotice | Rejected:
        ts = headers.get("x-sandbox-timestamp", "")
        sig = headers.get("x-sandbox-signature", "")
        if not ts or not sig:
            return Rejected("missing_signature")
        if not ts.isdigit() or len(ts) > 12:
            return Rejected("bad_timestamp")
        if abs(now_s - int(ts)) > TIMESTAMP_SKEW_S:
            return Rejected("stale_timestamp")
        if not hmac.compare_digest(sign(self.key, ts, body), sig):
            return Rejected("bad_signature")
        try:
            d = orjson.loads(body)
            wid, pno, amount, raw = (d["out_payout_no"], d["payout_no"], d["amount_fen"],
                                     d["status"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Rejected("malformed")
        if not (isinstance(wid, str) and isinstance(pno, str) and type(amount) is int
                and raw in ("PAID", "FAILED")):
            return Rejected("malformed")
        return PayoutNotice(wid, pno, amount, PayoutStatus(raw),
                            "" if raw == "PAID" else "sandbox: the account refused the payout")

    async def deliver_payouts_due(self) -> int:
        """Send every due payout notify once; returns how many were answered `success`."""
        rows = await self.pool.fetch(
            """SELECT * FROM sandbox_payouts
                WHERE notified_ok_at IS NULL AND next_notify_at <= now()
                ORDER BY next_notify_at LIMIT $1""", NOTIFY_BATCH_MAX)
        ok_count = 0
        for r in rows:
            body = payout_notify_body(r["payout_no"], r["out_payout_no"], r["amount_fen"],
                                      r["status"])
            sends = 2 if self.rng.randrange(100) < self.duplicate_pct else 1
            results = await asyncio.gather(*(self._post(r["notify_url"], body)
                                             for _ in range(sends)))
            attempts = r["attempts"] + 1
            delay = None if any(results) else self.next_delay_s(attempts)
            if any(results):
                ok_count += 1
            await self.pool.execute(
                """UPDATE sandbox_payouts SET attempts = $2, next_notify_at = $3,
                          notified_ok_at = CASE WHEN $4 THEN now() END
                    WHERE payout_no = $1""", r["payout_no"], attempts,
                None if delay is None else r["created_at"] + timedelta(seconds=delay),
                any(results))
        return ok_count

    async def run(self, every_s: float) -> None:
        while True:
            try:
                await self.deliver_due()
                await self.deliver_payouts_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sandbox notifier: %r", exc)
            await asyncio.sleep(every_s)


async def http_post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 POST (plain http only: the sandbox talks to a local giftd)."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"sandbox notifies only go to http:// URLs, not {url!r}")
    reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    try:
        head = [f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1",
                f"Host: {u.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await reader.read(1 << 20)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("bad HTTP answer")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(parts[1]), payload


def parse_schedule(text: str) -> tuple[int, ...]:
    vals = tuple(int(x) for x in text.split(",") if x.strip())
    if not vals or any(v < 0 for v in vals) or list(vals) != sorted(vals):
        raise ValueError("a notify schedule is a rising list of seconds")
    return vals


__all__ = ["SandboxChannel", "StatementRow", "parse_schedule", "parse_statement",
           "payout_notify_body", "sign", "statement_csv"]
