"""The operator console: server-rendered pages at /console, served by the API (`install_console`).

Jinja2 templates (`templates/`) and htmx (`static/htmx.min.js`, vendored: see `static/README.md`) for the
parts that refresh or act in place; no build step, and every asset is served by the app itself.

Sign-in is with an API key that has the `admin` scope; the session is a database row named by a random
token in a cookie, revoked at sign-out (`session.py`).
Every state-changing request is checked for the session's CSRF token and audited with the principal
(`deps.py`).

Adding a page (say the dead letters):

1. A router module in `routes/` (`routes/dead_letters.py`)::

       router = APIRouter(prefix="/console/dead-letters", include_in_schema=False)

       @router.get("")
       async def dead_letters(view: Page, resources: ResourcesDep) -> Response:
           letters = ...  # the same code the CLI and the HTTP API use; no query of its own
           return view.render("dead_letters.html", letters=letters)

       @router.post("/redrive")
       async def redrive(action: Action, ...) -> Response:  # session, admin scope and CSRF checked
           ...
           action.audit("redrive", reactor=name, count=len(done))
           return action.render("_redrive_outcome.html", ...)

   `Page` (GET) redirects to the sign-in form when the operator is not signed in; `Action` (POST)
   answers 401/403 without a session, without the scope or without the CSRF token. Both `render`
   with `operator`, `csrf_token`, `nav` and `current_path` set for the templates. A page or action
   whose REST counterpart needs more than `admin` uses the dependency with that scope
   (`OrdersPage`/`OrdersAction`, from `api.security.Needs`). Invalid query or path parameters (declare
   them with the REST route's constraints) and `RequestValidationError` raised by the route are shown
   as a console page (422); a fragment polled by htmx is its page's path plus `/live` (sign-in then
   returns to the page).
2. A template that extends the layout: `{% extends "base.html" %}` and `{% block content %}...`.
   Plain forms that POST carry `<input type="hidden" name="csrf_token" value="{{ csrf_token }}">`;
   htmx requests (`hx-post`...) send the token as a header already (set on `<body>`). A fragment that
   htmx swaps in is a template of its own (named `_something.html` here) without `extends`.
3. Register it in `app.py`: the router in `ROUTERS` and, for the navigation bar, a `NavItem` in `NAV`.
4. Tests: `tests/unit/test_console_*.py` (pure parts); over HTTP in-process, `tests/e2e/console_client.py`
   (`sign_in`, `csrf_of`) with the `api`/`api_factory` fixtures, as `tests/e2e/test_console_http.py`
   does; in Chromium, `tests/browser/conftest.py` (`stack`: the real processes, `shop`: its HTTP API,
   `page`, `sign_in`), marker `browser`.
"""

from api.console.app import install_console

__all__ = ["install_console"]
