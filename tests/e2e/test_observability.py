"""The observability stack of the compose file (deploy/prometheus, deploy/grafana, deploy/otel) asks for what the shop
really exports.

The metric names come from running the exporter of `shop metrics` (shop/metrics.py) against an empty Redis: every
query of the Grafana dashboard and every alert rule may only name those series (a renamed metric would otherwise leave
a panel silently empty and an alert silently never firing). Prometheus' own `promtool` checks the configuration,
the rules, the rules' unit tests (deploy/prometheus/alerts.test.yml) and the dashboard's queries when it is installed
(Debian's `prometheus` package ships it); the structural checks run everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shop.metrics import MetricsSettings, render
from shop.services import APIS, CONSUMERS, SERVICES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "shop.json"
COLLECTOR = ROOT / "deploy" / "otel" / "collector.yaml"
PROMETHEUS_OWN = {"up": {"job", "instance"}}  # series Prometheus writes itself for every target


# ---------------------------------------------------------------------------------------------------------------------
# What the exporter exports, and what a PromQL expression names
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def exported(redis_client: redis.Redis) -> dict[str, set[str]]:
    """{sample name: its label names}, as a scrape of `shop metrics --serve` sees them (on a flushed Redis: every
    family is exported whether or not anything was counted yet)."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(render(redis_client, SERVICES.values())):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
NAME = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """([(metric name, label names its matchers use)], label names of by/on/... clauses) of a PromQL expression:
    string literals, ranges and grouping clauses are set aside, and a name followed by `(` is a function."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    grouping = {label.strip() for labels in GROUPING.findall(text) for label in labels.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    found = []
    for match in NAME.finditer(text):
        name, matchers = match.group(1), match.group(2)
        if name in KEYWORDS or (not matchers and text[match.end():].lstrip().startswith("(")):
            continue
        found.append((name, set(MATCHER.findall(matchers or ""))))
    return found, grouping


def unknown_in(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What `expr` asks for that the exporter (or Prometheus itself) does not export: names, and labels."""
    known = {**exported, **PROMETHEUS_OWN}
    found, grouping = selectors(expr)
    problems = [f"metric {name}" for name, _ in found if name not in known]
    problems += [f"label {label} of {name}" for name, labels in found if name in known
                 for label in labels - known[name]]
    labels_in_play = set().union(*(known.get(name, set()) for name, _ in found))
    problems += [f"label {label}" for label in grouping - labels_in_play]
    return problems


def test_the_expression_reader_finds_names_and_labels_and_so_a_misspelt_metric() -> None:
    found, grouping = selectors('histogram_quantile(0.99, sum by (service, le) (rate(shop_handle_seconds_bucket'
                                '{service=~"$service|x"}[$__rate_interval]))) > 1 and on (queue) up{job="shop"} == 0')
    assert found == [("shop_handle_seconds_bucket", {"service"}), ("up", {"job"})]
    assert grouping == {"service", "le", "queue"}
    exported = {"shop_messages_total": {"service", "outcome"}}
    assert unknown_in('sum by (service) (rate(shop_messages_total{outcome="handled"}[5m]))', exported) == []
    assert unknown_in("rate(shop_mesages_total[5m])", exported) == ["metric shop_mesages_total"]
    assert unknown_in('shop_messages_total{queue="x"}', exported) == ["label queue of shop_messages_total"]
    assert unknown_in("sum by (node) (shop_messages_total)", exported) == ["label node"]


