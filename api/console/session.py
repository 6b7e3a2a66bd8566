"""The console's session: stored in the database, named by a random token in a cookie, revocable.

Signing in opens a session row (`infra.models.ConsoleSessionRecord`: the principal, a random CSRF token,
when it expires) and gives the browser a cookie holding a random 256-bit token; the row is keyed by the
token's SHA-256, so the table alone signs nobody in. Every request looks the session up, so signing out
(which revokes the row) ends it at once, expiry is enforced by the server, and every API replica shares
the sessions: no signing secret is needed. The cookie holds no API key; the principal is checked against
the configured keys on every request, so removing a key or its `admin` scope ends its sessions too. It
is HttpOnly, SameSite=Strict, limited to /console, and Secure when served over https.

Before signing in a visitor holds no session row, only the sign-in form's CSRF token in a cookie of its
own (double submit: the form must send back what the cookie holds), so anonymous visits write nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from infra.models import ConsoleSessionRecord, utcnow

COOKIE = "order_saga_console"
SIGN_IN_COOKIE = "order_saga_console_sign_in"
COOKIE_PATH = "/console"
_SIGN_IN_SECONDS = 3600  # the sign-in form's token


@dataclass(frozen=True)
class ConsoleSession:
    """`principal`: the signed-in API key's principal, None before sign-in (`token`/`expires_at` None too).

    `token`: the cookie's value (never stored); `expires_at`: UTC.
    """

    csrf_token: str
    principal: str | None = None
    token: str | None = None
    expires_at: datetime | None = None

    @property
    def signed_in(self) -> bool:
        return self.principal is not None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Opens, reads, revokes and sets the cookies of console sessions of `lifetime`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], lifetime: timedelta) -> None:
        self._sessions = sessions
        self._lifetime = lifetime

    async def open(self, principal: str) -> ConsoleSession:
        """A new signed-in session with a fresh token and CSRF token (no session fixation)."""
        token, now = secrets.token_urlsafe(32), utcnow()
        record = ConsoleSessionRecord(
            id=_digest(token),
            principal=principal,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self._lifetime,
        )
        async with self._sessions.begin() as db:
            db.add(record)
        return ConsoleSession(record.csrf_token, principal, token, record.expires_at)

    async def read(self, request: Request) -> ConsoleSession | None:
        """The signed-in session (not revoked, not expired), else the sign-in form's token, else None."""
        token = request.cookies.get(COOKIE)
        if token and len(token) <= 100:
            async with self._sessions() as db:
                record = await db.scalar(
                    select(ConsoleSessionRecord).where(
                        ConsoleSessionRecord.id == _digest(token),
                        ConsoleSessionRecord.revoked_at.is_(None),
                        ConsoleSessionRecord.expires_at > utcnow(),
                    )
                )
            if record is not None:
                return ConsoleSession(record.csrf_token, record.principal, token, record.expires_at)
        anonymous = request.cookies.get(SIGN_IN_COOKIE)
        return ConsoleSession(anonymous) if anonymous and 20 <= len(anonymous) <= 100 else None

    async def revoke(self, session: ConsoleSession) -> None:
        """End `session` now, on every replica (its cookie is refused from then on)."""
        if session.token is None:
            return
        async with self._sessions.begin() as db:
            await db.execute(
                update(ConsoleSessionRecord)
                .where(ConsoleSessionRecord.id == _digest(session.token))
                .values(revoked_at=utcnow())
            )

    @staticmethod
    def anonymous() -> ConsoleSession:
        """A sign-in form's session: only a fresh CSRF token."""
        return ConsoleSession(secrets.token_urlsafe(32))

    @staticmethod
    def store(response: Response, session: ConsoleSession, *, secure: bool) -> None:
        """Set the cookie that carries `session` (a signed-in one replaces the sign-in form's token)."""
        if session.token is None:
            _set(response, SIGN_IN_COOKIE, session.csrf_token, _SIGN_IN_SECONDS, secure)
            return
        assert session.expires_at is not None
        _set(response, COOKIE, session.token, int((session.expires_at - utcnow()).total_seconds()), secure)
        response.delete_cookie(
            SIGN_IN_COOKIE, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict"
        )

    @staticmethod
    def clear(response: Response, *, secure: bool) -> None:
        for name in (COOKIE, SIGN_IN_COOKIE):
            response.delete_cookie(name, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict")


def _set(response: Response, name: str, value: str, max_age: int, secure: bool) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max(max_age, 0),
        path=COOKIE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
    )
