"""The console's session cookie: signed, expiring, with the flags a browser needs to keep it to us."""

from __future__ import annotations

import time

import pytest
from starlette.responses import Response

from api.console.routes.auth import _safe_next
from api.console.session import COOKIE, SessionCodec

pytestmark = pytest.mark.unit

SECRET = "s" * 40


def stored(codec: SessionCodec, principal: str | None, *, secure: bool = False) -> tuple[str, str]:
    response = Response()
    codec.store(response, codec.issue(principal), secure=secure)
    header = response.headers["set-cookie"]
    value = header.split(";", 1)[0].removeprefix(f"{COOKIE}=")
    return value, header.lower()


def test_a_session_reads_back_and_each_issue_has_a_new_csrf_token() -> None:
    codec = SessionCodec(SECRET, 60)
    value, _ = stored(codec, "ops")
    session = codec.read(value)
    assert session is not None and session.principal == "ops" and session.signed_in
    assert codec.issue("ops").csrf_token != codec.issue("ops").csrf_token
    assert codec.read(stored(codec, None)[0]) is not None


def test_an_altered_foreign_or_missing_cookie_is_no_session() -> None:
    codec = SessionCodec(SECRET, 60)
    value, _ = stored(codec, "ops")
    assert codec.read(value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]) is None
    assert codec.read(stored(SessionCodec("t" * 40, 60), "ops")[0]) is None
    assert codec.read("") is None and codec.read(None) is None and codec.read("garbage") is None


def test_an_expired_session_is_no_session() -> None:
    codec = SessionCodec(SECRET, 0.5)
    value, _ = stored(codec, "ops")
    time.sleep(0.6)
    assert codec.read(value) is None


def test_the_cookie_is_http_only_strict_limited_to_the_console_and_secure_over_https() -> None:
    _, plain = stored(SessionCodec(SECRET, 3_600), "ops")
    assert "httponly" in plain and "samesite=strict" in plain and "path=/console" in plain
    assert "max-age=3599" in plain or "max-age=3600" in plain
    assert "secure" not in plain
    _, secure = stored(SessionCodec(SECRET, 3_600), "ops", secure=True)
    assert "; secure" in secure


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/console/orders/1?x=2", "/console/orders/1?x=2"),
        ("//evil.example/console/", "/console/orders"),
        ("https://evil.example/console/", "/console/orders"),
        ("/console/\\evil", "/console/orders"),
        ("/docs", "/console/orders"),
        (None, "/console/orders"),
    ],
)
def test_after_sign_in_only_console_paths_are_followed(target: str | None, expected: str) -> None:
    assert _safe_next(target) == expected
