"""The supervisor restarts what dies, but not a child stopped on purpose (the console's "stop workers")."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from shop.supervisor import Supervisor
from tests.support.waiting import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    supervisor = Supervisor({"payment_service": SLEEPER, "order_service": SLEEPER}, report=lambda text: None,
                            backoff=0.01, max_backoff=0.01)
    supervisor.start()
    yield supervisor
    supervisor.stop(timeout=5)


def poll_for(supervisor: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        supervisor.poll()
        time.sleep(0.02)


def test_a_child_stopped_on_purpose_stays_stopped_until_started(supervisor: Supervisor) -> None:
    supervisor.stop_child("payment_service", timeout=5)
    poll_for(supervisor, 0.5)

    assert supervisor.alive() == {"payment_service": False, "order_service": True}
    assert supervisor.held() == ["payment_service"]

    supervisor.start_child("payment_service")

    assert supervisor.alive() == {"payment_service": True, "order_service": True}
    assert supervisor.held() == []


def test_a_child_that_dies_is_still_restarted(supervisor: Supervisor) -> None:
    victim = supervisor.children["order_service"].process
    assert victim is not None
    victim.kill()
    victim.wait()

    wait_until(lambda: (supervisor.poll(), supervisor.alive()["order_service"])[1], timeout=5, interval=0.02,
               message="the dead child to be restarted")
    assert supervisor.children["order_service"].restarts == 1


def test_an_unknown_child_cannot_be_stopped(supervisor: Supervisor) -> None:
    with pytest.raises(KeyError):
        supervisor.stop_child("nobody")
