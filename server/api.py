"""HTTP API: accounts, catalog, balance, transactions, rooms, leaderboards, health, metrics.

Errors are JSON `{"code": ..., "message": ...}` with a stable code.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server import keys
from server.auth import AuthError, Principal, Role, issue_token, verify_token
from server.users import UserError, authenticate, create_user

if TYPE_CHECKING:
    from server.context import Ctx

BODY_BYTES_MAX = 16 * 1024  # JSON request bodies larger than this are refused
PAGE_LIMIT_MAX = 100  # list endpoints return at most this many items


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse({"code": exc.code, "message": exc.message}, exc.status)


def ctx_of(request: Request) -> Ctx:
    ctx: Ctx = request.app.state.ctx
    return ctx


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > BODY_BYTES_MAX:
        raise ApiError(413, "body_too_large", f"bodies are limited to {BODY_BYTES_MAX} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return data


def principal_of(request: Request) -> Principal:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    try:
        p = verify_token(ctx_of(request).secret, token)
    except AuthError as exc:
        raise ApiError(401, exc.code, str(exc)) from None
    if p.role is Role.OVERLAY:  # widgets read over /ws; they act as nobody here
        raise ApiError(403, "read_only", "an overlay token cannot use the API")
    return p


def _str(data: dict[str, Any], name: str, required: bool = True) -> str:
    v = data.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise ApiError(400, "bad_field", f"field '{name}' must be a string")
    return v


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit", str(default))
    try:
        n = int(raw)
    except ValueError:
        raise ApiError(400, "bad_field", "limit must be an integer") from None
    if not 1 <= n <= PAGE_LIMIT_MAX:
        raise ApiError(400, "bad_field", f"limit must be 1..{PAGE_LIMIT_MAX}")
    return n


def _user_json(p: Principal) -> dict[str, Any]:
    return {"id": p.user_id, "name": p.name, "role": p.role.value}


async def register(request: Request) -> Response:
    ctx = ctx_of(request)
    data = await json_body(request)
    try:
        async with ctx.pool.acquire() as conn:
            p = await create_user(conn, username=_str(data, "username"),
                                  password=_str(data, "password"),
                                  display_name=_str(data, "display_name", required=False))
    except UserError as exc:
        status = 409 if exc.code == "username_taken" else 400
        raise ApiError(status, exc.code, str(exc)) from None
    ctx.names.put(p.user_id, p.name)
    token = issue_token(ctx.secret, p, ctx.settings.token_ttl_s)
    return JSONResponse({"token": token, "user": _user_json(p)}, 201)


async def login(request: Request) -> Response:
    ctx = ctx_of(request)
    data = await json_body(request)
    try:
        p = await authenticate(ctx.pool, _str(data, "username"), _str(data, "password"))
    except UserError as exc:
        raise ApiError(401, exc.code, str(exc)) from None
    token = issue_token(ctx.secret, p, ctx.settings.token_ttl_s)
    return JSONResponse({"token": token, "user": _user_json(p)})


async def catalog(request: Request) -> Response:
    ctx = ctx_of(request)
    return JSONResponse({"gifts": ctx.catalog.as_json(),
                         "coins_per_yuan": ctx.settings.coins_per_yuan})


async def me(request: Request) -> Response:
    ctx = ctx_of(request)
    p = principal_of(request)
    balance = int(await ctx.redis.get(keys.balance(p.user_id)) or 0)
    return JSONResponse({"user": _user_json(p), "balance": balance})


async def balance(request: Request) -> Response:
    ctx = ctx_of(request)
    p = principal_of(request)
    return JSONResponse({"balance": int(await ctx.redis.get(keys.balance(p.user_id)) or 0)})


async def transactions(request: Request) -> Response:
    """My latest gifts: flushed ones from the ledger, not-yet-flushed ones marked pending."""
    ctx = ctx_of(request)
    p = principal_of(request)
    limit = _limit(request)
    recent = [orjson.loads(x) for x in await ctx.redis.lrange(keys.recent(p.user_id), 0,
                                                                limit - 1)]
    rows = await ctx.pool.fetch(
        """SELECT event_id, room_id, gift_code, count, amount_coins, created_at
             FROM gift_events WHERE sender_id = $1 ORDER BY created_at DESC, event_id DESC
            LIMIT $2""",
        p.user_id, limit,
    )
    flushed = {r["event_id"] for r in rows}
    items: list[dict[str, Any]] = [
        {"event_id": r["event_id"], "room": r["room_id"], "gift": r["gift_code"],
         "count": r["count"], "amount_coins": -r["amount_coins"],
         "ts_ms": int(r["created_at"].timestamp() * 1000), "status": "flushed"}
        for r in rows
    ]
    for ev in recent:
        if ev["event_id"] not in flushed:
            items.append({"event_id": ev["event_id"], "room": ev["room"], "gift": ev["gift"],
                          "count": ev["count"], "amount_coins": -ev["value_coins"],
                          "ts_ms": ev["ts_ms"], "status": "pending"})
    items.sort(key=lambda i: (i["ts_ms"], i["event_id"]), reverse=True)
    return JSONResponse({"items": items[:limit]})


async def rooms(request: Request) -> Response:
    ctx = ctx_of(request)
    return JSONResponse({"rooms": [
        {"id": r.id, "title": r.title, "streamer": {"id": r.streamer_id, "name": r.streamer_name}}
        for r in await ctx.rooms.all()]})


async def _ranked(request: Request, key: str, default_limit: int) -> dict[str, Any]:
    """One page of a sorted-set board (?offset=&limit=), names filled in, and the
    caller's own rank and score when the request carries a token."""
    ctx = ctx_of(request)
    try:
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        raise ApiError(400, "bad_field", "offset must be an integer") from None
    if not 0 <= offset <= BOARD_OFFSET_MAX:
        raise ApiError(400, "bad_field", f"offset must be 0..{BOARD_OFFSET_MAX}")
    limit = _limit(request, default_limit)
    rank: list[tuple[bytes, float]] = cast(Any, await ctx.redis.zrevrange(
        key, offset, offset + limit - 1, withscores=True))
    ids = [int(m) for m, _ in rank]
    names = await ctx.names.get_many(ids)
    out: dict[str, Any] = {
        "offset": offset,
        "total": await ctx.redis.zcard(key),
        "items": [{"rank": offset + i + 1, "id": uid, "name": names.get(uid, ""),
                   "score": int(score)} for i, (uid, (_, score)) in
                  enumerate(zip(ids, rank, strict=True))],
    }
    if request.headers.get("authorization"):
        me = principal_of(request)
        my_rank: int | None = cast(Any, await ctx.redis.zrevrank(key, me.user_id))
        my_score = await ctx.redis.zscore(key, me.user_id)
        out["me"] = {"rank": None if my_rank is None else int(my_rank) + 1,
                     "score": int(my_score or 0)}
    return out


