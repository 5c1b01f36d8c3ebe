"""`shop compare --quick` end to end: both modes start, every scenario runs, and the report holds a sane number in
every cell. The numbers themselves belong to the machine; what must hold anywhere is that nothing accepted is lost
and nobody is notified twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.brokers import TEST_REDIS_URL

CLAIMS = ("Direct calls are faster", "One transaction is easier to keep consistent", "Failure is isolated",
          "Each service owns its data", "Services scale independently", "Independent deployment")


@pytest.fixture
def compare_environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"this test needs Redis at {TEST_REDIS_URL}")
    client.flushdb()
    yield {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        "SHOP_VAR_DIR": str(tmp_path / "var"),
    }
    client.flushdb()
    client.close()


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.timeout(240)
def test_quick_compare_writes_a_complete_table(tmp_path: Path, compare_environment: dict[str, str]) -> None:
    out = tmp_path / "compare"

    finished = subprocess.run(
        [sys.executable, "-m", "shop", "compare", "--quick", "--out", str(out)],
        env=compare_environment, capture_output=True, text=True, timeout=180,
    )

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((out / "compare.json").read_text())
    table = (out / "compare.md").read_text()
    assert results["machine"]["cores"] >= 1
    for claim in CLAIMS:
        assert claim in table
    for mode in ("microservices", "monolith"):
        run = results[mode]
        for percentile in ("p50_ms", "p95_ms", "p99_ms"):
            assert _positive(run["latency"][percentile]), (mode, run["latency"])
        assert _positive(run["saturation"]["orders_per_s"]), (mode, run["saturation"])
        for scenario in ("outage", "database_outage"):
            outage = run[scenario]
            assert outage["accepted"] > 0 and outage["finished"] == outage["accepted"] and outage["lost"] == 0, outage
        deployment = run["deployment"]
        assert deployment["never_accepted"] == 0 and deployment["lost"] == 0, deployment
        assert _positive(deployment["max_ms"]), deployment
        for units in (1, 2):
            assert _positive(run["scaling"][f"orders_per_s_{units}"]), run["scaling"]
        assert _positive(run["scaling"]["rss_mib_of_unit_2"]), run["scaling"]
        assert run["duplicate_notifications"] == 0
    # The monolith answers with the final state: a reader never sees an order half done.
    consistency = results["monolith"]["consistency"]
    assert consistency["final_at_answer"] == consistency["orders"] and consistency["in_between_reads"] == 0
