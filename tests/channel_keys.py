"""Self-generated keys and correctly signed notifies for the alipay and wechatpay channels.

These play the payment providers' side in tests: they sign exactly as the
providers document, so our verification is tested against the real formats.
"""

from __future__ import annotations

import base64
import functools
import os
import time
from typing import Any
from urllib.parse import quote_plus

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billing.channels.alipay import AlipayChannel, signing_string
from billing.channels.wechatpay import WechatPayChannel, signed_message

ALIPAY_APP_ID = "2021000000000001"
ALIPAY_SELLER = "2088000000000001"
WX_MCHID = "1900000001"
WX_APPID = "wx0000000000000001"
WX_APIV3 = b"0123456789abcdef0123456789abcdef"
WX_SERIAL = "5157F09EFDC096DE15EBE81A47057A72"


@functools.cache
def provider_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(name: str) -> bytes:
    return provider_key(name).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def alipay_channel() -> AlipayChannel:
    return AlipayChannel(app_id=ALIPAY_APP_ID, seller_id=ALIPAY_SELLER,
                         alipay_public_key_pem=public_pem("alipay"))


def wechat_channel() -> WechatPayChannel:
    return WechatPayChannel(mchid=WX_MCHID, appid=WX_APPID, apiv3_key=WX_APIV3,
                            platform_keys={WX_SERIAL: public_pem("wechat")})


def alipay_params(order_id: str, total: str, **over: str) -> dict[str, str]:
    p = {"notify_time": "2026-11-25 10:00:00", "notify_type": "trade_status_sync",
         "notify_id": "ac05099524730693a8b330c5ecf72da9786", "charset": "utf-8",
         "version": "1.0", "sign_type": "RSA2", "app_id": ALIPAY_APP_ID,
         "seller_id": ALIPAY_SELLER, "trade_no": "2026112522001400000000000001",
         "out_trade_no": order_id, "total_amount": total, "trade_status": "TRADE_SUCCESS",
         "subject": "金币充值", "buyer_id": "2088102122524333",
         "gmt_payment": "2026-11-25 09:59:59"}
    p.update(over)
    return p


def alipay_body(params: dict[str, str], *, key: str = "alipay", charset: str = "utf-8",
                sign_over: dict[str, str] | None = None) -> bytes:
    """Sign `sign_over` (default: params) as Alipay does and form-encode `params`."""
    sig = provider_key(key).sign(signing_string(sign_over or params).encode("utf-8"),
                                 padding.PKCS1v15(), hashes.SHA256())
    full = {**params, "sign": base64.b64encode(sig).decode()}
    return "&".join(f"{k}={quote_plus(v, encoding=charset)}" for k, v in full.items()).encode()


def wechat_notify(order_id: str, total: int, *, key: str = "wechat", apiv3: bytes = WX_APIV3,
                  ts: int | None = None, serial: str = WX_SERIAL,
                  **tx_over: Any) -> tuple[bytes, dict[str, str]]:
    tx: dict[str, Any] = {"mchid": WX_MCHID, "appid": WX_APPID, "out_trade_no": order_id,
                          "transaction_id": "4200000000202611250000000001",
                          "trade_type": "NATIVE", "trade_state": "SUCCESS",
                          "success_time": "2026-11-25T10:00:00+08:00",
                          "amount": {"total": total, "payer_total": total, "currency": "CNY"}}
    tx.update(tx_over)
    nonce, ad = os.urandom(6).hex(), "transaction"
    ct = AESGCM(apiv3).encrypt(nonce.encode(), orjson.dumps(tx), ad.encode())
    body = orjson.dumps({
        "id": "EV-2018022511223320873", "create_time": "2026-11-25T10:00:00+08:00",
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": base64.b64encode(ct).decode(), "associated_data": ad,
                     "nonce": nonce}})
    t = str(int(time.time()) if ts is None else ts)
    hn = os.urandom(8).hex()
    sig = provider_key(key).sign(signed_message(t, hn, body), padding.PKCS1v15(),
                                 hashes.SHA256())
    return body, {"content-type": "application/json", "Wechatpay-Timestamp": t,
                  "Wechatpay-Nonce": hn, "Wechatpay-Signature": base64.b64encode(sig).decode(),
                  "Wechatpay-Serial": serial}