BOARD_OFFSET_MAX = 10_000  # deeper pages of a board are not served


async def leaderboard(request: Request) -> Response:
    """The room's live ranking this broadcast session, paginated, with my rank."""
    ctx = ctx_of(request)
    room_id = request.path_params["room"]
    room = await ctx.rooms.get(room_id)
    if room is None:
        raise ApiError(404, "unknown_room", "no such room")
    page = await _ranked(request, keys.room_rank(room_id), ctx.settings.ranking_top_n)
    return JSONResponse({"room": room_id, **page})


async def start_session(request: Request) -> Response:
    """The room's streamer starts a new broadcast: live ranking and earnings restart."""
    ctx = ctx_of(request)
    me = principal_of(request)
    room_id = request.path_params["room"]
    room = await ctx.rooms.get(room_id)
    if room is None:
        raise ApiError(404, "unknown_room", "no such room")
    if room.streamer_id != me.user_id:
        raise ApiError(403, "forbidden", "only the room's streamer starts its broadcast")
    epoch = await ctx.scripts.start_session(ctx.redis, [keys.PREFIX, room_id,
                                                        ctx.settings.room_history_max])
    return JSONResponse({"room": room_id, "epoch": int(epoch)})


async def demo(request: Request) -> Response:
    """Demo accounts for the demo page; only when the server runs with --demo."""
    ctx = ctx_of(request)
    if not ctx.settings.demo:
        raise ApiError(404, "not_found", "demo mode is off")
    from server.demo import DEMO_PASSWORD, DEMO_USERS

    return JSONResponse({"password": DEMO_PASSWORD, "users": [
        {"username": u, "name": n, "role": r.value, "room": room}
        for u, n, r, _, room in DEMO_USERS]})


async def health(request: Request) -> Response:
    ctx = ctx_of(request)
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = bool(await ctx.redis.ping())
    except Exception:
        checks["redis"] = False
    try:
        checks["postgres"] = (await ctx.pool.fetchval("SELECT 1")) == 1
    except Exception:
        checks["postgres"] = False
    ok = all(checks.values())
    return JSONResponse({"ok": ok, **checks, "node": ctx.settings.node_id}, 200 if ok else 503)


async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    m = ctx.metrics
    m.rooms.set(len(ctx.hub.rooms))
    m.frames.set(ctx.hub.frames_written)
    m.deliveries.set(ctx.hub.events_delivered)
    m.slow_closes.set(ctx.hub.slow_closes)
    m.tick_lag_ms.set(ctx.hub.tick_lag_ms)
    m.gaps_repaired.set(ctx.bus.gaps_repaired)
    m.gaps_lost.set(ctx.hub.gaps_unrepaired)
    m.send_queue.set(ctx.sender.queued())
    try:
        m.ledger_backlog.set(await ctx.redis.xlen(keys.LEDGER_STREAM))
        # Lag = age of the oldest unflushed debit now (0 when the stream is empty),
        # whichever process's flusher is behind.
        oldest = cast(Any, await ctx.redis.xrange(keys.LEDGER_STREAM, count=1))
        oldest_ms = int(oldest[0][0].split(b"-")[0]) if oldest else None
        m.flush_lag_ms.set(0 if oldest_ms is None else max(0, int(time.time() * 1000)
                                                             - oldest_ms))
    except Exception:
        pass
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


