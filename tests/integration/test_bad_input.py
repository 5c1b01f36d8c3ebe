"""The bad-input matrix, in one run, against a real product worker process (the first step of the order saga).

Issue requirement: "each gets its clear error or dead-letter reason, no worker dies, every good message in the same
run is processed". So this test

* starts a real `shop worker product_service` process,
* places good orders through the order service's HTTP edge (each one puts an OrderCreated into the product queue),
* interleaves with them, straight into the product queue, one message of every bad kind we know: transport-level
  garbage, kombu messages that are not celery tasks, celery tasks celery cannot run, and well-formed celery tasks
  whose signed envelope is wrong in every way `open_envelope` and `ServiceRuntime.handle` check,
* sends every kind of bad HTTP request to the same FastAPI app,

then asserts that each bad message is exactly one dead letter with the expected reason, each bad request got a
readable 4xx, the worker is still alive, and the stock of every good order was reserved.

Every bad message carries a unique marker (`<bad-input:kind>`) somewhere in what the dead letter keeps (raw body,
envelope text, kwargs), so each dead letter is matched to the one case that produced it.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid4, uuid5

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient
from kombu import Producer

from events.adapters.redis.messages import task_name
from events.adapters.redis.topology import kombu_connection
from events.adapters.redis.worker import in_flight
from events.catalog import OrderCreated, PaymentProcessed
from events.envelope import Envelope, Sealed
from events.messaging import OutgoingMessage
from events.runtime.celery_worker import make_celery_app
from events.settings import BusSettings
from order_service.api import create_app
from product_service.domain import ReservationStatus
from shop.bootstrap import Wiring, declare_topology
from shop.services import SERVICES
from tests.support.builders import http_edge, producer_of, session_keys, stock_product, token
from tests.support.waiting import wait_until

SERVICE = "product_service"
QUEUE = SERVICES[SERVICE].queue
MAX_MESSAGE_BYTES = 8192  # the worker's SHOP_MAX_MESSAGE_BYTES in this test: an oversized message stays small
GOOD_ORDER = {
    "customer_id": "alice",
    "items": [{"product_id": "book", "quantity": 2}],
    "payment_method": "card",
}


# --------------------------------------------------------------------------------------------------------------------
# Building bad messages
# --------------------------------------------------------------------------------------------------------------------
def marker(kind: str) -> str:
    return f"<bad-input:{kind}>"


def case_id(kind: str) -> str:
    """The event id of the case's envelope: how its dead letter is found (the producer must be a real service)."""
    return str(uuid5(NAMESPACE_URL, marker(kind)))


def envelope_dict(kind: str, event: Any = None, producer: str | None = None, **changes: Any) -> dict[str, Any]:
    """A valid envelope (as JSON-ready dict) around `event` (an OrderCreated by default), from the service that
    publishes it, with the case's event id (and marker as customer), then `changes` applied (a value of `...` deletes
    the field)."""
    event = event or OrderCreated(
        order_id=uuid4(),
        customer_id=marker(kind),
        items=[{"product_id": "book", "quantity": 1, "unit_price": "1.00"}],
        total="1.00",
        payment_method="card",
    )
    envelope = Envelope.wrap(event, producer=producer or producer_of(event), correlation_id=uuid4()).model_dump(
        mode="json")
    envelope["event_id"] = case_id(kind)
    for field, value in changes.items():
        if value is ...:
            del envelope[field]
        else:
            envelope[field] = value
    return envelope


def signed(raw: str, signer: str = "order_service") -> Sealed:
    return Sealed(envelope=raw, signature=session_keys().sign(signer, raw.encode()))


