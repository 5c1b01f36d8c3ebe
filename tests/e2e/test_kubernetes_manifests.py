"""deploy/k8s runs the same shop as `shop up`, and Kubernetes' own schemas accept it.

No cluster is needed: every manifest of a built-in kind is validated by kubernetes-validate (the API server's OpenAPI
schemas, strict: an unknown field is an error) for a recent Kubernetes release; KEDA's kinds (ScaledObject,
TriggerAuthentication) are custom resources kubernetes-validate has no schema for, so their required fields are
checked here by hand. Above all, each Deployment runs exactly the `shop ...` command `shop up` supervises (as
tests/e2e/test_compose_file.py holds docker-compose.yml to it), each worker scales on its own queue, and each pod
mounts its own service's private key and every public key, nothing more.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from shop.processes import shop_processes
from shop.services import APIS, CONSUMERS, SERVICES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.35"  # a recent release whose schemas kubernetes-validate ships
SECRET_TEMPLATE = "secrets.example.yaml"  # the Secrets' shape with placeholders, deliberately not applied by -k
KEDA = "keda.sh/v1alpha1"
CUSTOM_KINDS = {(KEDA, "ScaledObject"), (KEDA, "TriggerAuthentication")}
BESIDES_SHOP_UP = {"metrics": ["shop", "metrics", "--serve"]}  # long-running, but `shop up` does not start it
PLACEHOLDER = "CHANGE-ME"


@functools.cache
def load(name: str) -> list[dict[str, Any]]:
    """Parsed once per file (callers copy before changing anything)."""
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file, resource) for every manifest, the Secret template included; the kustomization is no resource."""
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load(path.name)]


def of_kind(kind: str, api_version: str | None = None) -> dict[str, dict[str, Any]]:
    found = {doc["metadata"]["name"]: doc for _, doc in manifests()
             if doc["kind"] == kind and api_version in (None, doc["apiVersion"])}
    assert found, f"no {kind}"
    return found


def process_name(resource: dict[str, Any]) -> str:
    """A resource's name is the process's with dashes (`order-api` runs order_api): names are DNS labels."""
    return str(resource["metadata"]["name"]).replace("-", "_")


def deployments() -> dict[str, dict[str, Any]]:
    return {process_name(doc): doc for doc in of_kind("Deployment").values()}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def the_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the `valueFrom` mapping."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def secret_template(name: str) -> dict[str, str]:
    secrets = {doc["metadata"]["name"]: doc for doc in load(SECRET_TEMPLATE) if doc["kind"] == "Secret"}
    return secrets[name]["stringData"]


def pod_workloads() -> dict[str, dict[str, Any]]:
    """Every Deployment (by process name) and the Job."""
    return {**deployments(), **{doc["metadata"]["name"]: doc for doc in of_kind("Job").values()}}


# ---------------------------------------------------------------------------------------------------------------------
# What the ecosystem's tools see
# ---------------------------------------------------------------------------------------------------------------------
def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "shop"
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert SECRET_TEMPLATE not in kustomization["resources"], "an apply would overwrite the real Secrets"


def test_every_built_in_kind_validates_strictly_against_kubernetes_schemas() -> None:
    validated = set()
    for name, resource in manifests():
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']}: {path}: {error.message}")
        validated.add(resource["kind"])
    assert validated == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job"}


def test_strict_validation_refuses_an_unknown_field_and_has_no_schema_for_keda() -> None:
    # The check above can fail: a misspelt field is refused...
    broken = copy.deepcopy(next(iter(of_kind("Deployment").values())))
    broken["spec"]["template"]["spec"]["containers"][0]["comand"] = ["shop", "up"]
    with pytest.raises(kubernetes_validate.ValidationError, match="comand"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    # ...and KEDA's kinds are not skipped silently: kubernetes-validate knows no CRD, hence the structural tests below.
    for resource in [*of_kind("ScaledObject", KEDA).values(), *of_kind("TriggerAuthentication", KEDA).values()]:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_kubectl_kustomize_builds_every_resource_into_the_namespace() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the kustomization's resource list is checked above")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    resources = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    applied = [doc for name, doc in manifests() if name != SECRET_TEMPLATE]
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in resources) == sorted(
        (doc["kind"], doc["metadata"]["name"]) for doc in applied)
    for doc in resources:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "shop", doc["metadata"]["name"]


