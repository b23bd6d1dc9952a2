"""Alipay's OpenAPI gateway, played by a small server with self-generated keys.

It checks our request signatures (RSA2 with the merchant key) and answers
signed responses (with the "Alipay" key), as the real gateway does. Covers:
the signed app-pay order string, the query fallback settling a paid order,
a forged gateway answer crediting nothing, and a refund paid back.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing.channels.alipay import signing_string
from billing.orders import format_yuan
from server.auth import Role
from server.embedded import free_port
from tests import channel_keys as ck
from tests.integration.money_support import auth, balance, create_order, money_server
from tests.support import check_invariants, make_user


class FakeGateway:
    def __init__(self) -> None:
        self.trades: dict[str, dict[str, str]] = {}
        self.refunds: dict[str, str] = {}
        self.closed: list[str] = []
        self.signer = "alipay"
        self.calls: list[str] = []
        self.port = free_port()
        self.app = Starlette(routes=[Route("/gateway.do", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        params = dict(parse_qsl((await request.body()).decode()))
        sig = base64.b64decode(params["sign"])
        ck.provider_key("merchant").public_key().verify(  # raises if our signature is wrong
            sig, signing_string(params).encode(), padding.PKCS1v15(), hashes.SHA256())
        assert params["app_id"] == ck.ALIPAY_APP_ID and params["sign_type"] == "RSA2"
        method, biz = params["method"], json.loads(params["biz_content"])
        self.calls.append(method)
        if method == "alipay.trade.query":
            t = self.trades.get(biz["out_trade_no"])
            node: dict[str, Any] = ({"code": "40004", "msg": "Business Failed",
                                     "sub_code": "ACQ.TRADE_NOT_EXIST"} if t is None else
                                    {"code": "10000", "msg": "Success", **t})
        elif method == "alipay.trade.refund":
            self.refunds[biz["out_request_no"]] = biz["refund_amount"]
            node = {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                    "refund_fee": biz["refund_amount"], "fund_change": "Y"}
        elif method == "alipay.trade.close":
            self.closed.append(biz["out_trade_no"])
            node = {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"]}
        else:
            node = {"code": "40004", "msg": "unknown method"}
        raw = json.dumps(node, ensure_ascii=False)
        sign = base64.b64encode(ck.provider_key(self.signer).sign(
            raw.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
        node_name = method.replace(".", "_") + "_response"
        body = '{"' + node_name + '": ' + raw + ',"sign":"' + sign + '"}'
        return Response(body, media_type="application/json; charset=utf-8")


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    server = uvicorn.Server(uvicorn.Config(gw.app, host="127.0.0.1", port=gw.port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield gw
    server.should_exit = True
    await task


async def test_alipay_app_pay_query_fallback_and_refund(gateway: FakeGateway, redis_url: str,
                                                        database_url: str, pool: Any,
                                                        redis: Any, tmp_path: Any) -> None:
    (tmp_path / "alipay.pem").write_bytes(ck.public_pem("alipay"))
    (tmp_path / "merchant.pem").write_bytes(ck.provider_key("merchant").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    srv = money_server(redis_url, database_url, alipay_app_id=ck.ALIPAY_APP_ID,
                       alipay_public_key_path=str(tmp_path / "alipay.pem"),
                       alipay_private_key_path=str(tmp_path / "merchant.pem"),
                       alipay_gateway_url=f"http://127.0.0.1:{gateway.port}/gateway.do",
                       order_query_after_s=0)
    await srv.start()
    try:
        b = srv._app.state.billing
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis)
            admin = await make_user(pool, redis, role=Role.ADMIN)
            r = await create_order(http, u, key="a", channel="alipay", pack_yuan=30)
            o = r.json()["order"]
            # The app-pay order string is signed with our merchant key, as the SDK expects.
            params = dict(parse_qsl(o["pay"]["order_string"]))
            assert params["method"] == "alipay.trade.app.pay"
            assert json.loads(params["biz_content"])["total_amount"] == "30.00"
            ck.provider_key("merchant").public_key().verify(
                base64.b64decode(params["sign"]), signing_string(params).encode(),
                padding.PKCS1v15(), hashes.SHA256())
            # Not paid yet: the sweep asks, nothing moves.
            assert (await b.sweep_pending())["credited"] == 0
            # Paid at Alipay, notify lost: the query fallback settles it.
            gateway.trades[o["id"]] = {"out_trade_no": o["id"], "trade_no": "2026112522001",
                                       "total_amount": format_yuan(3000),
                                       "trade_status": "TRADE_SUCCESS"}
            assert (await b.sweep_pending())["credited"] == 1
            assert await balance(http, u) == 330
            # A second order answered by a forged gateway (wrong key): nothing credited.
            o2 = (await create_order(http, u, key="b", channel="alipay",
                                     pack_yuan=6)).json()["order"]
            gateway.trades[o2["id"]] = {"out_trade_no": o2["id"], "trade_no": "2026112522002",
                                        "total_amount": "6.00", "trade_status": "TRADE_SUCCESS"}
            gateway.signer = "mallory"
            assert (await b.sweep_pending())["credited"] == 0
            assert await balance(http, u) == 330
            gateway.signer = "alipay"
            # A wrong amount from the real gateway is refused too.
            gateway.trades[o2["id"]]["total_amount"] = "0.06"
            assert (await b.sweep_pending())["credited"] == 0
            # Refund: coins taken back, the money paid back through the gateway.
            r = await http.post("/api/admin/refunds",
                                headers={**auth(admin), "idempotency-key": "f"},
                                content=orjson.dumps({"order_id": o["id"], "reason": "asked"}))
            assert r.status_code == 201 and r.json()["refund"]["channel_refunded"] is True
            assert gateway.refunds == {r.json()["refund"]["id"]: "30.00"}
            assert await balance(http, u) == 0
            # Expiry: the trade is closed at Alipay, then the order here.
            o3 = (await create_order(http, u, key="c", channel="alipay",
                                     pack_yuan=6)).json()["order"]
            await pool.execute("UPDATE recharge_orders SET expires_at = now() - interval '1 s' "
                               "WHERE id = $1", o3["id"])
            assert (await b.sweep_pending())["closed"] >= 1
            assert o3["id"] in gateway.closed
            assert (await pool.fetchval("SELECT status FROM recharge_orders WHERE id = $1",
                                        o3["id"])) == "CLOSED"
            await check_invariants(redis, pool)
    finally:
        await srv.stop()