def celery_task(
    app: Celery, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(body, headers, properties) of a protocol-2 celery task message, as MessageFactory builds them."""
    message = app.amqp.as_task_v2(str(uuid4()), name, args=args, kwargs=kwargs, ignore_result=True)
    return message.body, message.headers, message.properties


@dataclass
class BadMessage:
    kind: str
    reason: str
    inject: Callable[[Injector], None]


class Injector:
    """Puts one message into the product queue, at the level each case needs."""

    def __init__(self, wiring: Wiring, client: redis.Redis) -> None:
        self.wiring = wiring
        self.client = client
        self.settings = wiring.settings
        self.app = make_celery_app("tests.bad_input", self.settings)
        self._connection = kombu_connection(self.settings)
        self._producer = Producer(self._connection.default_channel)

    def close(self) -> None:
        self._connection.release()

    def raw(self, payload: str | bytes) -> None:
        """Transport level: bytes kombu itself must parse."""
        self.client.lpush(QUEUE, payload)

    def kombu(self, body: Any, headers: dict[str, Any] | None = None, **properties: Any) -> None:
        """A well-formed kombu message (JSON, default exchange, routing key = queue) with any body and headers."""
        serializer = properties.pop("serializer", "json")
        self._producer.publish(
            body, exchange="", routing_key=QUEUE, serializer=serializer, headers=headers or {}, **properties
        )

    def sealed(self, sealed: Sealed) -> None:
        """A signed envelope (whatever it holds) for the product service's task, sent by the production broker to
        the product queue only, as a replayed dead letter is."""
        message = OutgoingMessage.to_queue(QUEUE, sealed, f"bad-input-{uuid4()}")
        assert self.wiring.broker.send([message]).sent == [message.id]

    def task(self, kwargs: dict[str, Any], args: tuple[Any, ...] = ()) -> None:
        """A well-formed celery task for the product service's task, with any arguments (the broker only ever sends
        an envelope and a signature, so these are published with kombu)."""
        body, headers, properties = celery_task(self.app, task_name(QUEUE), args, kwargs)
        self.kombu(body, headers, **properties)

    def envelope(self, envelope: dict[str, Any]) -> None:
        """Signed by its producer when that is a service (with a key), else by the order service."""
        producer = envelope.get("producer")
        self.sealed(signed(json.dumps(envelope), producer if producer in session_keys().private else "order_service"))


def tampered(injector: Injector) -> None:
    envelope = envelope_dict("tampered-after-signing")
    sealed = signed(json.dumps(envelope))
    envelope["payload"]["total"] = "0.01"  # the attacker's edit, after the signature was made
    injector.sealed(Sealed(envelope=json.dumps(envelope), signature=sealed.signature))


def wrong_key(injector: Injector) -> None:
    """The order service's envelope, signed with the notification service's key: a compromised service speaking
    for another."""
    injector.sealed(signed(json.dumps(envelope_dict("signed-by-another-service")), "notification_service"))


def oversized(injector: Injector) -> None:
    envelope = envelope_dict("larger-than-max-message-bytes")
    envelope["payload"]["customer_id"] = "x" * (MAX_MESSAGE_BYTES + 1)
    injector.envelope(envelope)


def payload_change(kind: str, **changes: Any) -> Callable[[Injector], None]:
    def inject(injector: Injector) -> None:
        envelope = envelope_dict(kind)
        envelope["payload"].update(changes)
        injector.envelope(envelope)

    return inject


def line_change(kind: str, **changes: Any) -> Callable[[Injector], None]:
    def inject(injector: Injector) -> None:
        envelope = envelope_dict(kind)
        envelope["payload"]["items"][0].update(changes)
        injector.envelope(envelope)

    return inject


def valid_sealed(kind: str) -> Sealed:
    return signed(json.dumps(envelope_dict(kind)))


NOT_JSON = f"{marker('transport-not-json')} {{ this is not JSON"


def kombu_shaped(headers: dict[str, Any]) -> dict[str, Any]:
    """A raw queue item with everything kombu's Redis transport reads (an empty body) and these headers."""
    return {"body": "", "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
            "properties": {"delivery_tag": str(uuid4()), "body_encoding": "base64",
                           "delivery_info": {"exchange": "", "routing_key": QUEUE}}}

