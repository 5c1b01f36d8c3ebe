"""The event catalogue as an AsyncAPI 3.0 document, generated from the code that defines it.

Generated, never written by hand: the pydantic models are the contracts (their JSON Schemas are what consumers
validate against), and each service's `ServiceSpec` says what it handles (`handlers`) and what it sends
(`publishes`). A document assembled from those cannot drift from the running system; a test regenerates it and fails
when the committed docs/asyncapi.yaml is stale (`shop asyncapi` rewrites it).

Topology as the Redis bus builds it (events/adapters/redis/topology.py): publishers send to the direct exchange
`shop.events` with the event type as routing key; each service consumes its own durable queue, bound with exactly the
types it handles. So there is one channel for the exchange (every `send`) and one per service queue (its `receive`s).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from events.bus import ServiceSpec
from events.catalog import EVENT_TYPES, Event
from events.envelope import Envelope, Sealed

DOCUMENT_PATH = Path("docs") / "asyncapi.yaml"
EXCHANGE_CHANNEL = "events"
SCHEMAS = "#/components/schemas/{model}"


def message_name(model: type[Event]) -> str:
    return model.type_name if model.version == 1 else f"{model.type_name}.v{model.version}"


def _schemas() -> dict[str, Any]:
    """Every event model, the envelope and the sealed wire form, with shared definitions hoisted to one namespace."""
    models: list[type[BaseModel]] = [*EVENT_TYPES.values(), Envelope, Sealed]
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=SCHEMAS)
    return dict(sorted(top["$defs"].items()))


def _message(model: type[Event]) -> dict[str, Any]:
    return {
        "name": model.type_name,
        "title": f"{model.type_name} v{model.version}",
        **({"summary": model.__doc__.split("\n\n")[0].strip()} if model.__doc__ and model.__doc__ != Event.__doc__
           else {}),
        "contentType": "application/json",
        "correlationId": {"description": "the order (or user, product) whose journey this event belongs to",
                          "location": "$message.payload#/correlation_id"},
        "payload": {
            "description": "the envelope, as signed; `payload` holds the event itself",
            "allOf": [
                {"$ref": SCHEMAS.format(model="Envelope")},
                {"type": "object", "properties": {
                    "type": {"const": model.type_name},
                    "version": {"const": model.version},
                    "payload": {"$ref": SCHEMAS.format(model=model.__name__)},
                }},
            ],
        },
    }


def asyncapi_document(services: Iterable[ServiceSpec]) -> dict[str, Any]:
    services = list(services)
    messages = {message_name(model): model for model in EVENT_TYPES.values()}
    channels: dict[str, Any] = {
        EXCHANGE_CHANNEL: {
            "address": "shop.events",
            "title": "the events exchange",
            "description": "A direct exchange: the routing key is the event type. Each copy is written to every "
            "queue bound to that type in the publisher's atomic commit; a type bound to no queue is dead-lettered "
            "as unroutable.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        }
    }
    operations: dict[str, Any] = {}
    for spec in services:
        handled = sorted(message_name(model) for model in spec.handlers)
        if handled:  # a service that only publishes (from its HTTP API) has no queue
            channels[spec.queue] = {
                "address": spec.queue,
                "title": f"{spec.name}'s queue",
                "description": f"Durable; owned by {spec.name}, bound to the event types it handles.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in handled},
            }
        for name in sorted(message_name(model) for model in spec.publishes):
            operations[f"{spec.name}.send.{name}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{EXCHANGE_CHANNEL}"},
                "summary": f"{spec.name} publishes {name}",
                "messages": [{"$ref": f"#/channels/{EXCHANGE_CHANNEL}/messages/{name}"}],
            }
        for name in handled:
            operations[f"{spec.name}.receive.{name}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{spec.queue}"},
                "summary": f"{spec.name} handles {name}",
                "messages": [{"$ref": f"#/channels/{spec.queue}/messages/{name}"}],
            }
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "shop events",
            "version": "1",
            "description": "Domain events exchanged by the shop's services. Generated by `shop asyncapi` from the "
            "pydantic event models (events/catalog.py) and the service specs (<service>/service.py); do not edit. "
            "On the wire each envelope travels as `Sealed` (its exact JSON text plus an HMAC-SHA256 signature) "
            "inside a celery task message (protocol 2, JSON).",
        },
        "defaultContentType": "application/json",
        "servers": {"redis": {"host": "127.0.0.1:6379", "protocol": "redis",
                              "description": "the broker and the services' stores (REDIS_URL)"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {name: _message(model) for name, model in messages.items()},
            "schemas": _schemas(),
        },
    }


def render(document: dict[str, Any]) -> str:
    """Deterministic YAML (insertion order, no anchors), so a regenerated file is byte-identical when nothing
    changed and the staleness test can compare text."""

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return "# Generated by `shop asyncapi`: do not edit.\n" + yaml.dump(
        document, Dumper=NoAliases, sort_keys=False, allow_unicode=True, width=120
    )
