"""Alipay's asynchronous notify, verified as Alipay documents it.

The notify is an `application/x-www-form-urlencoded` POST. To verify it:
drop `sign` and `sign_type`, drop empty values, sort the rest by key, join as
`k=v` with `&` (values URL-decoded, in the `charset` the notify names), and
check `sign` (base64) as an RSA SHA256withRSA (PKCS#1 v1.5) signature with
Alipay's public key. Only `sign_type=RSA2` is accepted. Then: `app_id` must
be ours, `seller_id` ours when configured, `total_amount` a yuan amount,
`trade_status` TRADE_SUCCESS or TRADE_FINISHED to count as paid
(WAIT_BUYER_PAY: not yet; TRADE_CLOSED: never). The answer is the plain
text `success` once processed (or already processed), anything else makes
Alipay retry.

With our merchant private key configured, the channel also speaks Alipay's
OpenAPI gateway: `pay_params` signs an `alipay.trade.app.pay` order string for
the mobile SDK (no network call), `query` calls `alipay.trade.query` (the
pending-order fallback) and `refund` calls `alipay.trade.refund`. Requests are
form posts signed RSA2 like notifies; a response is believed only when the
`sign` over the raw `<method>_response` JSON text verifies with Alipay's key.

No merchant credentials live in the repository: app id, seller id, the key
paths and the gateway URL are settings.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from billing.channels.base import Notice, Rejected, Reply, TradeStatus
from billing.orders import AmountError, format_yuan, parse_yuan

log = logging.getLogger("giftd.alipay")
GATEWAY_TIMEOUT_S = 10.0  # one OpenAPI call may take this long
_CN = ZoneInfo("Asia/Shanghai")  # Alipay timestamps are Beijing time

PAID = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk"}
FIELDS_MAX = 100  # a notify with more parameters than this is refused unparsed


def signing_string(params: Mapping[str, str]) -> str:
    """The string Alipay signs: sorted k=v pairs, sign/sign_type and empty values left out."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in ("sign", "sign_type") and params[k] != "")


def parse_form(body: bytes) -> dict[str, str]:
    """Form body -> params, decoded in the charset it names. ValueError on anything odd."""
    try:
        text = body.decode("ascii")  # a form body is percent-encoded ASCII
    except UnicodeDecodeError as exc:
        raise ValueError("not ascii") from exc
    raw = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                    encoding="latin-1", max_num_fields=FIELDS_MAX)
    charset = next((v for k, v in raw if k == "charset"), "utf-8").lower()
    if charset not in CHARSETS:
        raise ValueError(f"unknown charset {charset[:20]!r}")
    params = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                            encoding=CHARSETS[charset], errors="strict",
                            max_num_fields=FIELDS_MAX))
    if len(params) != len(raw):
        raise ValueError("a parameter appears twice")
    return params


def response_node(text: str, node: str) -> tuple[str, str] | None:
    """(raw JSON text of `node`, sign) from a gateway answer, exactly as Alipay signed it."""
    key = f'"{node}"'
    i = text.find(key)
    if i < 0:
        return None
    j = text.find(":", i + len(key))
    if j < 0:
        return None
    start = j + 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
        sign = json.loads(text).get("sign", "")
    except (ValueError, AttributeError):
        return None
    return text[start:end], sign if isinstance(sign, str) else ""


