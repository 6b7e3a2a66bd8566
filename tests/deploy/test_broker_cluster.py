"""The `rabbitmq-cluster` compose profile: three RabbitMQ nodes forming one cluster from the config file."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

from tests.deploy.broker_model import broker_user_of_services
from tests.deploy.stack_files import (
    DEFINITIONS,
    ROOT,
    deployed,
    env_example_compose_section,
    environment,
    interpolated,
    parse_env_file,
    services,
    settings_of,
    static,
)

CLUSTER_CONF = ROOT / "deploy" / "rabbitmq" / "cluster.conf"
PROFILE = "rabbitmq-cluster"
ALIAS = "rabbitmq-cluster"


def cluster_nodes() -> dict[str, dict[str, object]]:
    return {name: service for name, service in deployed().items() if PROFILE in service.get("profiles", [])}


def _mounts(service: dict[str, object]) -> dict[str, str]:
    volumes = service["volumes"]
    assert isinstance(volumes, list)
    return {str(volume).split(":")[0]: str(volume).split(":")[1] for volume in volumes}


@static
def test_the_profile_runs_three_nodes_that_discover_each_other_from_the_config_file() -> None:
    nodes = cluster_nodes()
    assert sorted(nodes) == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    conf = parse_env_file(CLUSTER_CONF.read_text().replace(" = ", "="))
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {
        value for key, value in conf.items() if key.startswith("cluster_formation.classic_config.nodes.")
    }
    assert listed == {f"rabbit@{service['hostname']}" for service in nodes.values()}
    # Applied once: the first node imports, the others (and restarts with the same passwords) skip.
    assert conf["definitions.skip_if_unchanged"] == "true"
    single = deployed()["rabbitmq"]
    single_mounts = _mounts(single)
    data_volumes = set()
    cookies = set()
    for name, node in nodes.items():
        assert node["hostname"] == name, "the node name rabbit@<hostname> keys its data directory"
        assert node["image"] == single["image"], name
        assert node["entrypoint"] == single["entrypoint"] and node["command"] == single["command"], name
        mounts = _mounts(node)
        for source, target in single_mounts.items():
            if source.startswith("./"):
                assert mounts[source] == target, f"{name}: {source}"
        assert mounts[f"./{CLUSTER_CONF.relative_to(ROOT)}"] == "/etc/rabbitmq/conf.d/40-cluster.conf"
        data = [source for source, target in mounts.items() if target == "/var/lib/rabbitmq"]
        assert len(data) == 1, name
        data_volumes.add(data[0])
        env = environment(node)
        passwords = set(re.findall(r"\$\{([A-Z0-9_]+)\}", DEFINITIONS.read_text()))
        assert {key: env[key] for key in passwords} == environment(single), f"{name}: the same users"
        cookie = env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        assert cookie == env["RABBITMQ_CTL_ERL_ARGS"] and cookie.startswith("-setcookie "), name
        cookies.add(cookie)
        networks = node["networks"]
        assert isinstance(networks, dict) and ALIAS in networks["backend"]["aliases"], name
        assert "ports" not in node, f"{name}: the single node's management UI is the published one"
    assert len(data_volumes) == 3, "each node keeps its own data"
    assert len(cookies) == 1, "the nodes share one Erlang cookie"


@static
def test_broker_host_points_every_component_at_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """With BROKER_HOST=rabbitmq-cluster the components' URLs name the alias the three nodes share."""
    env = {**env_example_compose_section(), "BROKER_HOST": ALIAS}
    clustered = interpolated(services(), env)
    for name in broker_user_of_services():
        url = urllib.parse.urlsplit(environment(clustered[name])["RABBITMQ_URL"])
        assert (url.hostname, url.port) == (ALIAS, 5672), name
        single = urllib.parse.urlsplit(settings_of(name, monkeypatch).rabbitmq_url)
        assert single.hostname == "rabbitmq", f"{name}: the default stays the single node"


@static
def test_cluster_conf_is_mounted_by_the_cluster_nodes_only() -> None:
    source = f"./{CLUSTER_CONF.relative_to(ROOT)}"
    users = {
        name
        for name, service in services().items()
        if any(source in str(v) for v in service.get("volumes", []))
    }
    assert users == set(cluster_nodes())
    assert Path(CLUSTER_CONF).exists()
