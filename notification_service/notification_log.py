"""The notification log: one JSON object per line, the customer-visible "sent" channel of this demo.

A file cannot join a Redis transaction, so exactly-once is made here: the log knows the ids of its recent lines and
refuses a second line for the same id, under an exclusive lock so two workers sharing the file cannot both write it.
A crash after the line is written but before the service commits is therefore harmless: the redelivery finds the line
and only commits. Such a redelivery comes back within the redelivery window (the restarted worker takes back what it
held; the relay re-sends after SHOP_REDELIVER_AFTER), so the log remembers the last `remember` ids, not every id it
ever wrote: its memory stays bounded however long the log grows, and a restart reads only the log's tail. Once the
service has committed, its own store refuses the duplicate (`notify_customer`), whatever the log remembers.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

LINE_BYTES = 512
"""More than a notification line takes: how far back from the end a restart starts reading for `remember` lines."""


class NotificationLog:
    def __init__(self, path: Path, remember: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the life of the worker
        self._remember = remember
        self._known: OrderedDict[str, None] = OrderedDict()  # the most recent ids, oldest first
        # the tail only: a start in the middle of a line reads a torn line, which _catch_up skips
        self._read_up_to = max(0, os.fstat(self._file.fileno()).st_size - remember * LINE_BYTES)

    def send(self, notification_id: str, line: dict[str, Any]) -> bool:
        """Append `line` unless a line for `notification_id` is already there. True if it was written now."""
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            self._catch_up()
            if notification_id in self._known:
                return False
            prefix = b"" if self._ends_with_newline() else b"\n"  # close a torn line left by a crash
            self._file.write(prefix + json.dumps(line, separators=(",", ":")).encode() + b"\n")
            self._file.flush()
            self._read_up_to = self._file.tell()
            self._learn(notification_id)
            return True
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Learn the ids of lines appended since we last looked (by other workers, or before a restart)."""
        self._file.seek(self._read_up_to)
        chunk = self._file.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        for raw in complete.splitlines():
            try:
                self._learn(str(json.loads(raw)["notification_id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line left by a crash mid-write: never ours to count
        self._read_up_to += len(complete)

    def _learn(self, notification_id: str) -> None:
        self._known[notification_id] = None
        if len(self._known) > self._remember:
            self._known.popitem(last=False)

    def _ends_with_newline(self) -> bool:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return True
        self._file.seek(size - 1)
        return self._file.read(1) == b"\n"

    def close(self) -> None:
        self._file.close()


def read_notifications(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log (for `shop logs`, checks and tests)."""
    return read_notifications_from(path, 0)[0]


def read_notifications_from(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines written at or after byte `offset`, and the offset to read from next time, so that
    following the log (`shop logs -f`) reads each byte once. A line still being written is left for the next call;
    a torn line (a crash mid-write) is skipped."""
    if not Path(path).exists():
        return [], offset
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        chunk = log_file.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    lines = []
    for raw in complete.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines, offset + len(complete)
