"""The contracts: what an event may contain, and what the envelope lets through to a handler."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from events.adapters.ed25519.keyring import KeyRing, generate
from events.catalog import (
    EVENT_TYPES,
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentFailed,
    PaymentProcessed,
    ProductCreated,
    ProductPriceChanged,
    StockRejected,
    StockReleased,
    StockReserved,
    UserRegistered,
    event_model,
)
from events.envelope import Envelope, RejectedMessage, open_envelope, seal
from shop.bootstrap import publishers

LIMIT = 64 * 1024
PUBLISHERS = publishers()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    directory = tmp_path_factory.mktemp("keys")
    generate(directory, ["order_service", "notification_service"])
    return KeyRing.load(directory)


@pytest.fixture(autouse=True)
def _keys_for_the_helpers(keys: KeyRing) -> None:
    global KEYS
    KEYS = keys


KEYS: KeyRing


def sign(raw: str) -> str:
    """The order service's signature over `raw` (every envelope here claims to be from it)."""
    return KEYS.sign("order_service", raw.encode())


def order_created(**overrides) -> OrderCreated:
    fields = {
        "order_id": uuid4(),
        "customer_id": "alice",
        "items": (OrderLine(product_id="book", quantity=2, unit_price=Decimal("12.50")),),
        "total": Decimal("25.00"),
        "payment_method": "card",
    }
    return OrderCreated(**{**fields, **overrides})


def envelope_of(event=None, producer: str = "order_service") -> Envelope:
    event = event or order_created()
    return Envelope.wrap(event, producer=producer, correlation_id=uuid4())


def raw_envelope(**overrides) -> str:
    """A well-formed envelope as JSON text, with any field replaced (to build messages `wrap` would never make)."""
    document = json.loads(envelope_of().model_dump_json())
    document.update(overrides)
    return json.dumps(document)


def rejection(raw, signature=None, max_bytes: int = LIMIT) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as caught:
        open_envelope(raw, sign(raw) if signature is None else signature, keys=KEYS, max_bytes=max_bytes,
                      publishers=PUBLISHERS)
    return caught.value


# -- the catalog ------------------------------------------------------------------------------------------------------
def test_every_event_type_is_registered_under_its_name_and_version():
    models = (OrderCreated, PaymentProcessed, PaymentFailed, OrderConfirmed, OrderCancelled, NotificationSent,
              UserRegistered, ProductCreated, ProductPriceChanged, StockReserved, StockRejected, StockReleased)
    assert {(model.type_name, model.version) for model in models} == set(EVENT_TYPES)
    for model in models:
        assert event_model(model.__name__, 1) is model


def test_an_unknown_type_or_version_has_no_model():
    assert event_model("OrderShipped", 1) is None
    assert event_model("OrderCreated", 2) is None


def test_money_travels_as_a_decimal_string_with_two_places():
    event = order_created(total=Decimal("25"))
    document = json.loads(event.model_dump_json())
    assert document["total"] == "25.00"
    assert document["items"][0]["unit_price"] == "12.50"


def test_money_given_as_a_string_keeps_every_cent():
    line = OrderLine(product_id="pen", quantity=3, unit_price="0.10")
    assert line.unit_price * line.quantity == Decimal("0.30")


@pytest.mark.parametrize("amount", [0.1, 12, "1_000", "\u0661\u0662", " 12.50", "12.50 ", "+1.00", "01.00", "1.", ".5"])
def test_money_is_only_ever_a_plain_decimal_string(amount: object):
    with pytest.raises(ValidationError, match="decimal string"):
        OrderLine(product_id="pen", quantity=1, unit_price=amount)  # type: ignore[arg-type]


def test_a_float_total_is_rejected_when_read_from_json():
    document = json.loads(order_created().model_dump_json())
    document["total"] = 25.0
    with pytest.raises(ValidationError, match="decimal string"):
        OrderCreated.model_validate_json(json.dumps(document))


@pytest.mark.parametrize("amount", ["-1.00", "0.001", "1e20"])
def test_negative_sub_cent_or_huge_amounts_are_rejected(amount):
    with pytest.raises(ValidationError):
        OrderLine(product_id="pen", quantity=1, unit_price=amount)


def test_an_unknown_field_is_rejected():
    document = json.loads(order_created().model_dump_json())
    document["discount"] = "5.00"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        OrderCreated.model_validate(document)


def test_an_unknown_field_in_an_order_line_is_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        OrderLine(product_id="pen", quantity=1, unit_price="1.00", colour="red")


def test_events_are_immutable():
    event = order_created()
    with pytest.raises(ValidationError):
        event.total = Decimal("0.01")


# -- the envelope -----------------------------------------------------------------------------------------------------
def test_a_sealed_envelope_opens_to_the_same_envelope_and_event():
    event = order_created()
    envelope = Envelope.wrap(event, producer="order_service", correlation_id=event.order_id)
    sealed = seal(envelope, KEYS)

    opened, opened_event = open_envelope(sealed.envelope, sealed.signature, keys=KEYS, max_bytes=LIMIT,
                                         publishers=PUBLISHERS)

    assert opened == Envelope.model_validate_json(envelope.model_dump_json())
    assert (opened.type, opened.version, opened.producer) == ("OrderCreated", 1, "order_service")
    assert opened.correlation_id == event.order_id
    assert opened_event == event
    assert isinstance(opened_event, OrderCreated)


