"""The ecosystem's own checker on the live APIs: schemathesis generates requests from each API's OpenAPI document
and runs every check it has (`--checks all`: no 5xx, documented statuses and content types, response schemas,
Allow headers, schema-valid data accepted and invalid data refused, ...). Settings in schemathesis.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.adapters.ed25519.keyring import KeyRing
from shop.bootstrap import edge_of
from shop.embedded_redis import free_port
from shop.services import APIS
from shop.supervisor import stop_process_groups
from tests.support.waiting import api_is_up, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`shop api <service>` for each API, on free ports, its own SQLite stores and the test Redis."""
    from tests.support.brokers import TEST_REDIS_URL

    work = tmp_path_factory.mktemp("contracts")
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL, "SHOP_VAR_DIR": str(work / "var"),
           "SHOP_DATABASE_URL": f"sqlite:///{work}/db/{{service}}.sqlite3", "SHOP_LOG_MESSAGES": "false"}
    urls, processes = {}, []
    for service, api in APIS.items():
        port = free_port()
        prefix = api.settings.model_config["env_prefix"]
        processes.append(subprocess.Popen([sys.executable, "-m", "shop", "api", service],
                                          env={**env, f"{prefix}PORT": str(port)}, start_new_session=True))
        urls[service] = f"http://127.0.0.1:{port}"
    try:
        for url in urls.values():
            wait_until(lambda url=url: api_is_up(url), timeout=60, message=f"{url} never answered")
        yield urls
    finally:
        stop_process_groups(processes)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service", sorted(APIS))
def test_schemathesis_finds_nothing(apis: dict[str, str], service: str) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("schemathesis is not installed (it comes with the test extra)")
    admin = edge_of(KeyRing.load(Path(os.environ["SHOP_KEYS_DIR"]))).issue("admin-1", "admin")
    done = subprocess.run(
        [binary, "run", f"{apis[service]}/openapi.json", "--checks", "all", "--seed", "1",
         "-H", f"Authorization: Bearer {admin}", "--no-color"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    print(f"schemathesis on the {service} API:", done.stdout[-1200:])  # its verdict, shown with `pytest -s`
