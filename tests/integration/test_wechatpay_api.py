"""WeChat Pay's v3 API, played by a small server with self-generated keys.

It checks our `Authorization: WECHATPAY2-SHA256-RSA2048` signatures (merchant
key) and signs its answers with the platform key. Covers Native prepay
(`code_url`), the query fallback, a forged answer crediting nothing, refunds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

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

from billing.channels.wechatpay import signed_message
from server.auth import Role
from server.embedded import free_port
from tests import channel_keys as ck
from tests.integration.money_support import auth, balance, create_order, money_server
from tests.support import check_invariants, make_user

MERCHANT_SERIAL = "MERCHANT0001"


class FakeWechat:
    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, int] = {}
        self.closed: list[str] = []
        self.signer = "wechat"
        self.port = free_port()
        self.app = Starlette(routes=[
            Route("/v3/pay/transactions/native", self.native, methods=["POST"]),
            Route("/v3/pay/transactions/out-trade-no/{oid}", self.query, methods=["GET"]),
            Route("/v3/refund/domestic/refunds", self.refund, methods=["POST"]),
            Route("/v3/pay/transactions/out-trade-no/{oid}/close", self.close,
                  methods=["POST"]),
        ])

    async def _check(self, request: Request) -> bytes:
        body = await request.body()
        m = dict(re.findall(r'(\w+)="([^"]*)"', request.headers["authorization"]))
        assert request.headers["authorization"].startswith("WECHATPAY2-SHA256-RSA2048 ")
        assert m["mchid"] == ck.WX_MCHID and m["serial_no"] == MERCHANT_SERIAL
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        msg = f"{request.method}\n{path}\n{m['timestamp']}\n{m['nonce_str']}\n".encode() \
            + body + b"\n"
        ck.provider_key("merchant").public_key().verify(
            base64.b64decode(m["signature"]), msg, padding.PKCS1v15(), hashes.SHA256())
        return body

    def _answer(self, status: int, data: dict[str, Any]) -> Response:
        body = orjson.dumps(data)
        ts, nonce = str(int(time.time())), os.urandom(8).hex()
        sig = ck.provider_key(self.signer).sign(signed_message(ts, nonce, body),
                                                padding.PKCS1v15(), hashes.SHA256())
        return Response(body, status, media_type="application/json", headers={
            "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": ck.WX_SERIAL,
            "Wechatpay-Signature": base64.b64encode(sig).decode()})

    async def native(self, request: Request) -> Response:
        req = orjson.loads(await self._check(request))
        assert req["mchid"] == ck.WX_MCHID and req["notify_url"].endswith("/notify/wechatpay")
        return self._answer(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={req['out_trade_no']}"})

    async def query(self, request: Request) -> Response:
        await self._check(request)
        t = self.trades.get(request.path_params["oid"])
        if t is None:
            return self._answer(404, {"code": "ORDER_NOT_EXIST", "message": "not found"})
        return self._answer(200, t)

    async def close(self, request: Request) -> Response:
        await self._check(request)
        self.closed.append(request.path_params["oid"])
        return self._answer(204, {})

    async def refund(self, request: Request) -> Response:
        req = orjson.loads(await self._check(request))
        assert req["amount"]["total"] == self.trades[req["out_trade_no"]]["amount"]["total"]
        self.refunds[req["out_refund_no"]] = req["amount"]["refund"]
        return self._answer(200, {"status": "PROCESSING", "out_refund_no": req["out_refund_no"]})


@pytest.fixture
async def wx() -> AsyncIterator[FakeWechat]:
    fake = FakeWechat()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=fake.port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield fake
    server.should_exit = True
    await task


async def test_wechatpay_prepay_query_fallback_and_refund(wx: FakeWechat, redis_url: str,
                                                          database_url: str, pool: Any,
                                                          redis: Any, tmp_path: Any) -> None:
    (tmp_path / "wx.pem").write_bytes(ck.public_pem("wechat"))
    (tmp_path / "merchant.pem").write_bytes(ck.provider_key("merchant").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    srv = money_server(redis_url, database_url, wechatpay_mchid=ck.WX_MCHID,
                       wechatpay_appid=ck.WX_APPID, wechatpay_apiv3_key=ck.WX_APIV3.decode(),
                       wechatpay_platform_key_path=str(tmp_path / "wx.pem"),
                       wechatpay_platform_serial=ck.WX_SERIAL,
                       wechatpay_merchant_key_path=str(tmp_path / "merchant.pem"),
                       wechatpay_merchant_serial=MERCHANT_SERIAL,
                       wechatpay_api_base=f"http://127.0.0.1:{wx.port}", order_query_after_s=0)
    await srv.start()
    try:
        b = srv._app.state.billing
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            u = await make_user(pool, redis)
            admin = await make_user(pool, redis, role=Role.ADMIN)
            o = (await create_order(http, u, key="a", channel="wechatpay",
                                    pack_yuan=98)).json()["order"]
            assert o["pay"]["code_url"].endswith(o["id"])
            assert (await b.sweep_pending())["credited"] == 0  # unknown to WeChat yet

            def trade(oid: str, total: int, state: str = "SUCCESS") -> dict[str, Any]:
                return {"appid": ck.WX_APPID, "mchid": ck.WX_MCHID, "out_trade_no": oid,
                        "transaction_id": "42000" + oid[-8:], "trade_state": state,
                        "amount": {"total": total, "currency": "CNY"}}
            wx.trades[o["id"]] = trade(o["id"], 9800, "NOTPAY")
            assert (await b.sweep_pending())["credited"] == 0
            wx.trades[o["id"]] = trade(o["id"], 9800)
            assert (await b.sweep_pending())["credited"] == 1
            assert await balance(http, u) == 980 + 98
            o2 = (await create_order(http, u, key="b", channel="wechatpay",
                                     pack_yuan=6)).json()["order"]
            wx.trades[o2["id"]] = trade(o2["id"], 600)
            wx.signer = "mallory"  # a forged answer
            assert (await b.sweep_pending())["credited"] == 0
            wx.signer = "wechat"
            wx.trades[o2["id"]] = trade(o2["id"], 60)  # a wrong amount
            assert (await b.sweep_pending())["credited"] == 0
            assert await balance(http, u) == 1078
            r = await http.post("/api/admin/refunds",
                                headers={**auth(admin), "idempotency-key": "f"},
                                content=orjson.dumps({"order_id": o["id"], "amount_fen": 4900,
                                                      "reason": "half"}))
            assert r.status_code == 201 and r.json()["refund"]["channel_refunded"] is True
            assert wx.refunds == {r.json()["refund"]["id"]: 4900}
            assert await balance(http, u) == 1078 - 490 - 49
            o3 = (await create_order(http, u, key="c", channel="wechatpay",
                                     pack_yuan=6)).json()["order"]
            await pool.execute("UPDATE recharge_orders SET expires_at = now() - interval '1 s' "
                               "WHERE id = $1", o3["id"])
            assert (await b.sweep_pending())["closed"] >= 1 and o3["id"] in wx.closed
            await check_invariants(redis, pool)
    finally:
        await srv.stop()
