"""The short form of `shop chaos` (the long form: `shop chaos`, 5000 orders, is run by hand; see the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.chaos import run_chaos


@pytest.mark.chaos
def test_chaos_short_form_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    result = run_chaos(orders=300, kill_every=1.5, rate=30.0, poison_ratio=0.03, work_dir=tmp_path,
                       quiesce_timeout=180.0)
    assert result.passed, result.problems
    assert result.kills >= 3 and result.redis_restarts == 1
    assert result.poison_orders >= 1 and result.tampered_messages >= 1
    assert result.settled == result.orders - result.poison_orders
    assert result.dead_lettered == result.poison_orders + result.tampered_messages