def require_role(p: Principal, *roles: Role) -> None:
    if p.role not in roles:
        raise ApiError(403, "forbidden", "your role may not do this")


BOARD_KINDS = ("streamer", "gifter")


async def board(request: Request) -> Response:
    """A period leaderboard, paginated, with the caller's own rank when logged in.

    GET /api/boards/{streamer|gifter}/{day|week|month}?date=YYYY-MM-DD&offset=&limit=
    `date` is a local date in the configured zone (default: today there).
    """
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from rooms.periods import PERIOD_KINDS, period_of

    ctx = ctx_of(request)
    kind, span = request.path_params["kind"], request.path_params["period"]
    if kind not in BOARD_KINDS or span not in PERIOD_KINDS:
        raise ApiError(404, "unknown_board", "boards: streamer|gifter / day|week|month")
    raw_date = request.query_params.get("date")
    try:
        local = (date.fromisoformat(raw_date) if raw_date
                 else datetime.now(ZoneInfo(ctx.settings.timezone)).date())
    except ValueError:
        raise ApiError(400, "bad_field", "date must be YYYY-MM-DD") from None
    period = period_of(span, local)
    key = keys.board_streamers(period) if kind == "streamer" else keys.board_gifters(period)
    page = await _ranked(request, key, 20)
    return JSONResponse({"board": kind, "period": period, **page})


_PK_STATUS = {"ok": 200, "busy": 409, "not_found": 404, "not_yours": 403, "bad_state": 409}


async def _own_room(request: Request, user_id: int) -> str:
    ctx = ctx_of(request)
    room_id = await ctx.pool.fetchval("SELECT id FROM rooms WHERE streamer_id = $1", user_id)
    if room_id is None:
        raise ApiError(403, "no_room", "only a streamer with a room can do this")
    return str(room_id)


async def pk_invite(request: Request) -> Response:
    """A streamer invites another room's streamer to a PK battle."""
    ctx = ctx_of(request)
    me = principal_of(request)
    mine = await _own_room(request, me.user_id)
    data = await json_body(request)
    other = await ctx.rooms.get(_str(data, "room"))
    if other is None:
        raise ApiError(404, "unknown_room", "no such room")
    if other.id == mine:
        raise ApiError(400, "bad_field", "a room cannot battle itself")
    outcome, pk_id = await ctx.battles.invite(mine, me.user_id, other.id, other.streamer_id)
    body: dict[str, Any] = {"outcome": outcome.value}
    if outcome.value == "ok":  # a refused invitation made no battle: no id to show
        body["pk_id"] = pk_id
        body["pk"] = await ctx.battles.state(pk_id)
    return JSONResponse(body, _PK_STATUS[outcome.value])


async def pk_answer(request: Request) -> Response:
    ctx = ctx_of(request)
    me = principal_of(request)
    pk_id = request.path_params["pk_id"]
    answer = request.path_params["answer"]
    if answer not in ("accept", "decline"):
        raise ApiError(404, "not_found", "answer a battle with /accept or /decline")
    accept = answer == "accept"
    outcome = await ctx.battles.answer(pk_id, me.user_id, accept)
    return JSONResponse({"outcome": outcome.value, "pk": await ctx.battles.state(pk_id)},
                        _PK_STATUS[outcome.value])


async def pk_get(request: Request) -> Response:
    ctx = ctx_of(request)
    state = await ctx.battles.state(request.path_params["pk_id"])
    if state is None:
        raise ApiError(404, "not_found", "no such battle")
    return JSONResponse(state)


async def overlay_token(request: Request) -> Response:
    """A streamer's read-only overlay token (and URL) for OBS browser sources."""
    from server.auth import issue_overlay_token

    ctx = ctx_of(request)
    me = principal_of(request)
    room = await _own_room(request, me.user_id)
    version = int(await ctx.redis.get(keys.overlay_version(me.user_id)) or 0)
    token = issue_overlay_token(ctx.secret, me.user_id, me.name, version)
    return JSONResponse({"token": token, "version": version, "room": room,
                         "url": f"/overlay/?token={token}"})


async def overlay_revoke(request: Request) -> Response:
    """Revoke every overlay token of the caller: connected widgets are closed (4003)."""
    ctx = ctx_of(request)
    me = principal_of(request)
    await _own_room(request, me.user_id)
    version = int(await ctx.redis.incr(keys.overlay_version(me.user_id)))
    await ctx.redis.publish(keys.CONTROL_CHANNEL, f"overlay_revoked:{me.user_id}")
    return JSONResponse({"version": version})
