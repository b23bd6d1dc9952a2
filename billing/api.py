"""HTTP routes for money in: recharge orders, payment notifies, the sandbox pay page,
refunds, adjustments, the audit log. Plus `start`, which builds the Billing
services and their background tasks in the app's lifespan.

Errors are JSON `{"code", "message"}` with stable codes (server.api.ApiError).
Notify endpoints answer in each channel's own words and never 5xx on bad
input: a forged, malformed, huge or wrongly encoded notify gets the channel's
"fail" answer (4xx for WeChat Pay, `fail` for Alipay and the sandbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from billing import adjustments, audit, debits, refunds
from billing.channels.alipay import AlipayChannel
from billing.channels.base import Channel
from billing.channels.sandbox import SandboxChannel
from billing.channels.wechatpay import WechatPayChannel
from billing.orders import IDEM_KEY, PACKS_YUAN, AmountError, coins_for_fen, parse_order_request
from billing.recharge import Billing, OrderError, order_json
from server.api import ApiError, json_body, principal_of, require_role
from server.auth import Principal, Role
from server.context import Ctx
from server.settings import Settings

log = logging.getLogger("giftd.billing")

NOTIFY_BYTES_MAX = 64 * 1024  # a notify body larger than this is refused unread (413)
SANDBOX_NOTIFY_EVERY_S = 1.0  # the sandbox notifier looks for due notifies this often
DEBIT_RESUME_EVERY_S = 10.0  # pending refund/adjustment debits are resumed this often
AUDIT_WITNESS_EVERY_S = 5.0  # the audit chain's head is copied to Redis this often
PAYOUT_SWEEP_EVERY_S = 10.0  # approved withdrawals without a payout are re-sent this often
# Who may do what (issue 5's roles). Every staff endpoint checks one of these.
MONEY_ROLES: tuple[Role, ...] = (Role.ADMIN, Role.FINANCE)  # refunds, adjustments, payouts,
#                                                            settlement, KYC review
RULE_ROLES: tuple[Role, ...] = (Role.ADMIN, Role.OPS)  # revenue rules, gift catalog
READ_ROLES: tuple[Role, ...] = (Role.ADMIN, Role.FINANCE, Role.OPS, Role.SUPPORT)


def billing_of(request: Request) -> Billing:
    b: Billing = request.app.state.billing
    return b


def build_channels(settings: Settings, billing: Billing, secret: str) -> dict[str, Channel]:
    chans: dict[str, Channel] = {}
    if settings.sandbox_active:
        key = (settings.sandbox_key.encode() if settings.sandbox_key
               else hmac.new(secret.encode(), b"sandbox-channel-key", hashlib.sha256).digest())
        base = settings.public_base_url or f"http://{settings.host}:{settings.port}"
        chans["sandbox"] = SandboxChannel(
            billing.pool, key=key, notify_url=base.rstrip("/") + "/api/pay/notify/sandbox",
            schedule_s=settings.sandbox_notify_schedule_s,
            duplicate_pct=settings.sandbox_duplicate_pct, timezone=settings.timezone)
    base = (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if settings.alipay_app_id and settings.alipay_public_key_path:
        priv = settings.alipay_private_key_path
        chans["alipay"] = AlipayChannel(
            app_id=settings.alipay_app_id, seller_id=settings.alipay_seller_id,
            alipay_public_key_pem=Path(settings.alipay_public_key_path).read_bytes(),
            private_key_pem=Path(priv).read_bytes() if priv else b"",
            gateway_url=settings.alipay_gateway_url,
            notify_url=base + "/api/pay/notify/alipay")
    if settings.wechatpay_mchid and settings.wechatpay_platform_key_path:
        chans["wechatpay"] = WechatPayChannel(
            mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid,
            apiv3_key=settings.wechatpay_apiv3_key.encode(),
            platform_keys={settings.wechatpay_platform_serial:
                           Path(settings.wechatpay_platform_key_path).read_bytes()},
            merchant_key_pem=(Path(settings.wechatpay_merchant_key_path).read_bytes()
                              if settings.wechatpay_merchant_key_path else b""),
            merchant_serial=settings.wechatpay_merchant_serial,
            api_base=settings.wechatpay_api_base, notify_url=base + "/api/pay/notify/wechatpay")
    return chans


async def _every(every_s: float, name: str, fn: Any) -> None:
    while True:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: %r", name, exc)
        await asyncio.sleep(every_s)


def start(app: Starlette, ctx: Ctx) -> list[asyncio.Task[None]]:
    """Build the Billing services (app.state.billing) and start their background tasks."""
    b = Billing(settings=ctx.settings, pool=ctx.pool, redis=ctx.redis,
                credit_script=ctx.scripts.credit)
    b.channels = build_channels(ctx.settings, b, ctx.secret)
    app.state.billing = b
    app.state.payouts = payouts = _build_payouts(ctx, b)
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("payout-sweep", _every(PAYOUT_SWEEP_EVERY_S, "payout sweep", payouts.sweep)),
        ("order-sweep", _every(ctx.settings.order_sweep_every_s, "order sweep",
                               b.sweep_pending)),
        ("debit-resume", _every(DEBIT_RESUME_EVERY_S, "debit resume",
                                lambda: debits.resume_debits(b.pool, b.redis, b.debit_script))),
        ("audit-witness", _every(AUDIT_WITNESS_EVERY_S, "audit witness",
                                 lambda: audit.witness(b.pool, b.redis))),
    ]
    if b.sandbox is not None:
        jobs.append(("sandbox-notifier", b.sandbox.run(SANDBOX_NOTIFY_EVERY_S)))
    return [asyncio.create_task(coro, name=name) for name, coro in jobs]


def _build_payouts(ctx: Ctx, b: Billing) -> Any:
    """Money out (billing/payouts.py): payout channels are the ones that can pay out."""
    from billing.channels.base import PayoutChannel
    from billing.crypto import Sealer, data_key
    from billing.payouts import Payouts

    chans = {n: cast(PayoutChannel, c) for n, c in b.channels.items() if hasattr(c, "payout")}
    return Payouts(pool=ctx.pool, settings=ctx.settings,
                   sealer=Sealer(data_key(ctx.settings.data_key, ctx.secret)), channels=chans)


def _idem_key(request: Request, data: dict[str, Any]) -> str:
    key = request.headers.get("idempotency-key") or data.get("idempotency_key")
    if not isinstance(key, str) or not IDEM_KEY.fullmatch(key):
        raise ApiError(400, "bad_idempotency_key",
                       "an Idempotency-Key header (1..64 of A-Z a-z 0-9 _ . : -) is required")
    return key


def _raise(exc: OrderError | AmountError) -> ApiError:
    status = exc.status if isinstance(exc, OrderError) else 400
    return ApiError(status, exc.code, str(exc))


# --- recharge ---------------------------------------------------------------------
async def packs(request: Request) -> Response:
    b = billing_of(request)
    s = b.settings
    return JSONResponse({
        "packs": [{"yuan": y, "amount_fen": y * 100, "coins": coins_for_fen(y * 100,
                                                                              s.coins_per_yuan)}
                  for y in PACKS_YUAN],
        "custom": {"min_fen": s.recharge_custom_min_fen, "max_fen": s.recharge_custom_max_fen},
        "coins_per_yuan": s.coins_per_yuan,
        "first_recharge_bonus": {"pct": s.first_recharge_bonus_pct,
                                 "max_coins": s.first_recharge_bonus_max_coins},
        "channels": sorted(b.channels),
    })


def _with_pay(order: dict[str, Any]) -> dict[str, Any]:
    if order["channel"] == "sandbox" and order["status"] == "PENDING":
        return {**order, "pay_url": f"/sandbox/pay/{order['id']}"}
    return order


async def create_order(request: Request) -> Response:
    b = billing_of(request)
    p = principal_of(request)
    data = await json_body(request)
    key = _idem_key(request, data)
    data.pop("idempotency_key", None)
    try:
        req = parse_order_request(data, channels=frozenset(b.channels),
                                  custom_min_fen=b.settings.recharge_custom_min_fen,
                                  custom_max_fen=b.settings.recharge_custom_max_fen)
        order, replayed = await b.create_order(p.user_id, req, key)
    except (OrderError, AmountError) as exc:
        raise _raise(exc) from None
    return JSONResponse({"order": _with_pay(order), "replayed": replayed},
                        200 if replayed else 201)


async def get_order(request: Request) -> Response:
    b = billing_of(request)
    p = principal_of(request)
    row = await b.get_order(request.path_params["order"])
    if row is None or (row["user_id"] != p.user_id and p.role not in READ_ROLES):
        raise ApiError(404, "unknown_order", "no such order")
    return JSONResponse({"order": _with_pay(order_json(row))})


async def my_orders(request: Request) -> Response:
    b = billing_of(request)
    p = principal_of(request)
    rows = await b.pool.fetch("SELECT * FROM recharge_orders WHERE user_id = $1 "
                              "ORDER BY created_at DESC LIMIT 50", p.user_id)
    return JSONResponse({"orders": [order_json(r) for r in rows]})


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (the rest is not read into memory)."""
    if int(request.headers.get("content-length") or 0) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def notify(request: Request) -> Response:
    """POST /api/pay/notify/{channel}: a payment channel tells us about a trade."""
    b = billing_of(request)
    name = request.path_params["channel"]
    channel = b.channels.get(name)
    if channel is None:
        return Response(b"fail", 404, media_type="text/plain")
    body = await _read_capped(request, NOTIFY_BYTES_MAX)
    if body is None:
        reply = channel.reply(False)
        return Response(reply.body, 413, media_type=reply.content_type)
    try:
        reply = await b.handle_notify(name, dict(request.headers), body)
    except Exception as exc:  # our own outage (database away): ask the channel to retry
        log.error("%s notify could not be processed: %r", name, exc)
        fail = channel.reply(False)
        return Response(fail.body, 503, media_type=fail.content_type)
    return Response(reply.body, reply.status, media_type=reply.content_type)