# ---------------------------------------------------------------------------------------------------------------------
# Same processes, same commands
# ---------------------------------------------------------------------------------------------------------------------
def test_one_deployment_per_shop_process_plus_the_metrics_exporter() -> None:
    assert set(deployments()) == set(shop_processes()) | set(BESIDES_SHOP_UP)


def test_every_deployment_runs_exactly_the_shop_command_that_shop_up_runs() -> None:
    found = deployments()
    for name, argv in {**shop_processes(), **BESIDES_SHOP_UP}.items():
        container = the_container(found[name])
        assert container["command"] == argv, name
        assert "args" not in container, f"{name}: the command alone says what runs"


def test_every_worker_deployment_is_named_after_its_service() -> None:
    for name in CONSUMERS:
        assert the_container(deployments()[name])["command"] == ["shop", "worker", name]


def test_every_worker_is_alive_while_its_heartbeat_is() -> None:
    import shop.cli

    for name in CONSUMERS:
        probe = the_container(deployments()[name])["livenessProbe"]
        assert probe["exec"]["command"] == ["shop", "health", name]
    assert "health" in typer.main.get_command(shop.cli.app).commands  # type: ignore[attr-defined]


def test_a_job_declares_the_topology_and_migrates_every_database() -> None:
    jobs = of_kind("Job")
    assert len(jobs) == 1
    job = next(iter(jobs.values()))
    assert the_container(job)["command"] == ["shop", "declare"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1


def test_the_image_is_the_shops_own() -> None:
    for name, workload in pod_workloads().items():
        assert the_container(workload)["image"] == "shop:latest", name


# ---------------------------------------------------------------------------------------------------------------------
# The APIs
# ---------------------------------------------------------------------------------------------------------------------
def test_each_api_listens_on_its_own_port_behind_a_service() -> None:
    services = {process_name(doc): doc for doc in of_kind("Service").values()}
    for service, api in APIS.items():
        deployment = deployments()[api.process_name]
        container = the_container(deployment)
        prefix = api.settings.model_config["env_prefix"]
        port = api.settings.model_fields["port"].default
        env = env_of(container)
        assert env[f"{prefix}HOST"] == "0.0.0.0", service
        assert env[f"{prefix}PORT"] == str(port), service
        assert container["ports"] == [{"name": "http", "containerPort": port}], service
        front = services[api.process_name]["spec"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert front["selector"].items() <= pod_labels.items(), service
        assert deployment["spec"]["selector"]["matchLabels"] == front["selector"], service
        assert front["ports"] == [{"name": "http", "port": port, "targetPort": "http"}], service


def test_each_api_is_ready_when_its_store_and_broker_answer_and_alive_while_it_answers() -> None:
    for service, api in APIS.items():
        container = the_container(deployments()[api.process_name])
        assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}, service
        assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}, service
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live", service


