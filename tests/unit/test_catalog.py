"""The event catalog: valid AsyncAPI 3.0, derived from the contracts and the topology; no event cycles."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contracts.envelope import ReceivedEvent, encode_event
from contracts.orders import EVENT_TYPES, ORDER_CANCELLED_V1, ORDER_SHIPPED_V1
from infra.settings import Settings, load_settings
from messaging.asyncapi import (
    SAGA,
    EventCycleError,
    EventFlow,
    asyncapi_document,
    check_acyclic,
    event_flows,
    find_cycle,
    topic_matches,
)
from reactors.base import Reactor
from reactors.registry import REACTORS
from tests.events import cancelled_event, shipped_event
from tests.support import ROOT

pytestmark = pytest.mark.unit

ASYNCAPI_SCHEMA = json.loads((ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json").read_text())


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(
        _env_file=None, broker_namespace="shop", rabbitmq_url="amqp://relay:s3cret@broker.internal:5673/prod"
    )


@pytest.fixture(scope="module")
def document(settings: Settings) -> dict[str, Any]:
    return asyncapi_document(settings, REACTORS)


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    return [
        f"{list(error.absolute_path)}: {error.message[:200]}" for error in validator.iter_errors(document)
    ]


def references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def resolve(document: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = document
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_errors(document) == []


def test_the_validation_is_not_vacuous(document: dict[str, Any]) -> None:
    broken_action = copy.deepcopy(document)
    next(iter(broken_action["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording
    queue_and_exchange = copy.deepcopy(document)
    queue_and_exchange["channels"]["loyalty.queue"]["bindings"]["amqp"]["exchange"] = {"name": "x"}
    no_version = {key: value for key, value in document.items() if key != "asyncapi"}
    for broken in (broken_action, queue_and_exchange, no_version):
        assert asyncapi_errors(broken) != []


def test_every_reference_resolves_and_operations_use_their_channels_messages(
    document: dict[str, Any],
) -> None:
    for pointer in references(document):
        resolve(document, pointer)
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def test_it_is_derived_from_the_contracts_and_the_topology(document: dict[str, Any]) -> None:
    assert document["servers"]["rabbitmq"] == {
        "host": "broker.internal:5673",  # no credentials in a published document
        "pathname": "prod",
        "protocol": "amqp",
        "protocolVersion": "0-9-1",
        "description": document["servers"]["rabbitmq"]["description"],
    }
    assert set(document["components"]["messages"]) == set(EVENT_TYPES)
    for event_type in EVENT_TYPES.values():
        channel = document["channels"][event_type.type]
        assert channel["address"] == event_type.routing_key
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "shop.events"
        assert f"{SAGA}.send.{event_type.type}" in document["operations"]
    receives = {
        operation["x-consumer"]: {ref["$ref"].rsplit("/", 1)[1] for ref in operation["messages"]}
        for operation in document["operations"].values()
        if operation["action"] == "receive"
    }
    assert receives == {
        "notification": {ORDER_SHIPPED_V1.type, ORDER_CANCELLED_V1.type},
        "loyalty": {ORDER_SHIPPED_V1.type},
        "analytics": {ORDER_SHIPPED_V1.type, ORDER_CANCELLED_V1.type},
    }
    assert document["channels"]["loyalty.queue"]["address"] == "shop.loyalty"
    assert document["channels"]["loyalty.dlq"]["address"] == "shop.loyalty.dlq"


def test_real_events_validate_against_their_message_schemas_and_broken_ones_do_not(
    document: dict[str, Any],
) -> None:
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )

    def validator(event_type: str) -> jsonschema.Validator:
        payload_ref = document["components"]["messages"][event_type]["payload"]["$ref"]
        schema = {"$ref": "urn:asyncapi" + payload_ref}
        return jsonschema.Draft202012Validator(schema, registry=registry)

    for event in (shipped_event(), cancelled_event()):
        body = json.loads(encode_event(event))
        assert list(validator(event.type).iter_errors(body)) == []
        wrong = {**body, "data": {**body["data"], "total_amount": -1}}
        assert list(validator(event.type).iter_errors(wrong)) != []
    # A shipped event is not a cancelled one: the envelope's type is pinned per message.
    assert (
        list(validator(ORDER_CANCELLED_V1.type).iter_errors(json.loads(encode_event(shipped_event())))) != []
    )


async def _nothing(_event: ReceivedEvent, _session: object) -> None:
    return None


def reactor(name: str, consumes: tuple[str, ...], publishes: tuple[str, ...] = ()) -> Reactor:
    return Reactor(name=name, routing_keys=consumes, apply=_nothing, publishes=publishes)


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("order.shipped.v1", "order.shipped.v1", True),
        ("order.*.v1", "order.shipped.v1", True),
        ("order.*", "order.shipped.v1", False),
        ("order.#", "order.shipped.v1", True),
        ("#", "anything.at.all", True),
        ("order.#.v1", "order.v1", True),
        ("#.v2", "order.shipped.v1", False),
        ("order.shipped.v1", "order.shipped.v10", False),
    ],
)
def test_topic_patterns_match_like_a_rabbitmq_topic_exchange(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_the_registered_topology_has_no_cycle() -> None:
    check_acyclic(REACTORS)
    assert find_cycle(event_flows(REACTORS)) is None


def test_two_reactors_feeding_each_other_are_a_cycle() -> None:
    enricher = reactor("enricher", ("order.shipped.v1", "order.rated.v1"), publishes=("order.enriched.v1",))
    rater = reactor("rater", ("order.enriched.v1",), publishes=("order.rated.v1",))
    bystander = reactor("bystander", ("order.#",))
    with pytest.raises(EventCycleError) as raised:
        check_acyclic([*REACTORS, bystander, enricher, rater])
    assert raised.value.cycle == [("enricher", "order.enriched.v1"), ("rater", "order.rated.v1")]
    assert str(raised.value) == (
        "the event topology has a cycle: enricher (order.enriched.v1) -> rater (order.rated.v1) -> enricher"
    )


def test_a_reactor_whose_wildcard_binding_catches_its_own_publication_is_a_cycle() -> None:
    auditor = reactor("auditor", ("order.#",), publishes=("order.audited.v1",))
    assert find_cycle(event_flows([auditor])) == [("auditor", "order.audited.v1")]
    with pytest.raises(EventCycleError):
        asyncapi_document(load_settings(_env_file=None), [auditor])


def test_a_chain_that_ends_is_not_a_cycle() -> None:
    flows = [
        EventFlow(SAGA, (), ("order.shipped.v1",)),
        EventFlow("a", ("order.shipped.v1",), ("invoice.issued.v1",)),
        EventFlow("b", ("invoice.issued.v1",), ("invoice.mailed.v1",)),
        EventFlow("c", ("order.#", "invoice.issued.v1"), ()),
    ]
    assert find_cycle(flows) is None
