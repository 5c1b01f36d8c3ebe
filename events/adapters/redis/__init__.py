"""Redis: the default broker (kombu's Redis transport, celery workers) and the store that lives beside it.

Because a service's state and the queues share one Redis, one Lua script commits documents, inbox mark, outgoing
messages and the ack together (`broker.COMMIT_SCRIPT`): the outbox guarantee without a relay at that step. The price:
a store that lives beside the broker. Keys are named in `keys.py` only; kombu's internals are touched in
`kombu_channel.py` only.
"""
