"""RabbitMQ as the broker: native routing, persistent messages, publisher confirms, native dead-lettering. Stores
commit outgoing events to their outbox; `AmqpBroker.send` delivers them (events/messaging.py, `OutboxSender`)."""
