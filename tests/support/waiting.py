"""Wait on a condition with a deadline (never a fixed sleep); stop processes for good."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

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