def test_the_exporter_exports_the_names_the_stack_is_built_on(exported: dict[str, set[str]]) -> None:
    assert exported == {
        "shop_messages_total": {"service", "outcome"},
        "shop_messages_failed_total": {"service"},
        "shop_handle_seconds_bucket": {"service", "le"},
        "shop_handle_seconds_count": {"service"},
        "shop_handle_seconds_sum": {"service"},
        "shop_dead_letters": {"service"},
        "shop_queue_waiting": {"queue"},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_dashboard_only_queries_metrics_and_labels_the_exporter_exports(exported: dict[str, set[str]]) -> None:
    queries = dashboard_queries()
    assert queries
    for title, expr in queries:
        assert selectors(expr)[0], f"{title}: no metric in {expr}"
        assert unknown_in(expr, exported) == [], f"{title}: {expr}"
    for variable in dashboard()["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]).groups()
        assert label in exported[metric], variable["name"]


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}
    needed = {"Throughput": "shop_messages_total", "latency": "shop_handle_seconds_bucket",
              "Queue depth": "shop_queue_waiting", "Dead letters": "shop_dead_letters",
              "Outcomes": "shop_messages_total"}
    for word, metric in needed.items():
        [title] = [title for title in panels if word in title]
        assert any(metric in target["expr"] for target in panels[title]["targets"]), title
    [latency] = [panel for title, panel in panels.items() if "latency" in title]
    assert {expr.split(",")[0] for expr in (target["expr"] for target in latency["targets"])} == {
        "histogram_quantile(0.5", "histogram_quantile(0.99"}
    [outcomes] = [panel for title, panel in panels.items() if "Outcomes" in title]
    assert all(outcome in outcomes["targets"][0]["expr"] for outcome in ("dead-lettered", "retried"))
    assert len({panel["id"] for panel in panels.values()}) == len(panels)


def test_grafana_provisions_the_prometheus_the_dashboard_asks_for() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    by_uid = {source["uid"]: source for source in sources["datasources"]}
    used = {panel["datasource"]["uid"] for panel in dashboard()["panels"]}
    used |= {target["datasource"]["uid"] for panel in dashboard()["panels"] for target in panel["targets"]}
    assert used == {"prometheus"}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shop.yml").read_text())["providers"]
    assert [provider["options"]["path"] for provider in providers] == ["/etc/grafana/dashboards"]


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------------------------------
def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_the_alerts_only_ask_for_what_the_exporter_exports(exported: dict[str, set[str]]) -> None:
    for name, rule in alert_rules().items():
        assert unknown_in(rule["expr"], exported) == [], name


def test_the_alerts_cover_dead_letters_backlog_missing_workers_and_latency() -> None:
    rules = alert_rules()
    assert {"ShopDeadLettersGrowing", "ShopQueueBacklog", "ShopNoLiveWorker", "ShopHandlerLatencyHigh"} <= set(rules)
    assert "shop_dead_letters" in rules["ShopDeadLettersGrowing"]["expr"]
    assert "shop_queue_waiting" in rules["ShopQueueBacklog"]["expr"] and rules["ShopQueueBacklog"]["for"] == "5m"
    assert "histogram_quantile(0.99" in rules["ShopHandlerLatencyHigh"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    # ShopNoLiveWorker joins a queue to its service by name: true of every service today.
    assert all(spec.queue == name for name, spec in CONSUMERS.items())


def test_prometheus_scrapes_shop_metrics_and_every_api() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = MetricsSettings.model_fields["port"].default
    assert [group["targets"] for group in jobs["shop"]["static_configs"]] == [[f"metrics:{port}"]]
    assert jobs["shop-api"]["metrics_path"] == "/metrics"
    targets = {target: group["labels"]["service"] for group in jobs["shop-api"]["static_configs"]
               for target in group["targets"]}
    assert targets == {f"{api.process_name}:{api.settings.model_fields['port'].default}": service
                       for service, api in APIS.items()}


# ---------------------------------------------------------------------------------------------------------------------
# The OpenTelemetry collector
# ---------------------------------------------------------------------------------------------------------------------
def test_the_collector_takes_otlp_over_http_and_hands_traces_to_jaeger() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and traces["exporters"] == ["otlp/jaeger"]
    assert set(traces["processors"]) <= set(config["processors"])


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus' own tool, where installed
# ---------------------------------------------------------------------------------------------------------------------
def promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: the `prometheus` package); structure checked above")
    return subprocess.run([binary, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_configuration_and_the_rules(tmp_path: Path) -> None:
    # Inside the container the rules sit at /etc/prometheus/alerts.yml; here next to a copy of the configuration.
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_runs_the_alerts_unit_tests() -> None:
    tested = promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # promtool parses PromQL offline only in rule files: each query becomes a recording rule, Grafana's variables
    # replaced by what they stand for.
    rules = [{"record": f"dashboard:query_{number}",
              "expr": expr.replace("$__rate_interval", "1m").replace("$service", ".*")}
             for number, (_, expr) in enumerate(dashboard_queries())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
