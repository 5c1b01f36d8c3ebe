"""The console of `shop monolith` (queued dispatch): the same endpoints over the one process, its in-process queue per
service on the board; stopping a service pauses its deliveries, starting it drains them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from shop.client import bearer, sign_in
from shop.embedded_redis import free_port
from tests.support.waiting import api_is_up, stop_gracefully, wait_until

ADMIN = ("admin@example.com", "admin-password-of-the-monolith-console")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(console URL, admin token)"""
    directory = tmp_path_factory.mktemp("monolith-console")
    api, console = free_port(), free_port()
    env = {**os.environ, "SHOP_ORDER_API_PORT": str(api), "SHOP_CONSOLE_PORT": str(console),
           "SHOP_MONOLITH_DISPATCH": "queued", "SHOP_VAR_DIR": str(directory / "var"),
           "SHOP_NOTIFICATION_LOG": str(directory / "notifications.log"),
           "SHOP_ADMIN_EMAIL": ADMIN[0], "SHOP_ADMIN_PASSWORD": ADMIN[1]}
    env.pop("SHOP_MONOLITH_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "shop", "monolith"], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL)
    urls = [f"http://127.0.0.1:{api}", f"http://127.0.0.1:{console}"]
    try:
        wait_until(lambda: process.poll() is not None or all(api_is_up(url) for url in urls), timeout=60,
                   interval=0.2, message="`shop monolith` and its console to answer")
        assert process.poll() is None, f"`shop monolith` exited with code {process.returncode}"
        yield urls[1], sign_in(urls[0], *ADMIN)[0]
    finally:
        stop_gracefully(process)


def waiting(console_url: str, service: str) -> int:
    board = httpx.get(f"{console_url}/api/board", timeout=10).json()
    assert board["mode"] == "monolith"
    return int(board["services"][service]["waiting"])


def test_a_paused_service_s_deliveries_wait_on_the_board_and_drain_when_it_resumes(console: tuple[str, str]) -> None:
    url, token = console
    action = {"headers": bearer(token), "timeout": 30}
    assert httpx.post(f"{url}/api/services/payment_service/stop", **action).status_code == 200

    placed = httpx.post(f"{url}/api/orders", json={"outcome": "paid", "count": 3}, **action)

    assert placed.status_code == 201, placed.text
    wait_until(lambda: waiting(url, "payment_service") >= 3, timeout=20, interval=0.1,
               message="the payment deliveries to wait on the board")
    assert httpx.get(f"{url}/api/board", timeout=10).json()["services"]["payment_service"]["stopped"] is True

    assert httpx.post(f"{url}/api/services/payment_service/start", **action).status_code == 200

    wait_until(lambda: waiting(url, "payment_service") == 0, timeout=20, interval=0.1,
               message="the payment deliveries to drain")


def test_poison_orders_are_refused_in_the_monolith(console: tuple[str, str]) -> None:
    url, token = console

    response = httpx.post(f"{url}/api/orders", json={"outcome": "poison", "count": 1}, headers=bearer(token),
                          timeout=30)

    assert response.status_code == 409
