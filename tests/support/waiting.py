"""Wait on a condition with a deadline (never a fixed sleep); stop processes for good."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from shop.supervisor import stop_process_group

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, message: str = "") -> T:
    """Return the first truthy value of `condition()`; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    stop_process_group(process, timeout)


def stop_gracefully(process: subprocess.Popen[bytes]) -> None:
    """SIGINT first: `shop up` stops its supervised children only on Ctrl-C (its children run in their own
    sessions, so a signal to this process group alone would orphan them); the monolith drains on it. Then
    `stop_process` makes sure the group is gone."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    stop_process(process)


def api_is_up(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
