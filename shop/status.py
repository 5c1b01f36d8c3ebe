"""`shop status`: queue depths, messages in flight, unsettled outbox copies, relays, retries, dead letters and live
workers, one row per consuming service."""

from __future__ import annotations

from typing import Any

from events.settings import BusSettings
from shop.bootstrap import Wiring, bootstrap

COLUMNS = ("queue", "waiting", "in flight", "unsettled", "relayed", "retries", "outbox", "dead letters", "workers")
COUNTS = ("waiting", "in_flight", "unsettled", "relayed", "retries", "outbox")


def status_report(settings: BusSettings) -> dict[str, Any]:
    """What `shop status` shows, as data (`shop status --json`): the broker (no password), per consuming service its
    counts (null where the broker cannot tell: messages in flight on RabbitMQ, an outbox where commits publish by
    themselves, a queue not declared yet), dead letters (and how many the cap evicted) and live workers' node names;
    then the unroutable dead letters."""
    wiring = bootstrap(settings)
    try:
        return status_of(wiring)
    finally:
        wiring.close()


def status_of(wiring: Wiring) -> dict[str, Any]:
    """`status_report` over a wiring the caller keeps (the console asks every second)."""
    counts, evicted = wiring.dead_letters.counts(), wiring.dead_letters.evicted()
    services = {
        name: {**{count: None if queue[count] in ("-", "?") else queue[count] for count in COUNTS},
               "dead_letters": counts.get(name, 0), "evicted": evicted.get(name, 0), "workers": queue["workers"]}
        for name, queue in wiring.queues().items()
    }
    return {"broker": wiring.settings.broker_url.split("@")[-1], "services": services,
            "unroutable": {"dead_letters": counts.get("unroutable", 0), "evicted": evicted.get("unroutable", 0)}}


def dead(entry: dict[str, Any]) -> str:
    return f"{entry['dead_letters']}" + (f" (+{entry['evicted']} evicted)" if entry["evicted"] else "")


def status_rows(settings: BusSettings) -> list[tuple[str, ...]]:
    """The header, then one row per consuming service, then the unroutable dead letters."""
    report = status_report(settings)
    rows: list[tuple[str, ...]] = [COLUMNS]
    for name, queue in report["services"].items():
        workers = queue["workers"]
        rows.append((name, *(("?" if count == "waiting" else "-") if queue[count] is None else str(queue[count])
                             for count in COUNTS),
                     dead(queue), str(len(workers)) if workers else "[red]0[/]"))
    rows.append(("(unroutable)", "-", "-", "-", "-", "-", "-", dead(report["unroutable"]), "-"))
    return rows
