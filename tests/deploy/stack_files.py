"""Reading the deployment files as compose and Docker read them (helpers of the tests/deploy checks)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
RENDER_SCRIPT = ROOT / "deploy" / "rabbitmq" / "render-definitions.sh"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
POSTGRES_INIT = ROOT / "deploy" / "postgres" / "initdb.sh"
GATEWAY_CONF = ROOT / "deploy" / "gateway" / "nginx.conf"
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "healthcheck.py"
# Where the Dockerfile puts deploy/healthcheck.py; compose healthchecks call it there.
HEALTHCHECK_IN_IMAGE = "/opt/orders/healthcheck.py"
ENV_EXAMPLE_COMPOSE_MARKER = "# --- compose:"

# RabbitMQ checks permissions on the default exchange ("") under this name.
DEFAULT_EXCHANGE = "amq.default"
ADMIN_USER = "admin"
API_USER = "api"
RELAY_USER = "relay"
# A reactor's service is this prefix + its name in reactors.registry; its broker user is that name.
REACTOR_SERVICE_PREFIX = "reactor-"

static = pytest.mark.static


# --- reading the files ------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def app_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {name: service for name, service in services().items() if "build" in service}


def one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def long_running_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services().items() if not one_shot(service)}


_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.match(match["braced"])
        if braced is None:
            raise ValueError(f"unsupported interpolation {match[0]!r}")
        value = env.get(braced["name"])
        op, arg = braced["op"], braced["arg"] or ""
        if op is None:
            return value or ""
        if op in (":-", "-"):
            use_default = not value if op == ":-" else value is None
            return arg if use_default else str(value)
        if op in (":?", "?"):
            if not value if op == ":?" else value is None:
                raise ValueError(f"{braced['name']}: {arg}")
            return str(value)
        raise ValueError(f"unsupported interpolation {match[0]!r}")

    return _TOKEN.sub(replace, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


def variable_defaults(node: Any) -> dict[str, list[str | None]]:
    """Every ${VAR...} in the file, with the default (if any) each occurrence falls back to."""
    found: dict[str, list[str | None]] = {}
    if isinstance(node, str):
        for match in _TOKEN.finditer(node):
            if match["escaped"]:
                continue
            if match["named"]:
                found.setdefault(match["named"], []).append(None)
                continue
            braced = _BRACED.match(match["braced"])
            assert braced is not None, match[0]
            default = braced["arg"] if braced["op"] in (":-", "-") else None
            found.setdefault(braced["name"], []).append(default)
    elif isinstance(node, list | dict):
        for child in node.values() if isinstance(node, dict) else node:
            for name, defaults in variable_defaults(child).items():
                found.setdefault(name, []).extend(defaults)
    return found


def parse_env_file(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def env_example_compose_section() -> dict[str, str]:
    """The lines of .env.example's compose section: from its header to the next `# --- ` header."""
    text = ENV_EXAMPLE.read_text()
    assert ENV_EXAMPLE_COMPOSE_MARKER in text, ".env.example has no compose section"
    section = text.split(ENV_EXAMPLE_COMPOSE_MARKER, 1)[1].partition("\n")[2]
    return parse_env_file(re.split(r"^# --- ", section, maxsplit=1, flags=re.MULTILINE)[0])


@functools.cache
def deployed() -> dict[str, dict[str, Any]]:
    """The services as compose runs them with the documented placeholder values (.env.example)."""
    result = interpolated(services(), env_example_compose_section())
    assert isinstance(result, dict)
    return result


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


SETTINGS_ENV_NAMES = {name.upper() for name in Settings.model_fields}


def settings_of(service_name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service's process builds them: from its container environment only."""
    with monkeypatch.context() as patch:
        for name in SETTINGS_ENV_NAMES:
            patch.delenv(name, raising=False)
        for key, value in environment(deployed()[service_name]).items():
            patch.setenv(key, value)
        return Settings(_env_file=None)


def reactor_services() -> dict[str, str]:
    """Service name -> the reactor it runs (`python -m entrypoints.reactors <name>`)."""
    found: dict[str, str] = {}
    for name, service in app_services().items():
        command = service["command"]
        if command[:3] == ["python", "-m", "entrypoints.reactors"]:
            assert len(command) == 4, f"{name}: run one reactor per service, got {command}"
            found[name] = command[3]
    return found


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = interpolate(words[0], args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def image_reference(image: str) -> tuple[str, str | None]:
    """(repository, tag) of an image reference, ignoring a registry host's port."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return name, None
    repository, _, tag = name.rpartition(":")
    return repository, tag


PINNED_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)*([-.+][0-9A-Za-z.-]+)?$")


def runtime_distributions() -> set[str]:
    """The project's runtime requirements (not the dev extra) and everything they pull in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(line), "") for line in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: set[str] = set()
    while todo:
        requirement, via_extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": via_extra}):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for extra in ("", *requirement.extras):
            todo.extend((Requirement(line), extra) for line in requires)
    return found
