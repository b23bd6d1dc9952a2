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

Credentials (mchid, appid, APIv3 key, platform public key) are settings.
The query API needs our merchant private key and network access; it is not
implemented, so WeChat Pay orders are settled by notify only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from billing.channels.base import Notice, Rejected, Reply, TradeStatus

TIMESTAMP_SKEW_S = 300  # WeChat Pay's recommendation: refuse notifies older/newer than 5 min
CLOSED_STATES = frozenset({"CLOSED", "REVOKED", "PAYERROR"})


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def _header(headers: Mapping[str, str], name: str) -> str:
    return headers.get(name) or headers.get(name.lower()) or ""


class WechatPayChannel:
    name = "wechatpay"

    def __init__(self, *, mchid: str, appid: str, apiv3_key: bytes,
                 platform_keys: Mapping[str, bytes]) -> None:
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

    async def query(self, order_id: str) -> Notice | None:
        return None  # the query API is not implemented (see the module docstring)
