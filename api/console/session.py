"""The console's session: a signed cookie that says who signed in, carries the CSRF token, and expires.

The cookie holds no API key: only the principal's name (checked against the configured keys on every
request, so removing a key or its `admin` scope ends its sessions), a random CSRF token and the expiry.
It is signed (itsdangerous, HMAC-SHA1 keyed by `CONSOLE_SESSION_SECRET`), so it cannot be forged or
altered, and it is HttpOnly, SameSite=Strict, limited to /console, and Secure when served over https.
A visitor who has not signed in gets an anonymous session too: the sign-in form's own CSRF token.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE = "order_saga_console"
COOKIE_PATH = "/console"
_SALT = "order-saga-console-session"


@dataclass(frozen=True)
class ConsoleSession:
    """`principal`: the signed-in API key's principal, None before sign-in; `expires_at`: Unix seconds."""

    csrf_token: str
    principal: str | None
    expires_at: float

    @property
    def signed_in(self) -> bool:
        return self.principal is not None


class SessionCodec:
    """Issues, signs, reads and clears console sessions of `lifetime_seconds`."""

    def __init__(self, secret: str, lifetime_seconds: float) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self._lifetime = lifetime_seconds

    def issue(self, principal: str | None = None) -> ConsoleSession:
        """A new session with a fresh CSRF token (a sign-in issues a new one: no session fixation)."""
        return ConsoleSession(secrets.token_urlsafe(32), principal, time.time() + self._lifetime)

    def read(self, cookie: str | None) -> ConsoleSession | None:
        """The session in `cookie`, or None if there is none, it was altered, or it has expired."""
        if not cookie:
            return None
        try:
            fields = self._serializer.loads(cookie, max_age=int(self._lifetime) + 1)
        except BadSignature:  # SignatureExpired is one too
            return None
        if not isinstance(fields, dict):
            return None
        csrf, principal, expires_at = fields.get("c"), fields.get("p"), fields.get("e")
        if (
            not isinstance(csrf, str)
            or not (principal is None or isinstance(principal, str))
            or not isinstance(expires_at, int | float)
            or expires_at <= time.time()
        ):
            return None
        return ConsoleSession(csrf, principal, expires_at)

    def store(self, response: Response, session: ConsoleSession, *, secure: bool) -> None:
        value = self._serializer.dumps(
            {"c": session.csrf_token, "p": session.principal, "e": session.expires_at}
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=max(int(session.expires_at - time.time()), 0),
            path=COOKIE_PATH,
            secure=secure,
            httponly=True,
            samesite="strict",
        )

    @staticmethod
    def clear(response: Response, *, secure: bool) -> None:
        response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=secure, httponly=True, samesite="strict")
