"""`shop status`: queue depths, messages in flight, unsettled outbox copies, relays, retries, dead letters and live
workers, one row per consuming service."""

from __future__ import annotations

from events.settings import BusSettings
from shop.bootstrap import bootstrap

COLUMNS = ("queue", "waiting", "in flight", "unsettled", "relayed", "retries", "outbox", "dead letters", "workers")


def status_rows(settings: BusSettings) -> list[tuple[str, ...]]:
    """The header, then one row per consuming service, then the unroutable dead letters."""
    wiring = bootstrap(settings)
    try:
        counts, evicted = wiring.dead_letters.counts(), wiring.dead_letters.evicted()
        dead = {name: f"{counts.get(name, 0)}" + (f" (+{evicted[name]} evicted)" if evicted.get(name) else "")
                for name in {*counts, *evicted}}
        rows: list[tuple[str, ...]] = [COLUMNS]
        for name, queue in wiring.queues().items():
            workers = queue["workers"]
            rows.append((name, str(queue["waiting"]), str(queue["in_flight"]), str(queue["unsettled"]),
                         str(queue["relayed"]), str(queue["retries"]), str(queue["outbox"]), dead.get(name, "0"),
                         str(len(workers)) if workers else "[red]0[/]"))
        rows.append(("(unroutable)", "-", "-", "-", "-", "-", "-", dead.get("unroutable", "0"), "-"))
        return rows
    finally:
        wiring.close()
