"""`shop status`: queue depths, messages in flight, unsettled outbox copies, relays, retries, dead letters and live
workers, one row per consuming service."""

from __future__ import annotations

from events.settings import BusSettings
from shop.bootstrap import bootstrap, control_app

COLUMNS = ("queue", "waiting", "in flight", "unsettled", "relayed", "retries", "outbox", "dead letters", "workers")


def status_rows(settings: BusSettings) -> list[tuple[str, ...]]:
    """The header, then one row per consuming service, then the unroutable dead letters."""
    wiring = bootstrap(settings)
    try:
        try:
            replies = control_app(settings).control.inspect(timeout=1.0).ping() or {}
        except Exception:  # noqa: BLE001 - status must print even when the control channel fails
            replies = {}
        dead = wiring.dead_letters.counts()
        rows: list[tuple[str, ...]] = [COLUMNS]
        for name, queue in wiring.queues().items():
            workers = sorted(host for host in replies if host.startswith(f"{name}@"))
            rows.append((name, str(queue["waiting"]), str(queue["in_flight"]), str(queue["unsettled"]),
                         str(queue["relayed"]), str(queue["retries"]), str(queue["outbox"]), str(dead.get(name, 0)),
                         str(len(workers)) if workers else "[red]0[/]"))
        rows.append(("(unroutable)", "-", "-", "-", "-", "-", "-", str(dead.get("unroutable", 0)), "-"))
        return rows
    finally:
        wiring.close()
