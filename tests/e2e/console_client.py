"""Console helpers for HTTP tests: sign in as an API key's principal, read a page's CSRF token."""

from __future__ import annotations

import re
from http import HTTPStatus

import httpx

from tests.e2e.conftest import PRINCIPALS

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# An absolute URL in an attribute that loads something (scripts, styles, images, frames, forms, CSS url()).
LOADED_FROM_ELSEWHERE = re.compile(
    r'(?:src|action|hx-\w+)=["\'](?:https?:)?//|<link[^>]+href=["\'](?:https?:)?//|url\('
)


def csrf_of(page: str) -> str:
    """The CSRF token a console page carries (its forms' hidden field)."""
    match = CSRF.search(page)
    assert match is not None, page
    return match.group(1)


async def sign_in(http: httpx.AsyncClient, principal: str = "everything") -> httpx.Response:
    """Sign the client in as `principal` (of `PRINCIPALS`; "everything" has every scope, "ops" only
    `admin`): the session cookie stays in the client. Returns the sign-in's answer (303 to
    /console/orders when accepted)."""
    form = await http.get("/console/sign-in")
    assert form.status_code == HTTPStatus.OK
    return await http.post(
        "/console/sign-in",
        data={
            "api_key": PRINCIPALS[principal][0],
            "csrf_token": csrf_of(form.text),
            "next": "/console/orders",
        },
    )
