"""Long-running processes move their start-up heap out of the collector's way once they serve."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery.signals import worker_ready

from events.settings import BusSettings
from shop import worker
from shop.processes import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_lives_at_start_up_is_left_out_of_later_collections(unfrozen: None) -> None:
    kept_from_start_up = [[index] for index in range(1000)]
    assert gc.get_freeze_count() == 0
    freeze_startup_heap()
    assert gc.get_freeze_count() >= len(kept_from_start_up)


def test_a_worker_freezes_its_heap_once_celery_says_it_is_ready(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []

    def worker_main(argv: list[str]) -> None:  # celery's consumer sends worker_ready when it starts consuming
        frozen.append(gc.get_freeze_count())
        worker_ready.send(sender=None)
        frozen.append(gc.get_freeze_count())

    started = SimpleNamespace(app=SimpleNamespace(worker_main=worker_main), queue=SimpleNamespace(name="orders"),
                              node="order_service@test", start_background=lambda: None, stop_background=lambda: None)
    monkeypatch.setattr(worker, "bootstrap_worker", lambda *args, **kwargs: started)
    monkeypatch.setattr(worker, "configure_logging", lambda *args: None)
    monkeypatch.setattr(worker, "shutdown_tracing", lambda: None)
    try:
        worker.run_worker("order_service", BusSettings())
    finally:
        worker_ready.disconnect(worker._freeze_when_ready)
    assert frozen[0] == 0 < frozen[1]