# --- the sandbox's hosted pay page ---------------------------------------------------
_PAY_PAGE = """<!doctype html><meta charset="utf-8"><meta name="viewport"
content="width=device-width, initial-scale=1"><title>Sandbox pay</title>
<body style="font-family: system-ui; max-width: 28em; margin: 3em auto">
<h1>Sandbox payment</h1><p>Order <code>{order}</code></p><p>Amount: <b>¥{yuan}</b></p>
<p>Status: <b id="status">{status}</b></p>
<form method="post"><button type="submit" {disabled}>Pay ¥{yuan}</button></form>
<p><small>This is the built-in test channel. No money moves.</small></p></body>"""


async def sandbox_pay(request: Request) -> Response:
    b = billing_of(request)
    sandbox = b.sandbox
    if sandbox is None:
        raise ApiError(404, "not_found", "the sandbox channel is off")
    order_id = request.path_params["order"]
    if request.method == "POST":
        status = await sandbox.pay(order_id)
        if not status:
            raise ApiError(404, "unknown_trade", "no such sandbox trade")
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"order_id": order_id, "status": status})
    t = await sandbox.trade(order_id)
    if t is None:
        raise ApiError(404, "unknown_trade", "no such sandbox trade")
    yuan = f"{t['amount_fen'] // 100}.{t['amount_fen'] % 100:02d}"
    return HTMLResponse(_PAY_PAGE.format(order=html.escape(order_id), yuan=yuan,
                                         status=html.escape(t["status"]),
                                         disabled="" if t["status"] == "WAIT_PAY" else "disabled"))


