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
    # Staff roles (issue 5): finance reviews withdrawals and KYC, runs settlement and
    # reconciliation; ops changes the gift catalog and revenue rules; support only reads.
    FINANCE = "finance"
    OPS = "ops"
    SUPPORT = "support"
    # Not a user role: what an overlay token speaks as. Read-only, scoped to
    # one streamer (user_id is that streamer's id), revocable.
    OVERLAY = "overlay"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: int
    name: str
    role: Role
    overlay_version: int | None = None  # overlay tokens: valid while it is the current one


OVERLAY_TOKEN_TTL_S = 365 * 24 * 3600  # an OBS browser source keeps its URL; revoke to end it


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
        role = Role(claims["role"])
        version = int(claims["ver"]) if role is Role.OVERLAY else None
        return Principal(int(claims["sub"]), str(claims.get("name", "")), role, version)
    except (KeyError, ValueError, TypeError):
        raise AuthError("bad_token", "the token is not valid") from None


def issue_overlay_token(secret: str, streamer_id: int, streamer_name: str, version: int,
                        now_s: float | None = None) -> str:
    """A read-only token for one streamer's overlay widgets, valid until revoked
    (the streamer's overlay version moves on) or a year has passed."""
    now = int(now_s if now_s is not None else time.time())
    claims = {"iss": ISSUER, "sub": str(streamer_id), "name": streamer_name,
              "role": Role.OVERLAY.value, "ver": version, "iat": now,
              "exp": now + OVERLAY_TOKEN_TTL_S}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