BAD_MESSAGES: list[BadMessage] = [
    # ---- transport level: kombu / celery see these before any shop code ----
    BadMessage("transport-not-json", "undecodable message", lambda i: i.raw(NOT_JSON)),
    BadMessage("transport-json-not-kombu", "undecodable message",
               lambda i: i.raw(json.dumps({"hello": marker("transport-json-not-kombu")}))),
    BadMessage("transport-json-array", "undecodable message",
               lambda i: i.raw(json.dumps([marker("transport-json-array"), 1, 2]))),
    BadMessage("transport-typed-value-not-valid", "undecodable message",  # kombu's JSON decodes typed values
               lambda i: i.raw(json.dumps(kombu_shaped(headers={"eta": {
                   "__type__": "datetime", "__value__": marker("transport-typed-value-not-valid")}})))),
    BadMessage("kombu-task-header-not-a-string", "undecodable message",
               lambda i: i.kombu({}, {"task": [marker("kombu-task-header-not-a-string")]})),
    BadMessage("celery-body-not-args-kwargs-embed", "invalid task message",
               lambda i: i.kombu(marker("celery-body-not-args-kwargs-embed"), celery_task(
                   i.app, task_name(QUEUE), (), {})[1])),
    BadMessage("kombu-message-not-a-celery-task", "not a task message",
               lambda i: i.kombu({"hello": marker("kombu-message-not-a-celery-task")})),
    BadMessage("celery-task-unknown-name", "unknown task",
               lambda i: i.kombu(*celery_task(i.app, f"{marker('celery-task-unknown-name')}.nope", (), {})[:2])),
    BadMessage("celery-body-not-json-content", "invalid task message",
               lambda i: i.kombu(f"{marker('celery-body-not-json-content')}", celery_task(
                   i.app, task_name(QUEUE), (), {})[1], serializer="pickle")),
    # ---- the service's task, with arguments it cannot use ----
    BadMessage("positional-args", "malformed message",
               lambda i: i.task({}, args=(marker("positional-args"), "sig"))),
    BadMessage("signature-missing", "malformed message",
               lambda i: i.task({"envelope": json.dumps(envelope_dict("signature-missing"))})),
    BadMessage("unexpected-kwarg", "malformed message",
               lambda i: i.task({**valid_sealed("unexpected-kwarg").model_dump(),
                                 "priority": marker("unexpected-kwarg")})),
    BadMessage("signature-not-a-string", "malformed message",
               lambda i: i.task({"envelope": json.dumps(envelope_dict("signature-not-a-string")), "signature": 42})),
    # ---- the signed envelope ----
    BadMessage("larger-than-max-message-bytes", "message too large", oversized),
    BadMessage("tampered-after-signing", "bad signature", tampered),
    BadMessage("signed-by-another-service", "bad signature", wrong_key),
    BadMessage("not-the-producers-event", "not its event",
               lambda i: i.envelope(envelope_dict("not-the-producers-event", producer="notification_service"))),
    BadMessage("unknown-producer", "unknown producer",
               lambda i: i.envelope(envelope_dict("unknown-producer", producer="mallory"))),
    BadMessage("envelope-not-json", "invalid JSON",
               lambda i: i.sealed(signed(f"{marker('envelope-not-json')} {{ not JSON"))),
    BadMessage("envelope-missing-field", "invalid envelope",
               lambda i: i.envelope(envelope_dict("envelope-missing-field", event_id=...))),
    BadMessage("envelope-extra-field", "invalid envelope",
               lambda i: i.envelope(envelope_dict("envelope-extra-field", priority="high"))),
    BadMessage("envelope-naive-timestamp", "invalid envelope",
               lambda i: i.envelope(envelope_dict("envelope-naive-timestamp",
                                                  occurred_at=datetime.now(UTC).replace(tzinfo=None).isoformat()))),
    BadMessage("unknown-event-type", "unknown event type",
               lambda i: i.envelope(envelope_dict("unknown-event-type", type="OrderTeleported"))),
    BadMessage("unknown-version", "unknown event type",
               lambda i: i.envelope(envelope_dict("unknown-version", version=2))),
    BadMessage("payload-negative-quantity", "invalid payload", line_change("payload-negative-quantity", quantity=-1)),
    BadMessage("payload-float-money", "invalid payload", line_change("payload-float-money", unit_price=1.0)),
    BadMessage("payload-extra-field", "invalid payload", payload_change("payload-extra-field", discount="0.50")),
    BadMessage("payload-null-order-id", "invalid payload", payload_change("payload-null-order-id", order_id=None)),
    BadMessage("event-not-handled-by-service", "no handler",
               lambda i: i.envelope(envelope_dict("event-not-handled-by-service", event=PaymentProcessed(
                   order_id=uuid4(), payment_id=uuid4(), amount="1.00")))),
]


# --------------------------------------------------------------------------------------------------------------------
# Bad HTTP requests: (kind, method, path, body or raw text, expected status, text the answer must contain)
# --------------------------------------------------------------------------------------------------------------------
def order_with(**changes: Any) -> dict[str, Any]:
    return {**GOOD_ORDER, **changes}


def line_with(**changes: Any) -> dict[str, Any]:
    return order_with(items=[{**GOOD_ORDER["items"][0], **changes}])


BAD_REQUESTS: list[tuple[str, str, str, Any, int, str]] = [
    ("invalid JSON body", "POST", "/orders", '{"customer_id": "alice", "items": [', 422, "JSON decode error"),
    ("body is not an object", "POST", "/orders", [1, 2], 422, "valid dictionary"),
    ("missing field", "POST", "/orders", {k: v for k, v in GOOD_ORDER.items() if k != "customer_id"}, 422,
     "customer_id: Field required"),
    ("quantity 0", "POST", "/orders", line_with(quantity=0), 422, "items.0.quantity: Input should be greater than 0"),
    ("a price from the client", "POST", "/orders", line_with(unit_price="0.01"), 422,
     "items.0.unit_price: Extra inputs are not permitted"),
    ("unknown product", "POST", "/orders", line_with(product_id="unicorn"), 422, "unknown product 'unicorn'"),
    ("extra field", "POST", "/orders", order_with(coupon="FREE"), 422, "coupon: Extra inputs are not permitted"),
    ("extra line field", "POST", "/orders", line_with(discount="1"), 422, "discount: Extra inputs are not permitted"),
    ("empty items", "POST", "/orders", order_with(items=[]), 422, "items: List should have at least 1 item"),
    ("non-UUID order id", "GET", "/orders/not-a-uuid", None, 422, "order_id: Input should be a valid UUID"),
    ("unknown order", "GET", f"/orders/{uuid4()}", None, 404, "no order"),
]


