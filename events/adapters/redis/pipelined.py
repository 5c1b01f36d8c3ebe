"""A worker's commits without waiting for their replies: the next message is handled while Redis runs the last commit.

A solo worker handles one message at a time: read its documents (HMGET), handle, commit (the commit script, which
also acknowledges the message: store.py). Waiting for the script's reply before taking the next message kept the
worker idle for a round trip per message, on the busiest worker, while Redis and the other workers shared the
cores. Here the unit of work's reads and commits go through one connection of their own, in order: a commit is sent
and not waited for, and its reply is read before the next command's (`call`), or before the worker waits for more
messages (`drain`, from the consuming channel). Redis runs a connection's commands in the order they were sent, so
the next message's reads see the last commit's writes, as they did when the worker waited.

What a late reply can still say, and what happens then (`Pending.message` is the message as taken, still in the
worker's taken list: the script removes it from there only when it commits):
* 1, committed: nothing left to do;
* 0, the event was handled already (a duplicate delivery that overtook this one): the message is acknowledged now;
* -1, a document changed since it was read (another worker of the service), or an error reply (Redis at its memory
  limit, a script cache emptied by a restart): nothing was written, and the message goes back to its queue at once,
  to be handled again from fresh state; an error that is neither of those two counts as a delivery that may have
  died, so a message that always fails this way ends as a poison dead letter instead of circling;
* no reply (the connection broke): the commit may or may not have run; the message goes back to its queue, and if
  it had committed, its inbox mark turns the redelivery into a duplicate.
If Redis cannot take that follow-up either, the message stays in the taken list, which the worker puts back when it
reconnects, and its queue's outbox copy is re-sent by the relay: late, never lost.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from events.adapters.redis import kombu_channel
from events.adapters.redis.keys import Keys
from events.adapters.redis.scripts import OOM_IN_SCRIPT

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(frozen=True)
class Pending:
    """A commit sent and not answered yet: the message it acknowledges, as taken."""

    taken_key: str
    message: bytes
    queue: str
    outcome: list[Callable[[str], object]] = field(default_factory=list)
    """called with "handled", "duplicate" or "requeued" once the reply is read (`UnitOfWork.outcome_later`)"""

    def settled(self, outcome: str) -> None:
        for callback in self.outcome:
            try:
                callback(outcome)
            except Exception:  # a callback (telemetry) must not change the message's fate
                log.exception("a callback on a commit's outcome failed")


class PipelinedCommits:
    """The unit of work's commands of one solo worker, on one connection, with commit replies read late."""

    def __init__(self, client: redis.Redis, script: str) -> None:
        self.redis, self.script = client, script
        self._connection: Any = client.connection_pool.get_connection()
        self._sha: str | None = None
        self._pending: deque[Pending] = deque()
        self._lock = threading.Lock()
        self.late_refusals = 0
        """commits whose reply, read late, was not "committed" (their messages acknowledged or put back)"""

    def call(self, *command: Any) -> Any:
        """One command and its reply, after the replies of the commits sent before it."""
        with self._lock:
            self._drain()
            try:
                self._connection.send_command(*command)
                return self._connection.read_response()
            except CONNECTION_ERRORS:
                self._connection.disconnect()
                raise

    def commit(self, keys: Sequence[Any], args: Sequence[Any], pending: Pending) -> None:
        """Send the commit script; its reply is read later. Raises only when it could not be sent."""
        with self._lock:
            self._drain()
            if self._sha is None:
                self._sha = self.redis.script_load(self.script)
            try:
                self._connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            except CONNECTION_ERRORS:
                self._connection.disconnect()
                raise
            self._pending.append(pending)

    def drain(self) -> None:
        """Read every reply still due (before the worker waits for more messages, and when it stops); a broken
        connection is logged here, its messages put back."""
        with self._lock:
            try:
                self._drain()
            except CONNECTION_ERRORS as exc:
                log.warning("the replies of sent commits were lost with the connection (%r)", exc)

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self.drain()
        self._connection.disconnect()
        self.redis.connection_pool.release(self._connection)

    def _drain(self) -> None:
        while self._pending:
            pending = self._pending[0]
            try:
                reply = self._connection.read_response()
            except redis.exceptions.ResponseError as exc:  # one whole reply read: the connection stays in step
                self._pending.popleft()
                if str(exc).startswith("NOSCRIPT"):
                    self._sha = None
                self._put_back(pending, repr(exc), may_have_died=not _harmless(exc))
                continue
            except CONNECTION_ERRORS:
                self._connection.disconnect()
                lost = list(self._pending)
                self._pending.clear()
                for each in lost:
                    self._put_back(each, "no reply: the connection broke", may_have_died=False)
                raise
            self._pending.popleft()
            if reply == 1:
                pending.settled("handled")
            elif reply == 0:
                self._acknowledge_duplicate(pending)
            else:
                self._put_back(pending, "a document changed since it was read", may_have_died=False)

    def _acknowledge_duplicate(self, pending: Pending) -> None:
        """The event was handled meanwhile: nothing was written, and the message is done with."""
        self.late_refusals += 1
        pending.settled("duplicate")
        try:
            kombu_channel.acknowledge(self.redis, pending.taken_key, Keys.OUTBOX_PATTERN, pending.queue,
                                      pending.message)
        except redis.exceptions.RedisError as exc:
            log.warning("a duplicate's message stays taken until the worker reconnects (%r)", exc)

    def _put_back(self, pending: Pending, why: str, *, may_have_died: bool) -> None:
        """The commit was not made (or may not have been): the message goes back to its queue, to be handled again."""
        self.late_refusals += 1
        pending.settled("requeued")
        log.warning("a commit sent earlier was not made (%s): its message goes back to %s", why, pending.queue)
        try:
            kombu_channel.put_back(self.redis, pending.taken_key, pending.queue, pending.message,
                                   may_have_died=may_have_died)
        except redis.exceptions.RedisError as exc:
            log.warning("a message whose commit was not made stays taken until the worker reconnects (%r)", exc)


def _harmless(exc: redis.exceptions.ResponseError) -> bool:
    """Refusals that say nothing about the message: the memory limit, a script cache emptied by a restart."""
    text = str(exc)
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or OOM_IN_SCRIPT in text or text.startswith(
        ("NOSCRIPT", "OOM"))
