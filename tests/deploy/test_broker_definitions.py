"""RabbitMQ users and permissions (deploy/rabbitmq): the grants are exactly what the code declares and
publishes (derived by running the topology code against a recording channel). One `integration` test imports
the definitions into the real RabbitMQ, in a throwaway vhost, and runs each component's broker calls as that
component's user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from infra.settings import Settings
from messaging.broker import ConfirmedPublisher, close_quietly, connect
from messaging.topology import Topology, declare_subscription, declare_topology
from reactors.registry import REACTORS
from tests.deploy.broker_model import (
    PERMISSIONS,
    api_needs,
    broker_user_of_services,
    component_topology,
    definitions_template,
    name_universe,
    permissions_by_user,
    reactor_needs,
    relay_needs,
    rendered_definitions,
)
from tests.deploy.stack_files import (
    ADMIN_USER,
    API_USER,
    DEFINITIONS,
    RABBITMQ_CONF,
    RELAY_USER,
    RENDER_SCRIPT,
    ROOT,
    app_services,
    deployed,
    environment,
    image_reference,
    parse_env_file,
    services,
    settings_of,
    static,
)

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
    assert permissions[API_USER]["configure"] == "^$"  # the API declares nothing (its recovery reads, sends)
    passwords = [user["password"] for user in users.values()]
    assert len(set(passwords)) == len(passwords), "every user has a password of its own"


@static
def test_broker_permissions_are_exactly_what_the_code_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    topology = component_topology(monkeypatch)
    permissions = permissions_by_user(definitions_template())
    universe = name_universe(topology)
    needs = {RELAY_USER: relay_needs(topology), API_USER: api_needs(topology)}
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
            # Listing and redriving dead letters is an operator's job (order-saga dlq, as admin).
            assert await _refused(settings, _get_from, topology.dead_letter_queue(reactor.name))
        assert await _refused(relay, _get_from, topology.dead_letter_queue(REACTORS[0].name))
        assert await _refused(relay, _declare_queue, f"{topology.namespace}.unknown")
        api = _as(base, vhost, *credentials[API_USER])
        # The API's recovery (dead letters, replays): read the DLQs, send to a reactor's queue; no more.
        name = REACTORS[0].name
        assert not await _refused(api, _get_from, topology.dead_letter_queue(name))
        sender = ConfirmedPublisher(api, "compose-test-api-publish")
        try:
            await sender.publish(exchange="", routing_key=topology.queue(name), body=b"{}", message_id="a1")
        finally:
            await sender.close()
        assert await _refused(api, _get_from, topology.queue(name))
        assert await _refused(api, _declare_queue, topology.queue(name))
        assert await _refused(api, _publish_on, topology.exchange, REACTORS[0].routing_keys[0])


async def _publish_on(channel: Any, exchange: str, routing_key: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)
    # A round trip that needs no permission, so that the asynchronous refusal of the publish arrives.
    await channel.set_qos(prefetch_count=1)


async def _declare_queue(channel: Any, queue_name: str) -> None:
    await channel.declare_queue(queue_name, durable=True)


async def _get_from(channel: Any, queue_name: str) -> None:
    queue = await channel.get_queue(queue_name, ensure=False)
    await queue.get(timeout=5.0, fail=False)
