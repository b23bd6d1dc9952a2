"""Users and rooms in Postgres: register, log in, look up."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import asyncpg

from billing.db import Db
from server.auth import Principal, Role, hash_password, verify_password

USERNAME_RE = re.compile(r"^[a-z0-9_]{3,32}$")
PASSWORD_CHARS_MIN = 8
PASSWORD_CHARS_MAX = 128


class UserError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    streamer_id: int
    streamer_name: str
    title: str


def validate_registration(username: str, password: str, display_name: str) -> None:
    if not USERNAME_RE.match(username):
        raise UserError("bad_username", "username: 3-32 of a-z, 0-9, _")
    if not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise UserError("bad_password",
                        f"password: {PASSWORD_CHARS_MIN}-{PASSWORD_CHARS_MAX} characters")
    if not 1 <= len(display_name) <= 64:
        raise UserError("bad_display_name", "display name: 1-64 characters")


async def create_user(conn: Db, *, username: str, password: str,
                      display_name: str = "", role: Role = Role.VIEWER) -> Principal:
    display_name = display_name or username
    validate_registration(username, password, display_name)
    # argon2 takes ~100+ ms of CPU on purpose: off the event loop, or every
    # viewer of this process waits for it.
    pw_hash = await asyncio.to_thread(hash_password, password)
    async with conn.transaction():
        try:
            uid = await conn.fetchval(
                """INSERT INTO users (username, display_name, password_hash, role)
                   VALUES ($1, $2, $3, $4) RETURNING id""",
                username, display_name, pw_hash, role.value,
            )
        except asyncpg.UniqueViolationError:
            raise UserError("username_taken", "that username is taken") from None
        await conn.execute(
            """INSERT INTO accounts (code, kind, owner_id)
               VALUES ('wallet:' || $1::bigint, 'wallet', $1),
                      ('creator_pending:' || $1::bigint, 'creator_pending', $1)""",
            uid,
        )
    return Principal(uid, display_name, role)


async def authenticate(conn: Db | asyncpg.Pool, username: str,
                       password: str) -> Principal:
    row = await conn.fetchrow(
        "SELECT id, display_name, password_hash, role FROM users WHERE username = $1", username
    )
    if row is None or not await asyncio.to_thread(verify_password, row["password_hash"],
                                                  password):
        raise UserError("bad_credentials", "wrong username or password")
    return Principal(row["id"], row["display_name"], Role(row["role"]))


async def create_room(conn: Db, *, room_id: str, streamer_id: int,
                      title: str) -> None:
    await conn.execute(
        "INSERT INTO rooms (id, streamer_id, title) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        room_id, streamer_id, title,
    )


async def load_rooms(conn: Db | asyncpg.Pool) -> dict[str, Room]:
    rows = await conn.fetch(
        """SELECT r.id, r.streamer_id, u.display_name, r.title
             FROM rooms r JOIN users u ON u.id = r.streamer_id"""
    )
    return {r["id"]: Room(r["id"], r["streamer_id"], r["display_name"], r["title"]) for r in rows}