# --- staff: refunds, adjustments, orders, audit -----------------------------------------
def _staff(request: Request, roles: tuple[Role, ...]) -> Principal:
    p = principal_of(request)
    require_role(p, *roles)
    return p


def _int_field(data: dict[str, Any], name: str, required: bool = True) -> int | None:
    v = data.get(name)
    if v is None and not required:
        return None
    if type(v) is not int:
        raise ApiError(400, "bad_field", f"field '{name}' must be an integer")
    return v


def _reason(data: dict[str, Any]) -> str:
    r = data.get("reason")
    if not isinstance(r, str) or not r.strip():
        raise ApiError(400, "reason_required", "a reason is required")
    return r


async def create_refund(request: Request) -> Response:
    b = billing_of(request)
    p = _staff(request, MONEY_ROLES)
    data = await json_body(request)
    key = _idem_key(request, data)
    order_id = data.get("order_id")
    if not isinstance(order_id, str) or not order_id:
        raise ApiError(400, "bad_field", "field 'order_id' must be a string")
    try:
        r = await refunds.request_refund(b, order_id=order_id,
                                         amount_fen=_int_field(data, "amount_fen", False),
                                         reason=_reason(data), actor=p, idem_key=key)
    except OrderError as exc:
        raise _raise(exc) from None
    return JSONResponse({"refund": r}, 201)