def send(client: TestClient, method: str, path: str, body: Any) -> Any:
    if method == "GET":
        return client.get(path)
    if isinstance(body, str):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------
def dead_letter_kind(record: dict[str, Any], kinds: list[str]) -> list[str]:
    text = json.dumps(record.get("message"))
    return [kind for kind in kinds if marker(kind) in text or case_id(kind) in text]


@pytest.mark.timeout(300)
def test_every_bad_input_gets_its_reason_and_good_orders_still_flow(
    redis_client: redis.Redis,
    wiring: Wiring,
    start_worker: Callable[..., subprocess.Popen],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_MAX_MESSAGE_BYTES", str(MAX_MESSAGE_BYTES))
    assert BusSettings().max_message_bytes == MAX_MESSAGE_BYTES  # what the worker started below reads
    declare_topology(wiring.settings)  # good orders must find the product queue bound
    stock_product(wiring, price="12.50")
    injector = Injector(wiring, redis_client)
    dead_letters = wiring.dead_letters
    worker = start_worker(SERVICE)

    def documents(service: str, collection: str) -> dict[str, dict[str, Any]]:
        return wiring.store(service).documents(service, collection)

    good_orders: list[str] = []
    with TestClient(create_app(wiring, http_edge()), headers=token("alice")) as http:

        def place_good_order() -> None:
            response = http.post("/orders", json=GOOD_ORDER)
            assert response.status_code == 202, response.text
            good_orders.append(response.json()["id"])

        # Good and bad interleaved in the one queue: a good order before and after every bad message.
        place_good_order()
        for case in BAD_MESSAGES:
            case.inject(injector)
            place_good_order()

        # HTTP: each bad request gets a readable 4xx and publishes nothing.
        http_results = {}
        for kind, method, path, body, status, expected in BAD_REQUESTS:
            response = send(http, method, path, body)
            http_results[kind] = (response.status_code, response.text)
            assert response.status_code == status, (kind, response.status_code, response.text)
            assert expected in response.text, (kind, response.text)
        assert http.get(f"/orders/{good_orders[0]}").status_code == 200
    injector.close()

    def settled() -> bool:
        paid = documents(SERVICE, "reservation")
        return (
            all(order_id in paid for order_id in good_orders)
            and len(dead_letters.list(SERVICE)) >= len(BAD_MESSAGES)
            and redis_client.llen(QUEUE) == 0
            and in_flight(redis_client, SERVICE) == 0
        ) or worker.poll() is not None

    wait_until(settled, timeout=180, interval=0.2,
               message="every good order's stock reserved and every bad message dead-lettered")
    assert worker.poll() is None, f"the product worker died (exit code {worker.returncode})"

    # Every good order, and only those, had its stock reserved; no bad HTTP request created an order.
    reserved = documents(SERVICE, "reservation")
    assert sorted(reserved) == sorted(good_orders)
    assert {reserved[order_id]["status"] for order_id in good_orders} == {ReservationStatus.RESERVED}, reserved
    assert sorted(documents("order_service", "order")) == sorted(good_orders)

    # Every bad message is exactly one dead letter, with its reason.
    kinds = [case.kind for case in BAD_MESSAGES]
    records = dead_letters.list(SERVICE)
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for record in records:
        matched = dead_letter_kind(record, kinds)
        assert len(matched) == 1, f"dead letter matches {matched}: {record}"
        by_kind[matched[0]].append(record)
    matrix = {kind: [record["reason"] for record in by_kind[kind]] for kind in kinds}
    expected = {case.kind: [case.reason] for case in BAD_MESSAGES}
    assert matrix == expected
    assert Counter(record["reason"] for record in records) == Counter(case.reason for case in BAD_MESSAGES)
    assert dead_letters.list("unroutable") == []
    # A transport-level reject keeps the original bytes, so it can be read and understood.
    [garbage] = by_kind["transport-not-json"]
    assert garbage["message"]["raw_body"] == NOT_JSON
    assert garbage["detail"].startswith("not JSON")
