"""Fakes of the runtime's ports, so its decisions can be tested without a broker (as nameko's worker_factory does)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from events.deadletters import dead_letter_record


class FakeCounter:
    def __init__(self) -> None:
        self.deliveries: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[str] = Counter()

    def count(self, service: str, event_id: str) -> int:
        self.deliveries[(service, event_id)] += 1
        return self.deliveries[(service, event_id)]

    def forget(self, service: str, event_id: str) -> None:
        self.deliveries.pop((service, event_id), None)

    def count_retry(self, service: str) -> None:
        self.retries[service] += 1


class FakeDeadLetters:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        record = dead_letter_record(service, reason, detail, message, attempts)
        self.records.append(record)
        return record

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        return [record for record in self.records if service in (None, record["service"])]

    def get(self, record_id: str) -> dict[str, Any] | None:
        return next((record for record in self.records if record["id"] == record_id), None)

    def remove(self, record: dict[str, Any]) -> bool:
        if record in self.records:
            self.records.remove(record)
            return True
        return False

    def purge(self, service: str | None = None) -> int:
        gone = self.list(service)
        self.records = [record for record in self.records if record not in gone]
        return len(gone)

    def counts(self) -> dict[str, int]:
        return dict(Counter(record["service"] for record in self.records))

    def evicted(self) -> dict[str, int]:
        return {}

    @property
    def reasons(self) -> list[str]:
        return [record["reason"] for record in self.records]
