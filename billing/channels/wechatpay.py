"""WeChat Pay API v3 payment notify, verified as WeChat Pay documents it.

Headers: `Wechatpay-Timestamp`, `Wechatpay-Nonce`, `Wechatpay-Signature`
(base64), `Wechatpay-Serial` (which platform key signed). The signed message
is `timestamp\\nnonce\\nbody\\n`; the signature is RSA SHA256 (PKCS#1 v1.5)
with the platform public key of that serial. A timestamp more than
`TIMESTAMP_SKEW_S` away from now is refused (replayed captures). The body's
`resource` is AEAD_AES_256_GCM ciphertext under our APIv3 key (nonce and
associated_data given beside it); the plaintext is the transaction: `mchid`
and `appid` must be ours, `amount.total` is in fen, `trade_state` SUCCESS
means paid. The answer: 200 with no body means processed; a 4xx with
`{"code": "FAIL", ...}` makes WeChat Pay retry.

With our merchant private key (and its certificate serial) configured, the
channel also calls the v3 API: Native prepay (`code_url` for the QR code) when
an order is made, the order query (pending-order fallback) and domestic
refunds. Requests carry `Authorization: WECHATPAY2-SHA256-RSA2048 ...` over
`METHOD\nPATH\nts\nnonce\nbody\n`; answers are believed only when their
Wechatpay-* signature headers verify with the platform key, as notifies are.

Credentials (mchid, appid, APIv3 key, platform public key, merchant key) are
settings, never in the repository.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from billing.channels.base import Notice, Rejected, Reply, TradeStatus

log = logging.getLogger("giftd.wechatpay")
API_TIMEOUT_S = 10.0  # one v3 API call may take this long
TIMESTAMP_SKEW_S = 300  # WeChat Pay's recommendation: refuse notifies older/newer than 5 min
CLOSED_STATES = frozenset({"CLOSED", "REVOKED", "PAYERROR"})


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def _header(headers: Mapping[str, str], name: str) -> str:
    return headers.get(name) or headers.get(name.lower()) or ""


class WechatPayChannel:
    name = "wechatpay"

    def __init__(self, *, mchid: str, appid: str, apiv3_key: bytes,
                 platform_keys: Mapping[str, bytes], merchant_key_pem: bytes = b"",
                 merchant_serial: str = "", api_base: str = "", notify_url: str = "") -> None:
        self._merchant: rsa.RSAPrivateKey | None = None
        if merchant_key_pem:
            priv = load_pem_private_key(merchant_key_pem, password=None)
            if not isinstance(priv, rsa.RSAPrivateKey):
                raise ValueError("the merchant private key must be an RSA key")
            self._merchant = priv
        self.merchant_serial = merchant_serial
        self.api_base = api_base.rstrip("/")
        self.notify_url = notify_url
        if len(apiv3_key) != 32:
            raise ValueError("the APIv3 key must be 32 bytes")
        self.mchid = mchid
        self.appid = appid
        self._aead = AESGCM(apiv3_key)
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        for serial, pem in platform_keys.items():
            key = load_pem_public_key(pem)
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("platform keys must be RSA keys")
            self._keys[serial] = key

    def verify_notify(self, headers: Mapping[str, str], body: bytes,
                      now_s: float) -> Notice | Rejected:
        ts, nonce = _header(headers, "Wechatpay-Timestamp"), _header(headers, "Wechatpay-Nonce")
        sig_b64, serial = (_header(headers, "Wechatpay-Signature"),
                           _header(headers, "Wechatpay-Serial"))
        if not (ts and nonce and sig_b64 and serial):
            return Rejected("missing_signature")
        if not ts.isdigit() or len(ts) > 12:
            return Rejected("bad_timestamp")
        if abs(now_s - int(ts)) > TIMESTAMP_SKEW_S:
            return Rejected("stale_timestamp")
        key = self._keys.get(serial)
        if key is None:
            return Rejected("unknown_serial")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
            key.verify(sig, signed_message(ts, nonce, body), padding.PKCS1v15(), hashes.SHA256())
        except (binascii.Error, ValueError, InvalidSignature):
            return Rejected("bad_signature")
        try:
            envelope = orjson.loads(body)
            res = envelope["resource"]
            if res.get("algorithm") != "AEAD_AES_256_GCM":
                return Rejected("bad_algorithm")
            plain = self._aead.decrypt(str(res["nonce"]).encode(),
                                       base64.b64decode(res["ciphertext"], validate=True),
                                       str(res.get("associated_data", "")).encode())
            tx: dict[str, Any] = orjson.loads(plain)
        except InvalidTag:
            return Rejected("bad_ciphertext")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError,
                binascii.Error):
            return Rejected("malformed")
        if not isinstance(tx, dict):
            return Rejected("malformed")
        order_id = tx.get("out_trade_no") if isinstance(tx.get("out_trade_no"), str) else None
        if tx.get("mchid") != self.mchid:
            return Rejected("wrong_mchid", order_id)
        if tx.get("appid") != self.appid:
            return Rejected("wrong_appid", order_id)
        amount = tx.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        if type(total) is not int or total <= 0:
            return Rejected("bad_amount", order_id)
        if isinstance(amount, dict) and amount.get("currency", "CNY") != "CNY":
            return Rejected("bad_currency", order_id)
        trade_no = tx.get("transaction_id")
        if not order_id or not isinstance(trade_no, str) or not trade_no:
            return Rejected("malformed", order_id)
        raw = str(tx.get("trade_state", ""))
        status = (TradeStatus.PAID if raw == "SUCCESS" else
                  TradeStatus.CLOSED if raw in CLOSED_STATES else TradeStatus.NOT_PAID)
        return Notice(order_id, total, trade_no, status, raw)

    def reply(self, ok: bool) -> Reply:
        if ok:
            return Reply(200, b"", "application/json")
        return Reply(400, b'{"code":"FAIL","message":"not accepted"}', "application/json")

    # --- the v3 API -------------------------------------------------------------------
    def authorization(self, method: str, path: str, body: bytes, ts: str, nonce: str) -> str:
        assert self._merchant is not None
        msg = f"{method}\n{path}\n{ts}\n{nonce}\n".encode() + body + b"\n"
        sig = base64.b64encode(self._merchant.sign(msg, padding.PKCS1v15(),
                                                   hashes.SHA256())).decode()
        return (f'WECHATPAY2-SHA256-RSA2048 mchid="{self.mchid}",nonce_str="{nonce}",'
                f'signature="{sig}",timestamp="{ts}",serial_no="{self.merchant_serial}"')

    async def _call(self, method: str, path: str,
                    payload: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]] | None:
        """(status, verified JSON answer), or None (not configured, unreachable, forged)."""
        if self._merchant is None or not self.api_base:
            return None
        body = orjson.dumps(payload) if payload is not None else b""
        ts, nonce = str(int(time.time())), os.urandom(16).hex()
        headers = {"Authorization": self.authorization(method, path, body, ts, nonce),
                   "Accept": "application/json", "Content-Type": "application/json"}
        try:
            async with httpx.AsyncClient(timeout=API_TIMEOUT_S) as client:
                r = await client.request(method, self.api_base + path, content=body or None,
                                         headers=headers)
        except httpx.HTTPError as exc:
            log.warning("wechatpay %s %s: %r", method, path, exc)
            return None
        h = {k: v for k, v in r.headers.items()}
        rts, rnonce = _header(h, "Wechatpay-Timestamp"), _header(h, "Wechatpay-Nonce")
        key = self._keys.get(_header(h, "Wechatpay-Serial"))
        try:
            if key is None or not rts.isdigit() or abs(time.time() - int(rts)) > TIMESTAMP_SKEW_S:
                raise InvalidSignature
            key.verify(base64.b64decode(_header(h, "Wechatpay-Signature"), validate=True),
                       signed_message(rts, rnonce, r.content), padding.PKCS1v15(),
                       hashes.SHA256())
            data = orjson.loads(r.content) if r.content else {}
        except (InvalidSignature, binascii.Error, ValueError, orjson.JSONDecodeError):
            log.warning("wechatpay %s %s: the answer's signature does not verify", method, path)
            return None
        return r.status_code, data if isinstance(data, dict) else {}

    async def pay_params(self, order_id: str, amount_fen: int,
                         subject: str) -> dict[str, str] | None:
        """Native prepay: the `code_url` to show as a QR code."""
        got = await self._call("POST", "/v3/pay/transactions/native", {
            "appid": self.appid, "mchid": self.mchid, "description": subject,
            "out_trade_no": order_id, "notify_url": self.notify_url,
            "amount": {"total": amount_fen, "currency": "CNY"}})
        if got is None or got[0] != 200 or not isinstance(got[1].get("code_url"), str):
            return None
        return {"code_url": got[1]["code_url"]}

    async def query(self, order_id: str) -> Notice | None:
        got = await self._call("GET", f"/v3/pay/transactions/out-trade-no/{order_id}"
                                      f"?mchid={self.mchid}")
        if got is None or got[0] != 200:
            return None
        tx = got[1]
        amount = tx.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        trade_no = tx.get("transaction_id") or ""
        if (tx.get("mchid") != self.mchid or tx.get("out_trade_no") != order_id
                or type(total) is not int):
            return None
        raw = str(tx.get("trade_state", ""))
        status = (TradeStatus.PAID if raw == "SUCCESS" else
                  TradeStatus.CLOSED if raw in CLOSED_STATES else TradeStatus.NOT_PAID)
        if status is TradeStatus.PAID and not trade_no:
            return None
        return Notice(order_id, total, str(trade_no), status, raw)

    async def close(self, order_id: str) -> bool:
        """Close an unpaid order (answered 204) so it can no longer be paid."""
        got = await self._call("POST", f"/v3/pay/transactions/out-trade-no/{order_id}/close",
                               {"mchid": self.mchid})
        return bool(got is not None and got[0] in (200, 204))

    async def refund(self, order_id: str, out_refund_no: str, amount_fen: int,
                     total_fen: int = 0) -> bool:
        got = await self._call("POST", "/v3/refund/domestic/refunds", {
            "out_trade_no": order_id, "out_refund_no": out_refund_no,
            "amount": {"refund": amount_fen, "total": total_fen, "currency": "CNY"}})
        return bool(got is not None and got[0] == 200
                    and got[1].get("status") in ("SUCCESS", "PROCESSING"))
