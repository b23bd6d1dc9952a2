"""Ops edits the gift catalog: GET/PUT /api/admin/gifts[/{code}]. Audited; every
process reloads its in-memory catalog when told on the control channel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from billing.api import READ_ROLES, RULE_ROLES
from gifts.catalog_store import CatalogError, all_gifts, parse_change, save_gift
from server import keys
from server.api import ApiError, ctx_of, json_body, principal_of, require_role

REASON_CHARS_MAX = 500


async def list_gifts(request: Request) -> Response:
    require_role(principal_of(request), *READ_ROLES)
    return JSONResponse({"gifts": await all_gifts(ctx_of(request).pool)})


async def put_gift(request: Request) -> Response:
    ctx = ctx_of(request)
    me = principal_of(request)
    require_role(me, *RULE_ROLES)
    data = await json_body(request)
    reason = data.get("reason")
    if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= REASON_CHARS_MAX:
        raise ApiError(400, "reason_required", "say why (1-500 characters)")
    try:
        change = parse_change(request.path_params["code"], data)
    except CatalogError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    async with ctx.pool.acquire() as conn:
        before = await save_gift(conn, change, actor_id=me.user_id, actor=me.name,
                                 reason=reason.strip())
    # every process (this one too) reloads on the notice
    await ctx.redis.publish(keys.CONTROL_CHANNEL, "catalog_changed:")
    return JSONResponse({"gift": {"code": change.code, "name": change.name,
                                  "price_coins": change.price_coins,
                                  "animation": change.animation, "kind": change.kind,
                                  "sort_order": change.sort_order, "active": change.active},
                         "created": before is None}, 201 if before is None else 200)


def routes() -> list[BaseRoute]:
    return [Route("/api/admin/gifts", list_gifts),
            Route("/api/admin/gifts/{code}", put_gift, methods=["PUT"])]
