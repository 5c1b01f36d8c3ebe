"""The short form of `shop chaos` on every store (the long form, 5000 orders, is run by hand; see the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.chaos import STORES, run_chaos
from shop.postgres_server import postgres_bindir


@pytest.mark.chaos
@pytest.mark.parametrize("store", STORES)
def test_chaos_short_form_loses_nothing_and_does_nothing_twice(store: str, tmp_path: Path) -> None:
    if store == "postgres" and postgres_bindir() is None:
        pytest.skip("PostgreSQL variant: no PostgreSQL server binaries (initdb, postgres) on this machine")
    result = run_chaos(orders=200, kill_every=1.0, rate=40.0, poison_ratio=0.03, work_dir=tmp_path,
                       quiesce_timeout=180.0, store=store)
    assert result.passed, result.problems
    assert result.kills >= 3 and result.redis_restarts == 1
    assert result.database_outages == (0 if store == "redis" else 1)
    assert result.poison_orders >= 1 and result.tampered_messages >= 1
    assert result.settled == result.orders - result.poison_orders
    assert result.dead_lettered == result.poison_orders + result.tampered_messages
