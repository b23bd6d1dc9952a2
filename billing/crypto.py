"""Personal data at rest: AES-256-GCM, one random 96-bit nonce per value.

Stored form: b"\\x01" (key version) + nonce (12 bytes) + ciphertext+tag. The
associated data binds a ciphertext to its place (e.g. `kyc:name:<uid>`), so a
value copied into another row or column does not decrypt. The key is
`data_key` (64 hex chars) or, when unset, derived from the server secret with
HMAC-SHA256 — then rotating the secret makes old values unreadable, so set
`GIFTD_DATA_KEY` in production.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
NONCE_BYTES = 12


def data_key(setting: str, secret: str) -> bytes:
    if setting:
        key = bytes.fromhex(setting)
        if len(key) != 32:
            raise ValueError("data_key must be 64 hex characters (32 bytes)")
        return key
    return hmac.new(secret.encode(), b"giftd-data-key-v1", hashlib.sha256).digest()


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, where: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), where.encode())

    def open(self, blob: bytes, where: str) -> str:
        if blob[:1] != VERSION:
            raise ValueError("unknown ciphertext version")
        nonce, ct = blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:]
        return self._aead.decrypt(nonce, ct, where.encode()).decode()