async def create_adjustment(request: Request) -> Response:
    b = billing_of(request)
    p = _staff(request, MONEY_ROLES)
    data = await json_body(request)
    key = _idem_key(request, data)
    user_id, amount = _int_field(data, "user_id"), _int_field(data, "amount")
    assert user_id is not None and amount is not None
    try:
        a = await adjustments.adjust(b, user_id=user_id, amount=amount, reason=_reason(data),
                                     actor=p, idem_key=key)
    except OrderError as exc:
        raise _raise(exc) from None
    return JSONResponse({"adjustment": a}, 201)


async def admin_orders(request: Request) -> Response:
    b = billing_of(request)
    _staff(request, READ_ROLES)
    q = request.query_params
    status = q.get("status") or None
    try:
        user_id = int(q["user_id"]) if q.get("user_id") else None
    except ValueError:
        raise ApiError(400, "bad_field", "user_id must be an integer") from None
    rows = await b.pool.fetch(
        """SELECT * FROM recharge_orders
            WHERE ($1::bigint IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY created_at DESC LIMIT 100""", user_id, status)
    return JSONResponse({"orders": [order_json(r) for r in rows]})


async def audit_log(request: Request) -> Response:
    b = billing_of(request)
    _staff(request, READ_ROLES)
    try:
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        raise ApiError(400, "bad_field", "after must be an integer") from None
    recs = await audit.load(b.pool, after, 100)
    return JSONResponse({"records": [
        {"seq": r.seq, "at": r.at.isoformat(), "actor_id": r.actor_id, "actor": r.actor,
         "action": r.action, "target": r.target, "reason": r.reason, "detail": r.detail,
         "hash": r.hash} for r in recs]})


async def audit_verify(request: Request) -> Response:
    b = billing_of(request)
    _staff(request, READ_ROLES)
    report = audit.verify_chain(await audit.load(b.pool), await audit.load_witness(b.redis))
    return JSONResponse({"ok": report.ok, "records": report.records,
                         "head_hash": report.head_hash,
                         "problems": [{"seq": x.seq, "kind": x.kind, "detail": x.detail}
                                      for x in report.problems]})


def routes() -> list[BaseRoute]:
    from billing import payout_api  # money out; imports this module

    return [*payout_api.routes(),
        Route("/api/recharge/packs", packs),
        Route("/api/recharge/orders", create_order, methods=["POST"]),
        Route("/api/recharge/orders", my_orders, methods=["GET"]),
        Route("/api/recharge/orders/{order}", get_order),
        Route("/api/pay/notify/{channel}", notify, methods=["POST"]),
        Route("/sandbox/pay/{order}", sandbox_pay, methods=["GET", "POST"]),
        Route("/api/admin/refunds", create_refund, methods=["POST"]),
        Route("/api/admin/adjustments", create_adjustment, methods=["POST"]),
        Route("/api/admin/orders", admin_orders),
        Route("/api/admin/audit", audit_log),
        Route("/api/admin/audit/verify", audit_verify),
    ]
