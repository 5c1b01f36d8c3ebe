"""The event catalogue (docs/asyncapi.yaml) says what the code does: it is regenerated here and compared, and what
each service declares it publishes is held to what its handlers really publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from events.catalog import EVENT_TYPES
from shop.asyncapi import DOCUMENT_PATH, asyncapi_document, message_name, render
from shop.services import SERVICES
from tests.support.shop import Shop

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(SERVICES.values())


def test_the_committed_asyncapi_document_is_up_to_date(document: dict[str, Any]) -> None:
    committed = ROOT / DOCUMENT_PATH
    assert committed.exists(), "docs/asyncapi.yaml is missing: run `shop asyncapi`"
    assert committed.read_text() == render(document), "docs/asyncapi.yaml is stale: run `shop asyncapi`"


def test_the_document_is_asyncapi_3_and_every_reference_resolves(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.1.0"
    rendered = yaml.safe_load(render(document))

    def resolve(pointer: str) -> Any:
        assert pointer.startswith("#/"), pointer
        node = rendered
        for part in pointer[2:].split("/"):
            assert part in node, f"unresolved $ref {pointer}"
            node = node[part]
        return node

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            return (1 if "$ref" in node and resolve(node["$ref"]) is not None else 0) + sum(map(walk, node.values()))
        if isinstance(node, list):
            return sum(map(walk, node))
        return 0

    assert walk(rendered) > len(EVENT_TYPES)


def test_every_event_is_a_message_with_its_json_schema_inside_the_envelope(document: dict[str, Any]) -> None:
    components = document["components"]
    assert {"Envelope", "Sealed"} <= set(components["schemas"])
    for model in EVENT_TYPES.values():
        message = components["messages"][message_name(model)]
        schema = components["schemas"][model.__name__]
        assert schema["properties"].keys() == model.model_json_schema()["properties"].keys()
        envelope, specifics = message["payload"]["allOf"]
        assert envelope == {"$ref": "#/components/schemas/Envelope"}
        assert specifics["properties"]["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}


def test_operations_say_who_receives_and_who_sends_each_event(document: dict[str, Any]) -> None:
    operations = document["operations"]
    for spec in SERVICES.values():
        for model in spec.handlers:
            operation = operations[f"{spec.name}.receive.{message_name(model)}"]
            assert operation["action"] == "receive" and operation["channel"] == {"$ref": f"#/channels/{spec.queue}"}
        for model in spec.publishes:
            assert operations[f"{spec.name}.send.{message_name(model)}"]["action"] == "send"
    assert sum(op["action"] == "send" for op in operations.values()) == sum(len(s.publishes) for s in SERVICES.values())


# ---------------------------------------------------------------------------------------------------------------------
# `publishes` is true
# ---------------------------------------------------------------------------------------------------------------------
def test_on_the_in_memory_bus_every_event_comes_from_a_service_that_declares_it(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    monkeypatch.setenv("SHOP_GATEWAY_FLAKY_FAILURES", "1")
    shop = Shop(tmp_path / "notifications.log", stock=5)
    published = list(shop.bus.published)  # the catalogue's setup
    for method, quantity in (("card", 1), ("card_declined", 1), ("card_flaky", 1), ("card", 50)):
        shop.bus.published.clear()
        shop.place(method, quantity=quantity)
        published += shop.bus.published
    seen = {(envelope.producer, envelope.type) for envelope in published}
    undeclared = {(producer, type_) for producer, type_ in seen
                  if producer in SERVICES and type_ not in {m.type_name for m in SERVICES[producer].publishes}}
    assert not undeclared, f"published but not declared in ServiceSpec.publishes: {sorted(undeclared)}"
    assert {"OrderCreated", "PaymentProcessed", "PaymentFailed", "OrderConfirmed", "OrderCancelled",
            "NotificationSent"} <= {type_ for _, type_ in seen}
