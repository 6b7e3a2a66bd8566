"""The console's vendored assets are the files they claim to be, and are served by the app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import api.console

pytestmark = pytest.mark.unit

STATIC = Path(api.console.__file__).parent / "static"
# htmx 2.0.11, dist/htmx.min.js of the npm package htmx.org (see static/README.md).
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


def test_vendored_htmx_is_the_pinned_release_with_its_license() -> None:
    assert hashlib.sha256((STATIC / "htmx.min.js").read_bytes()).hexdigest() == HTMX_SHA256
    assert "Zero-Clause BSD" in (STATIC / "htmx.LICENSE").read_text()
    assert "2.0.11" in (STATIC / "README.md").read_text()
    assert HTMX_SHA256 in (STATIC / "README.md").read_text()


def test_templates_and_styles_load_nothing_from_elsewhere() -> None:
    templates = Path(api.console.__file__).parent / "templates"
    for source in [*templates.glob("*.html"), STATIC / "console.css"]:
        text = source.read_text()
        for marker in ('src="http', "src='http", 'href="http', "url(http", "@import"):
            assert marker not in text, f"{source.name} loads {marker}"