# ---------------------------------------------------------------------------------------------------------------------
# KEDA: each worker on the length of its own queue (structural: kubernetes-validate has no schema for KEDA's kinds)
# ---------------------------------------------------------------------------------------------------------------------
def test_every_worker_scales_on_the_length_of_its_own_queue() -> None:
    scaled = {process_name(doc): doc for doc in of_kind("ScaledObject", KEDA).values()}
    authentications = of_kind("TriggerAuthentication", KEDA)
    assert set(scaled) == set(CONSUMERS)
    for name, spec in CONSUMERS.items():
        scaled_object = scaled[name]
        assert scaled_object["metadata"]["name"], name
        target = scaled_object["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment", name
        assert process_name({"metadata": {"name": target["name"]}}) == name
        assert the_container(deployments()[name])["command"] == ["shop", "worker", name]
        assert "replicas" not in deployments()[name]["spec"], f"{name}: `kubectl apply` would undo KEDA's scaling"
        low, high = scaled_object["spec"]["minReplicaCount"], scaled_object["spec"]["maxReplicaCount"]
        assert 1 <= low <= high, f"{name}: never 0, a worker relays its service's outbox"
        [trigger] = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "redis", name
        assert trigger["metadata"]["listName"] == spec.queue, name
        assert int(trigger["metadata"]["listLength"]) > 0, name
        assert all(isinstance(value, str) for value in trigger["metadata"].values()), f"{name}: KEDA wants strings"
        assert trigger["authenticationRef"]["name"] in authentications, name


def test_keda_reads_the_redis_address_and_password_from_the_redis_secret() -> None:
    [authentication] = of_kind("TriggerAuthentication", KEDA).values()
    references = {ref["parameter"]: (ref["name"], ref["key"]) for ref in authentication["spec"]["secretTargetRef"]}
    assert references == {"address": ("shop-redis", "address"), "password": ("shop-redis", "password")}
    assert {"address", "password", "REDIS_URL"} <= set(secret_template("shop-redis"))


# ---------------------------------------------------------------------------------------------------------------------
# Keys, secrets, the pods' limits
# ---------------------------------------------------------------------------------------------------------------------
def keys_volume(workload: dict[str, Any]) -> dict[str, Any] | None:
    container = the_container(workload)
    directory = env_of(container).get("SHOP_KEYS_DIR")
    if directory is None:
        return None
    [mount] = [mount for mount in container.get("volumeMounts", []) if mount["mountPath"] == directory]
    assert mount["readOnly"] is True
    [volume] = [volume for volume in pod_spec(workload)["volumes"] if volume["name"] == mount["name"]]
    return volume


def test_each_pod_mounts_exactly_its_own_private_key_and_every_public_key() -> None:
    public = {f"{name}.pub" for name in SERVICES}
    signer = {**{name: name for name in CONSUMERS}, **{api.process_name: service for service, api in APIS.items()}}
    available = set(secret_template("shop-keys"))
    assert available == public | {f"{name}.key" for name in SERVICES}
    for name, workload in pod_workloads().items():
        volume = keys_volume(workload)
        if name not in signer:
            assert volume is None, f"{name} signs nothing: no keys"
            assert all("secret" not in source for item in pod_spec(workload).get("volumes", [])
                       for source in item.get("projected", {}).get("sources", [])), name
            continue
        assert volume is not None, name
        [source] = volume["projected"]["sources"]
        assert source["secret"]["name"] == "shop-keys", name
        items = source["secret"]["items"]
        assert all(item["key"] == item["path"] for item in items), f"{name}: files keep their names"
        held = [item["path"] for item in items]
        assert len(held) == len(set(held)) and set(held) == public | {f"{signer[name]}.key"}, name
        assert set(held) <= available, name


def test_the_broker_and_databases_come_from_secrets_never_from_the_manifests() -> None:
    for name, workload in pod_workloads().items():
        container = the_container(workload)
        env = env_of(container)
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "shop-redis", "key": "REDIS_URL"}}, name
        assert {"secretRef": {"name": "shop-databases"}} in container["envFrom"], name
        assert {"configMapRef": {"name": "shop-config"}} in container["envFrom"], name
        for variable, value in env.items():
            assert not (isinstance(value, str) and "://" in value), f"{name}: {variable} belongs in a Secret"
    config = next(iter(of_kind("ConfigMap").values()))["data"]
    assert not any("://" in value or "PASSWORD" in key for key, value in config.items())


def test_the_secret_template_holds_placeholders_and_a_database_per_service() -> None:
    from events.settings import StoreSettings

    redis = secret_template("shop-redis")
    assert redis["password"] == PLACEHOLDER and f":{PLACEHOLDER}@" in redis["REDIS_URL"]
    assert redis["REDIS_URL"].endswith("@" + redis["address"] + "/0")
    database_url = secret_template("shop-databases")["SHOP_DATABASE_URL"]
    assert database_url.startswith("postgresql://") and f":{PLACEHOLDER}@" in database_url
    for service in SERVICES:
        assert StoreSettings(database_url=database_url).url_for(service, Path("var")).endswith(f"/{service}")
    assert all(PLACEHOLDER in value for value in secret_template("shop-keys").values())
    assert secret_template("shop-admin")["SHOP_ADMIN_PASSWORD"] == PLACEHOLDER


def test_pods_run_as_the_images_non_root_user_with_requests_and_limits() -> None:
    assert "--uid 10001" in (ROOT / "Dockerfile").read_text()
    for name, workload in pod_workloads().items():
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        container = the_container(workload)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security["readOnlyRootFilesystem"] is True, name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, f"{name}: {bound}"
