"""`shop bench --quick` end to end: real workers of every pipeline, a JSON with a number for each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_quick_bench_measures_every_mode_and_the_headline_ratio(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "shop", "bench", "--quick", "--out", str(out)],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=280,
    )
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    result = json.loads((out / "bench.json").read_text())
    measured = {name: mode for name, mode in result["modes"].items() if "skipped" not in mode}
    assert {"full-redis", "full-sqlite", "bare", "monolith", "monolith-queued"} <= set(measured)
    for name, mode in measured.items():
        assert mode["throughput"] > 0, name
        assert mode["cpu_ms_per_order"] > 0, name
        assert all(point["completed"] > 0 for point in mode["latency"]), name
    for name in measured.keys() - {"bare"}:
        assert result["ratios_over_bare"][name]["median"] > 0, name
    signed = result["signatures"]
    assert signed["signed"] >= 4 and signed["verified"] >= signed["signed"], signed
    assert signed["ed25519_sign_us"] > 0 and signed["ed25519_verify_us"] > 0 and signed["hmac_sha256_us"] > 0
    assert 0 < signed["share_of_worker_cpu"] < 1
    assert (out / "bench.png").stat().st_size > 0
    print(f"quick bench took {elapsed:.1f}s; ratios over bare: {result['ratios_over_bare']}")
