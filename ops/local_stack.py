"""`make run`: check the broker, migrate, print where everything is, then hand over to honcho.

honcho (Procfile) runs each component with prefixed logs and stops them all on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from infra.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BROKER_START_WAIT_SECONDS = 90


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def ensure_broker(settings: Settings) -> None:
    """Start an installed but stopped local RabbitMQ; otherwise explain how to get one."""
    url = urlsplit(settings.rabbitmq_url)
    host, port = url.hostname or "127.0.0.1", url.port or 5672
    if _reachable(host, port):
        return
    server = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin")
    if host not in ("127.0.0.1", "localhost", "::1") or server is None:
        sys.exit(
            f"RabbitMQ is not reachable at {host}:{port}.\n"
            "Install it (Debian/Ubuntu: `sudo apt-get install rabbitmq-server`), start one with\n"
            "`docker run -d -p 5672:5672 -p 15672:15672 rabbitmq:4.1-management`,\n"
            "or point RABBITMQ_URL at a running broker."
        )
    print(f"RabbitMQ is installed but not running: starting it ({server} -detached)", flush=True)
    subprocess.run([server, "-detached"], check=True)
    deadline = time.monotonic() + BROKER_START_WAIT_SECONDS
    while not _reachable(host, port):
        if time.monotonic() > deadline:
            sys.exit(f"RabbitMQ did not come up on {host}:{port} within {BROKER_START_WAIT_SECONDS}s")
        time.sleep(1)


def prepare_var() -> None:
    """`var/` holds the Temporal dev server's state (`var/temporal.db`) whatever the database, the
    SQLite orders database by default, and the mail sink's Maildir: a fresh clone has none of it."""
    (ROOT / "var").mkdir(exist_ok=True)


def migrate(settings: Settings) -> None:
    """Bring the database to the latest schema; exit with one line saying what to do when the database
    does not exist or its server cannot be reached (not a traceback)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = settings.database_url
    try:
        command.upgrade(config, "head")
    except (DBAPIError, OSError) as err:
        sys.exit(database_unusable(settings.database_url, err))


def database_unusable(database_url: str, err: BaseException) -> str:
    """What went wrong with the database at `database_url` (shown without its password), and the fix."""
    url = make_url(database_url)
    shown = url.render_as_string(hide_password=True)
    reason = str(getattr(err, "orig", None) or err) or type(err).__name__
    if isinstance(err, DBAPIError) and "does not exist" in reason and url.database:
        where = f"-h {url.host or '127.0.0.1'} -p {url.port or 5432}" + (
            f" -U {url.username}" if url.username else ""
        )
        return (
            f"The database {url.database!r} does not exist ({shown}): create it with "
            f"`createdb {where} {url.database}`, or point DATABASE_URL at an existing one."
        )
    if isinstance(err, DBAPIError):
        return f"The database refused the connection ({shown}): {reason}. Check DATABASE_URL."
    return (
        f"The database server is not reachable ({shown}): {reason}. Start PostgreSQL, "
        "or point DATABASE_URL at a running server."
    )


def banner(settings: Settings) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    broker = urlsplit(settings.rabbitmq_url)
    lines = [
        "",
        "Order saga: local stack",
        f"  API              {api}   (OpenAPI docs: {api}/docs)",
        f"  Operator console {api}/console   (sign in with an API key that has the admin scope)",
        f"  Temporal Web UI  {settings.temporal_ui_url}",
        f"  Database         {settings.database_url}",
        f"  RabbitMQ         {broker.hostname}:{broker.port or 5672}",
        f"  Mail sink        {settings.smtp_host}:{settings.smtp_port} -> {settings.smtp_sink_maildir}",
    ]
    if any(key.get_secret_value() == Settings.DEVELOPMENT_API_KEY for key in settings.api_keys.values()):
        lines.append(f"  Development key  Authorization: Bearer {Settings.DEVELOPMENT_API_KEY}")
    lines += ["  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def procfile_env(settings: Settings) -> str:
    """The Procfile's own variables, from the settings: the dev server's ports follow TEMPORAL_ADDRESS and
    TEMPORAL_UI_URL, so a second stack on other ports needs only those two (and API_PORT)."""
    frontend = urlsplit(f"//{settings.temporal_address}").port or 7233
    ui = urlsplit(settings.temporal_ui_url).port or 8233
    return f"TEMPORAL_PORT={frontend}\nTEMPORAL_UI_PORT={ui}\n"


def main() -> None:
    settings = load_settings()
    ensure_broker(settings)
    prepare_var()
    migrate(settings)
    print(banner(settings), flush=True)
    env_file = ROOT / "var" / "procfile.env"
    env_file.write_text(procfile_env(settings))
    honcho = Path(sys.executable).with_name("honcho")
    os.chdir(ROOT)
    os.execv(honcho, [str(honcho), "start", "-f", "Procfile", "-e", str(env_file)])


if __name__ == "__main__":
    main()