def test_a_tampered_envelope_is_rejected_for_its_signature():
    sealed = seal(envelope_of(), KEYS)
    tampered = sealed.envelope.replace('"total":"25.00"', '"total":"0.01"')
    assert tampered != sealed.envelope

    assert rejection(tampered, sealed.signature).reason == "bad signature"


def test_a_signature_is_standard_ed25519_over_the_pem_keys_either_way():
    """Messages are signed with libsodium, keys kept as PEM for any Ed25519 implementation (here OpenSSL's, through
    cryptography, which also signs the HTTP edge's tokens): each verifies the other's signatures."""
    raw = envelope_of().model_dump_json().encode()
    ours = base64.urlsafe_b64decode(KEYS.sign("order_service", raw))
    KEYS.public["order_service"].verify(ours, raw)  # raises InvalidSignature if not
    theirs = base64.urlsafe_b64encode(KEYS.private["order_service"].sign(raw)).decode()
    assert KEYS.verify("order_service", raw, theirs)
    assert not KEYS.verify("order_service", raw + b" ", theirs)
    assert not KEYS.verify("order_service", raw, theirs[:-4]), "a short signature is a bad one, not an error"


def test_an_envelope_signed_by_another_service_is_rejected():
    """The notification service's key, on an envelope that says it comes from the order service: a forgery."""
    raw = envelope_of().model_dump_json()
    forged = KEYS.sign("notification_service", raw.encode())
    assert rejection(raw, forged).reason == "bad signature"


def test_a_signed_event_that_is_not_its_producers_to_publish_is_rejected():
    """A valid signature of the notification service on a PaymentProcessed is still a forgery of the payment
    service's word: the allow-list (`ServiceSpec.publishes`) refuses it."""
    payment = PaymentProcessed(order_id=uuid4(), payment_id=uuid4(), amount=Decimal("1.00"))
    sealed = seal(envelope_of(payment, producer="notification_service"), KEYS)
    rejected = rejection(sealed.envelope, sealed.signature)
    assert (rejected.reason, rejected.detail) == ("not its event", "PaymentProcessed from notification_service: "
                                                                    "not its event")


def test_an_envelope_from_a_producer_without_a_key_is_rejected():
    raw = envelope_of(producer="mallory").model_dump_json()
    assert rejection(raw, sign(raw)).reason == "unknown producer"


def test_invalid_json_is_rejected_as_such():
    assert rejection('{"event_id": ').reason == "invalid JSON"


def test_valid_json_that_is_not_an_envelope_is_rejected():
    assert rejection(json.dumps({"hello": "world"})).reason == "invalid envelope"
    assert rejection(json.dumps({"producer": "order_service", "hello": "world"})).reason == "invalid envelope"


def test_an_envelope_with_an_extra_field_is_rejected():
    assert rejection(raw_envelope(priority="high")).reason == "invalid envelope"


@pytest.mark.parametrize(("type_name", "version"), [("OrderShipped", 1), ("OrderCreated", 2)])
def test_an_unknown_type_or_version_is_rejected(type_name, version):
    rejected = rejection(raw_envelope(type=type_name, version=version))
    assert rejected.reason == "unknown event type"
    assert f"{type_name} v{version}" in rejected.detail


def test_a_payload_that_breaks_its_contract_is_rejected():
    payload = json.loads(order_created().model_dump_json())
    del payload["customer_id"]
    rejected = rejection(raw_envelope(payload=payload))
    assert rejected.reason == "invalid payload"
    assert "customer_id" in rejected.detail


def test_a_float_in_a_payload_is_rejected():
    payload = json.loads(order_created().model_dump_json())
    payload["total"] = 25.0
    assert rejection(raw_envelope(payload=payload)).reason == "invalid payload"


def test_a_message_over_the_size_limit_is_rejected_before_anything_else():
    raw = raw_envelope()
    rejected = rejection(raw, signature="not even checked", max_bytes=len(raw) - 1)
    assert rejected.reason == "message too large"


def test_a_message_at_the_size_limit_is_accepted():
    raw = raw_envelope()
    open_envelope(raw, sign(raw), keys=KEYS, max_bytes=len(raw))


@pytest.mark.parametrize(("raw", "signature"), [(None, "x"), (b"{}", "x"), ("{}", None), ("{}", 42)])
def test_anything_but_two_strings_is_a_malformed_message(raw, signature):
    with pytest.raises(RejectedMessage) as caught:
        open_envelope(raw, signature, keys=KEYS, max_bytes=LIMIT)
    assert caught.value.reason == "malformed message"


def test_the_envelope_keeps_its_time_in_utc():
    raw = raw_envelope(occurred_at="2024-05-01T12:00:00+02:00")
    envelope, _ = open_envelope(raw, sign(raw), keys=KEYS, max_bytes=LIMIT)
    assert envelope.occurred_at.utcoffset().total_seconds() == 0
    assert envelope.occurred_at.hour == 10


def test_a_naive_timestamp_is_rejected():
    assert rejection(raw_envelope(occurred_at="2024-05-01T12:00:00")).reason == "invalid envelope"
