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

No merchant credentials live in the repository: the app id, seller id and
the path of Alipay's public key are settings. The query API (trade.query)
needs our private key and network access to Alipay; it is not implemented,
so the pending-order fallback cannot settle Alipay orders (they close on
expiry unless a notify arrives).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from billing.channels.base import Notice, Rejected, Reply, TradeStatus
from billing.orders import AmountError, parse_yuan

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


class AlipayChannel:
    name = "alipay"

    def __init__(self, *, app_id: str, seller_id: str, alipay_public_key_pem: bytes) -> None:
        key = load_pem_public_key(alipay_public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the Alipay public key must be an RSA key")
        self.app_id = app_id
        self.seller_id = seller_id
        self._key = key

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
        return None  # trade.query is not implemented (see the module docstring)