class AlipayChannel:
    name = "alipay"

    def __init__(self, *, app_id: str, seller_id: str, alipay_public_key_pem: bytes,
                 private_key_pem: bytes = b"", gateway_url: str = "",
                 notify_url: str = "") -> None:
        key = load_pem_public_key(alipay_public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the Alipay public key must be an RSA key")
        self.app_id = app_id
        self.seller_id = seller_id
        self._key = key
        self._private: rsa.RSAPrivateKey | None = None
        if private_key_pem:
            priv = load_pem_private_key(private_key_pem, password=None)
            if not isinstance(priv, rsa.RSAPrivateKey):
                raise ValueError("the merchant private key must be an RSA key")
            self._private = priv
        self.gateway_url = gateway_url
        self.notify_url = notify_url

    # --- requests to Alipay ---------------------------------------------------------
    def signed_params(self, method: str, biz: dict[str, Any],
                      now: datetime | None = None) -> dict[str, str]:
        """The common request parameters plus `sign`, as the gateway expects them."""
        if self._private is None:
            raise RuntimeError("alipay_private_key_path is not configured")
        params = {"app_id": self.app_id, "method": method, "format": "JSON",
                  "charset": "utf-8", "sign_type": "RSA2", "version": "1.0",
                  "timestamp": (now or datetime.now(_CN)).astimezone(_CN)
                  .strftime("%Y-%m-%d %H:%M:%S"),
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        if self.notify_url:
            params["notify_url"] = self.notify_url
        sig = self._private.sign(signing_string(params).encode("utf-8"), padding.PKCS1v15(),
                                 hashes.SHA256())
        params["sign"] = base64.b64encode(sig).decode()
        return params

    def pay_params(self, order_id: str, amount_fen: int, subject: str) -> dict[str, str] | None:
        """The signed order string the Alipay app SDK pays with (alipay.trade.app.pay)."""
        if self._private is None:
            return None
        from urllib.parse import urlencode

        params = self.signed_params("alipay.trade.app.pay", {
            "out_trade_no": order_id, "total_amount": format_yuan(amount_fen),
            "subject": subject, "product_code": "QUICK_MSECURITY_PAY"})
        return {"order_string": urlencode(params)}

    async def _call(self, method: str, biz: dict[str, Any]) -> dict[str, Any] | None:
        """One gateway call; the verified response node, or None (unreachable, forged, odd)."""
        if self._private is None or not self.gateway_url:
            return None
        try:
            async with httpx.AsyncClient(timeout=GATEWAY_TIMEOUT_S) as client:
                r = await client.post(self.gateway_url, data=self.signed_params(method, biz))
            text = r.text
        except httpx.HTTPError as exc:
            log.warning("alipay %s: %r", method, exc)
            return None
        found = response_node(text, method.replace(".", "_") + "_response")
        if found is None:
            log.warning("alipay %s: no response node", method)
            return None
        raw, sign = found
        try:
            self._key.verify(base64.b64decode(sign, validate=True), raw.encode("utf-8"),
                             padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            log.warning("alipay %s: the response signature does not verify", method)
            return None
        node = json.loads(raw)
        return node if isinstance(node, dict) else None

    def verify_notify(self, headers: Mapping[str, str], body: bytes,
                      now_s: float) -> Notice | Rejected:
        try:
            params = parse_form(body)
        except ValueError:
            return Rejected("malformed")
        order_id = params.get("out_trade_no") or None
        if params.get("sign_type") != "RSA2":
            return Rejected("bad_sign_type", order_id)
        try:
            sig = base64.b64decode(params.get("sign", ""), validate=True)
        except (binascii.Error, ValueError):
            return Rejected("bad_signature", order_id)
        try:
            self._key.verify(sig, signing_string(params).encode("utf-8"), padding.PKCS1v15(),
                             hashes.SHA256())
        except InvalidSignature:
            return Rejected("bad_signature", order_id)
        if params.get("app_id") != self.app_id:
            return Rejected("wrong_app_id", order_id)
        if self.seller_id and params.get("seller_id") != self.seller_id:
            return Rejected("wrong_seller_id", order_id)
        if not order_id or not params.get("trade_no"):
            return Rejected("malformed", order_id)
        try:
            amount = parse_yuan(params.get("total_amount", ""))
        except AmountError:
            return Rejected("bad_amount", order_id)
        raw = params.get("trade_status", "")
        status = (TradeStatus.PAID if raw in PAID else
                  TradeStatus.CLOSED if raw == "TRADE_CLOSED" else TradeStatus.NOT_PAID)
        return Notice(order_id, amount, params["trade_no"], status, raw)

    def reply(self, ok: bool) -> Reply:
        return Reply(200, b"success" if ok else b"fail", "text/plain")

    async def query(self, order_id: str) -> Notice | None:
        node = await self._call("alipay.trade.query", {"out_trade_no": order_id})
        if node is None or node.get("code") != "10000":
            return None  # unknown to Alipay (ACQ.TRADE_NOT_EXIST) or not answerable now
        if node.get("out_trade_no") != order_id or not node.get("trade_no"):
            return None
        try:
            amount = parse_yuan(str(node.get("total_amount", "")))
        except AmountError:
            return None
        raw = str(node.get("trade_status", ""))
        status = (TradeStatus.PAID if raw in PAID else
                  TradeStatus.CLOSED if raw == "TRADE_CLOSED" else TradeStatus.NOT_PAID)
        return Notice(order_id, amount, str(node["trade_no"]), status, raw)

    async def close(self, order_id: str) -> bool:
        """alipay.trade.close: an unpaid trade can no longer be paid."""
        node = await self._call("alipay.trade.close", {"out_trade_no": order_id})
        return bool(node is not None and node.get("code") == "10000")

    async def refund(self, order_id: str, out_refund_no: str, amount_fen: int,
                     total_fen: int = 0) -> bool:
        """Pay `amount_fen` of the order back (idempotent on out_refund_no at Alipay)."""
        node = await self._call("alipay.trade.refund", {
            "out_trade_no": order_id, "refund_amount": format_yuan(amount_fen),
            "out_request_no": out_refund_no})
        return bool(node is not None and node.get("code") == "10000"
                    and node.get("out_trade_no") == order_id)
