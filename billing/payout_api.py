"""HTTP routes for money out: the streamer console (/api/creator/...), the admin
console (/api/admin/...: revenue rules, settlement, KYC review, withdrawal review,
statements) and the payout notify (/api/payout/notify/{channel}).

Roles (billing/api.py): MONEY_ROLES (admin, finance) review and settle; RULE_ROLES
(admin, ops) change revenue rules; READ_ROLES (admin, finance, ops, support) read.
Creator endpoints need the streamer role and only ever see the caller's own data.
See docs/money.md "Money out" for every endpoint and its answers.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from billing.api import (
    MONEY_ROLES,
    NOTIFY_BYTES_MAX,
    READ_ROLES,
    RULE_ROLES,
    _idem_key,
    _int_field,
    _read_capped,
    _reason,
    _staff,
)
from billing.payouts import (
    CSV_KINDS,
    PayoutError,
    Payouts,
    default_range,
    parse_day,
    statement_csv,
)
from billing.revenue import RuleError, local_day
from billing.settlement import (
    SettleError,
    add_rule,
    balances,
    rule_for,
    rule_json,
    settle_day,
    settlement_json,
)
from server.api import ApiError, json_body, principal_of, require_role
from server.auth import Principal, Role


def payouts_of(request: Request) -> Payouts:
    p: Payouts = request.app.state.payouts
    return p


def _creator(request: Request) -> Principal:
    p = principal_of(request)
    require_role(p, Role.STREAMER)
    return p


def _err(exc: PayoutError | RuleError | SettleError) -> ApiError:
    if isinstance(exc, PayoutError):
        return ApiError(exc.status, exc.code, str(exc))
    status = 409 if exc.code in ("already_settled", "day_not_over", "unflushed_gifts") else 400
    if exc.code == "unknown_creator":
        status = 404
    return ApiError(status, exc.code, str(exc))


def _str_field(data: dict[str, Any], name: str, required: bool = True) -> str | None:
    v = data.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise ApiError(400, "bad_field", f"field '{name}' must be a string")
    return v


def _decision(data: dict[str, Any]) -> bool:
    d = data.get("decision")
    if d not in ("approve", "reject"):
        raise ApiError(400, "bad_field", "decision must be 'approve' or 'reject'")
    return d == "approve"


def _path_int(request: Request, name: str) -> int:
    try:
        return int(request.path_params[name])
    except ValueError:
        raise ApiError(404, "not_found", "no such item") from None


# --- streamer console ---------------------------------------------------------------------
async def earnings(request: Request) -> Response:
    return await _earnings(request, _creator(request).user_id)


async def _earnings(request: Request, uid: int) -> Response:
    pay = payouts_of(request)
    s = pay.settings
    now = datetime.now(UTC)
    rule = await rule_for(pay.pool, uid, local_day(now, s.timezone), s.revenue_default_creator_bps)
    return JSONResponse({
        "creator_id": uid, **await balances(pay.pool, uid, s, now),
        "rule": rule.as_json(),
        "hold_days": rule.hold_days if rule.hold_days is not None else s.settlement_hold_days,
        "payout_fen_per_kcoin": s.payout_fen_per_kcoin,
        "limits": {"min_coins": s.withdraw_min_coins, "max_coins": s.withdraw_max_coins,
                   "daily_max_coins": s.withdraw_daily_max_coins}})


async def kyc_get(request: Request) -> Response:
    p = _creator(request)
    return JSONResponse({"kyc": await payouts_of(request).get_kyc(p.user_id)})


async def kyc_submit(request: Request) -> Response:
    p = _creator(request)
    data = await json_body(request)
    try:
        k = await payouts_of(request).submit_kyc(p, _str_field(data, "real_name") or "",
                                                 _str_field(data, "id_number") or "")
    except PayoutError as exc:
        raise _err(exc) from None
    return JSONResponse({"kyc": k}, 201)


async def methods_get(request: Request) -> Response:
    p = _creator(request)
    return JSONResponse({"methods": await payouts_of(request).list_methods(p.user_id)})


async def methods_add(request: Request) -> Response:
    p = _creator(request)
    data = await json_body(request)
    try:
        m = await payouts_of(request).add_method(p, _str_field(data, "kind") or "",
                                                 _str_field(data, "account") or "",
                                                 _str_field(data, "bank", required=False))
    except PayoutError as exc:
        raise _err(exc) from None
    return JSONResponse({"method": m}, 201)


async def methods_delete(request: Request) -> Response:
    p = _creator(request)
    if not await payouts_of(request).remove_method(p.user_id, _path_int(request, "id")):
        raise ApiError(404, "unknown_method", "no such payout method")
    return JSONResponse({"removed": True})


async def withdraw(request: Request) -> Response:
    p = _creator(request)
    data = await json_body(request)
    key = _idem_key(request, data)
    amount, method = _int_field(data, "amount_coins"), _int_field(data, "method_id")
    assert amount is not None and method is not None
    try:
        w, replayed = await payouts_of(request).request_withdrawal(
            p, amount_coins=amount, method_id=method, idem_key=key)
    except PayoutError as exc:
        raise _err(exc) from None
    return JSONResponse({"withdrawal": w, "replayed": replayed}, 200 if replayed else 201)


async def my_withdrawals(request: Request) -> Response:
    p = _creator(request)
    return JSONResponse({"withdrawals": await payouts_of(request).list_withdrawals(
        creator_id=p.user_id)})


async def _statement(request: Request, uid: int, as_csv: bool) -> Response:
    pay = payouts_of(request)
    q = request.query_params
    d_from, d_to = default_range(datetime.now(UTC), pay.settings.timezone)
    try:
        first, last = parse_day(q.get("from"), d_from), parse_day(q.get("to"), d_to)
        st = await pay.statement(uid, first, last)
    except PayoutError as exc:
        raise _err(exc) from None
    if not as_csv:
        return JSONResponse(st)
    kind = q.get("kind", "daily")
    if kind not in CSV_KINDS:
        raise ApiError(400, "bad_field", f"kind must be one of {', '.join(CSV_KINDS)}")
    name = f"statement-{uid}-{kind}-{first}-{last}.csv"
    return Response(statement_csv(st, kind), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


async def my_statement(request: Request) -> Response:
    return await _statement(request, _creator(request).user_id, False)


async def my_statement_csv(request: Request) -> Response:
    return await _statement(request, _creator(request).user_id, True)


# --- admin console ------------------------------------------------------------------------
async def admin_statement(request: Request) -> Response:
    _staff(request, READ_ROLES)
    return await _statement(request, _path_int(request, "id"), False)


async def admin_statement_csv(request: Request) -> Response:
    _staff(request, READ_ROLES)
    return await _statement(request, _path_int(request, "id"), True)


async def admin_earnings(request: Request) -> Response:
    _staff(request, READ_ROLES)
    return await _earnings(request, _path_int(request, "id"))


async def rules_list(request: Request) -> Response:
    _staff(request, READ_ROLES)
    q = request.query_params
    creator = q.get("creator_id")
    if creator is not None and not creator.isdigit():
        raise ApiError(400, "bad_field", "creator_id must be an integer")
    rows = await payouts_of(request).pool.fetch(
        """SELECT * FROM revenue_rules WHERE ($1::bigint IS NULL OR creator_id = $1
                                              OR creator_id IS NULL)
            ORDER BY creator_id NULLS FIRST, effective_from DESC, id DESC LIMIT 200""",
        int(creator) if creator else None)
    return JSONResponse({"rules": [rule_json(r) for r in rows],
                         "built_in_default": {"kind": "fixed", "tiers": [
                             [0, payouts_of(request).settings.revenue_default_creator_bps]]}})


async def rules_add(request: Request) -> Response:
    p = _staff(request, RULE_ROLES)
    data = await json_body(request)
    creator = data.get("creator_id")
    if creator is not None and type(creator) is not int:
        raise ApiError(400, "bad_field", "creator_id must be an integer or null")
    try:
        eff = date.fromisoformat(_str_field(data, "effective_from") or "")
    except ValueError:
        raise ApiError(400, "bad_field", "effective_from is YYYY-MM-DD") from None
    try:
        r = await add_rule(payouts_of(request).pool, creator_id=creator, effective_from=eff,
                           kind=data.get("kind"), tiers=data.get("tiers"),
                           hold_days=data.get("hold_days"), reason=_reason(data), actor=p)
    except RuleError as exc:
        raise _err(exc) from None
    return JSONResponse({"rule": r}, 201)


async def settle(request: Request) -> Response:
    p = _staff(request, MONEY_ROLES)
    data = await json_body(request)
    try:
        day = date.fromisoformat(_str_field(data, "date") or "")
    except ValueError:
        raise ApiError(400, "bad_field", "date is YYYY-MM-DD") from None
    pay = payouts_of(request)
    try:
        rep = await settle_day(pay.pool, request.app.state.ctx.redis, day=day,
                               settings=pay.settings, actor=p)
    except SettleError as exc:
        raise _err(exc) from None
    return JSONResponse(rep.as_json())


async def settlements(request: Request) -> Response:
    _staff(request, READ_ROLES)
    q = request.query_params
    try:
        day = date.fromisoformat(q["date"]) if q.get("date") else None
        creator = int(q["creator_id"]) if q.get("creator_id") else None
    except ValueError:
        raise ApiError(400, "bad_field", "date is YYYY-MM-DD, creator_id an integer") from None
    rows = await payouts_of(request).pool.fetch(
        """SELECT * FROM settlements WHERE ($1::date IS NULL OR day = $1)
              AND ($2::bigint IS NULL OR creator_id = $2)
            ORDER BY day DESC, creator_id LIMIT 500""", day, creator)
    return JSONResponse({"settlements": [settlement_json(r) for r in rows]})


async def kyc_list(request: Request) -> Response:
    _staff(request, READ_ROLES)
    status = request.query_params.get("status") or None
    from billing.payouts import kyc_json

    rows = await payouts_of(request).pool.fetch(
        """SELECT * FROM creator_kyc WHERE ($1::text IS NULL OR status = $1)
            ORDER BY submitted_at LIMIT 200""", status)
    return JSONResponse({"kyc": [kyc_json(r) for r in rows]})


async def kyc_review(request: Request) -> Response:
    p = _staff(request, MONEY_ROLES)
    data = await json_body(request)
    approve = _decision(data)
    try:
        k = await payouts_of(request).review_kyc(p, _path_int(request, "id"), approve,
                                                 _reason(data))
    except PayoutError as exc:
        raise _err(exc) from None
    return JSONResponse({"kyc": k})


async def withdrawals_list(request: Request) -> Response:
    _staff(request, READ_ROLES)
    q = request.query_params
    creator = q.get("creator_id")
    if creator is not None and not creator.isdigit():
        raise ApiError(400, "bad_field", "creator_id must be an integer")
    return JSONResponse({"withdrawals": await payouts_of(request).list_withdrawals(
        creator_id=int(creator) if creator else None, status=q.get("status") or None)})


async def withdrawal_review(request: Request) -> Response:
    p = _staff(request, MONEY_ROLES)
    data = await json_body(request)
    approve = _decision(data)
    try:
        w = await payouts_of(request).review_withdrawal(p, request.path_params["id"], approve,
                                                        _reason(data))
    except PayoutError as exc:
        raise _err(exc) from None
    return JSONResponse({"withdrawal": w})


# --- the channel's payout notify -------------------------------------------------------------
async def payout_notify(request: Request) -> Response:
    pay = payouts_of(request)
    name = request.path_params["channel"]
    chan = pay.channels.get(name)
    if chan is None:
        return Response(b"fail", 404, media_type="text/plain")
    body = await _read_capped(request, NOTIFY_BYTES_MAX)
    if body is None:
        fail = chan.reply(False)
        return Response(fail.body, 413, media_type=fail.content_type)
    try:
        reply, _verdict = await pay.handle_payout_notify(name, dict(request.headers), body)
    except Exception:  # our own outage: the channel retries
        fail = chan.reply(False)
        return Response(fail.body, 503, media_type=fail.content_type)
    return Response(reply.body, reply.status, media_type=reply.content_type)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/creator/earnings", earnings),
        Route("/api/creator/kyc", kyc_get, methods=["GET"]),
        Route("/api/creator/kyc", kyc_submit, methods=["POST"]),
        Route("/api/creator/payout-methods", methods_get, methods=["GET"]),
        Route("/api/creator/payout-methods", methods_add, methods=["POST"]),
        Route("/api/creator/payout-methods/{id}", methods_delete, methods=["DELETE"]),
        Route("/api/creator/withdrawals", withdraw, methods=["POST"]),
        Route("/api/creator/withdrawals", my_withdrawals, methods=["GET"]),
        Route("/api/creator/statement", my_statement),
        Route("/api/creator/statement.csv", my_statement_csv),
        Route("/api/admin/creators/{id}/earnings", admin_earnings),
        Route("/api/admin/creators/{id}/statement", admin_statement),
        Route("/api/admin/creators/{id}/statement.csv", admin_statement_csv),
        Route("/api/admin/revenue-rules", rules_list, methods=["GET"]),
        Route("/api/admin/revenue-rules", rules_add, methods=["POST"]),
        Route("/api/admin/settle", settle, methods=["POST"]),
        Route("/api/admin/settlements", settlements),
        Route("/api/admin/kyc", kyc_list),
        Route("/api/admin/kyc/{id}/review", kyc_review, methods=["POST"]),
        Route("/api/admin/withdrawals", withdrawals_list),
        Route("/api/admin/withdrawals/{id}/review", withdrawal_review, methods=["POST"]),
        Route("/api/payout/notify/{channel}", payout_notify, methods=["POST"]),
    ]
