"""Creator identity and payout accounts: validation and masking. Pure, no I/O."""

from __future__ import annotations

import re

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
PHONE = re.compile(r"^1\d{10}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")
WECHAT = re.compile(r"^[A-Za-z][-_A-Za-z0-9]{5,19}$")
METHOD_KINDS = ("bank_card", "alipay", "wechat")


class IdentityError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def valid_id_number(s: str) -> bool:
    """A PRC resident ID number: 17 digits + a GB 11643 check character (digit or X)."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    total = sum(int(c) * w for c, w in zip(s[:17], ID_WEIGHTS, strict=True))
    return s[17].upper() == ID_CHECK[total % 11]


def check_kyc(name: str, id_number: str) -> tuple[str, str]:
    name = name.strip()
    id_number = id_number.strip().upper()
    if not 1 <= len(name) <= 64:
        raise IdentityError("bad_name", "the real name is 1..64 characters")
    if not valid_id_number(id_number):
        raise IdentityError("bad_id_number", "not a valid ID number (18 characters, checksum)")
    return name, id_number


def check_account(kind: str, account: str) -> str:
    account = account.strip().replace(" ", "") if kind == "bank_card" else account.strip()
    if kind == "bank_card":
        if not (account.isdigit() and 12 <= len(account) <= 19):
            raise IdentityError("bad_account", "a bank card number is 12..19 digits")
    elif kind == "alipay":
        if not (PHONE.match(account) or EMAIL.match(account)):
            raise IdentityError("bad_account", "an Alipay account is a phone number or e-mail")
    elif kind == "wechat":
        if not (WECHAT.match(account) or PHONE.match(account)):
            raise IdentityError("bad_account", "a WeChat ID is 6..20 characters or a phone")
    else:
        raise IdentityError("bad_kind", f"kind must be one of {', '.join(METHOD_KINDS)}")
    return account


def mask_name(name: str) -> str:
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id_number(s: str) -> str:
    return s[:3] + "*" * (len(s) - 7) + s[-4:]


def mask_account(kind: str, account: str) -> str:
    if kind == "bank_card":
        return "**** " + account[-4:]
    if "@" in account:
        local, _, domain = account.partition("@")
        return local[:1] + "***@" + domain
    if PHONE.match(account):
        return account[:3] + "****" + account[-4:]
    return account[:2] + "***" + account[-2:]
