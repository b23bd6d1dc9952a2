"""Passwords (argon2) and signed, expiring tokens (JWT, HS256). Pure: no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
ALGORITHM = "HS256"
ISSUER = "giftd"


class Role(StrEnum):
    VIEWER = "viewer"
    STREAMER = "streamer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: int
    name: str
    role: Role


class AuthError(Exception):
    """A token was missing, malformed, forged or expired. `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def issue_token(secret: str, principal: Principal, ttl_s: int, now_s: float | None = None) -> str:
    now = int(now_s if now_s is not None else time.time())
    claims = {
        "iss": ISSUER,
        "sub": str(principal.user_id),
        "name": principal.name,
        "role": principal.role.value,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    if not token:
        raise AuthError("auth_required", "a token is required")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "sub", "iss"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token_expired", "the token has expired") from None
    except jwt.PyJWTError:
        raise AuthError("bad_token", "the token is not valid") from None
    try:
        return Principal(int(claims["sub"]), str(claims.get("name", "")), Role(claims["role"]))
    except (KeyError, ValueError):
        raise AuthError("bad_token", "the token is not valid") from None
