"""deploy/: compose files against the compose spec, Kubernetes manifests against Kubernetes' own
schemas, Prometheus config and rules with promtool, the Grafana dashboard against the rules,
and the images' Dockerfiles against the rules they must keep (pinned bases, non-root, health
checks, no secrets, no model libraries in the facade).

No Docker engine or cluster runs on this machine: ``docker compose config`` runs where the
client exists; everywhere, the files are checked against the published schemas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import check_jsonschema
import jsonschema
import kubernetes_validate
import pytest
import yaml

from loadtests.audit import AUDIT_TARGETS_MS
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
COMPOSE_SCHEMA = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
KUBERNETES_VERSION = "1.33.0"


class Reset:
    """Compose's ``!reset`` tag: the override removes what the base file set."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((DEPLOY / name).read_text(), Loader=ComposeLoader)


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge, ``!reset`` removes, the rest replaces."""
    if isinstance(override, Reset):
        return None
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            result[key] = merged(base.get(key), value)
        return {k: v for k, v in result.items() if v is not None}
    return override


def without_tags(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: without_tags(v) for k, v in document.items() if not isinstance(v, Reset)}
    if isinstance(document, list):
        return [without_tags(v) for v in document]
    return document


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    return json.loads(COMPOSE_SCHEMA.read_text())


# -- compose ---------------------------------------------------------------------------------


def test_compose_files_follow_the_compose_spec(compose_schema: dict[str, Any]) -> None:
    base, cpu = load_compose("docker-compose.yml"), load_compose("docker-compose.cpu.yml")
    local = load_compose("compose.local.yml")  # the stack make up runs here (tests/containers run it)
    for document in (base, without_tags(cpu), merged(base, cpu), local):
        jsonschema.validate(document, compose_schema)
    if compose_cli():
        for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]):
            command = ["docker", "compose", *(a for f in files for a in ("-f", str(DEPLOY / f))), "config", "-q"]
            subprocess.run(command, check=True, env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "checked"})


def compose_cli() -> bool:
    """Whether ``docker compose`` runs here (this machine has the docker client but not the plugin)."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def test_the_compose_spec_check_catches_a_broken_file(compose_schema: dict[str, Any]) -> None:
    broken = load_compose("docker-compose.yml")
    broken["services"]["facade"]["depends_on"]["redis"]["condition"] = "service_warm"
    with pytest.raises(jsonschema.ValidationError, match="service_warm"):
        jsonschema.validate(broken, compose_schema)


def test_compose_stack_shape() -> None:
    services = load_compose("docker-compose.yml")["services"]
    assert set(services) == {"model-server", "facade", "redis", "prometheus", "grafana"}
    server = services["model-server"]
    (gpu,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert server["shm_size"] == "2gb"
    # Every model ready, not Triton's /v2/health/ready, which passes before PyTriton binds them.
    assert server["healthcheck"]["test"] == ["CMD", "python", "-m", "milo_voice.serving.readiness"]
    # Health-gated start: the facade waits on a ready model server and a Redis that answers.
    assert services["facade"]["depends_on"] == {
        "model-server": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"] == ["redis-data:/data"]
    assert all(service["restart"] == "unless-stopped" for service in services.values())
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    # Secrets only from the environment at run time.
    for service in services.values():
        for name, value in service.get("environment", {}).items():
            if re.search("TOKEN|PASSWORD|SECRET|KEY", name):
                assert str(value).startswith("${"), f"{name} has a literal value"


def test_deployed_facades_are_not_told_a_weights_label() -> None:
    """Which weights translate is said by the model's replies (a content hash), never by a label
    set beside the facade, which stayed "main" whatever weights were pulled."""
    facade = load_compose("docker-compose.yml")["services"]["facade"]["environment"]
    config = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())
    assert not [name for name in (*facade, *config["data"]) if "REVISION" in name]


def test_the_cpu_override_removes_gpu_passthrough() -> None:
    stack = merged(load_compose("docker-compose.yml"), load_compose("docker-compose.cpu.yml"))
    server = stack["services"]["model-server"]
    assert "devices" not in server["deploy"]["resources"]["reservations"]
    assert server["environment"]["MILO_SERVER"] == "pytriton"
    assert server["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"


def test_the_model_server_and_the_facade_share_a_triton_key_from_outside() -> None:
    """The model server listens beyond loopback in its container: its inference endpoints need
    a key, which compose and Kubernetes take from the operator, never from a file here."""
    services = load_compose("docker-compose.yml")["services"]
    keys = {name: services[name]["environment"]["MILO_TRITON_KEY"] for name in ("model-server", "facade")}
    assert len(set(keys.values())) == 1 and next(iter(keys.values())).startswith("${MILO_TRITON_KEY:?")
    for manifest in ("model-server.yaml", "facade.yaml"):
        documents = list(yaml.safe_load_all((DEPLOY / "k8s" / manifest).read_text()))
        pods = [d["spec"]["template"]["spec"] for d in documents if d.get("kind") == "Deployment"]
        containers = [c for pod in pods for c in pod["containers"]]
        env = {e["name"]: e for c in containers for e in c.get("env", [])}
        assert env["MILO_TRITON_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "milo-secrets", "key": "triton-key"}


# -- images ----------------------------------------------------------------------------------


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "docker" / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("dockerfile", ["model-server.Dockerfile", "facade.Dockerfile"])
def test_images_are_pinned_non_root_healthchecked_and_secret_free(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    args = dict(value.split("=", 1) for op, value in steps if op == "ARG" and "=" in value)
    for op, value in steps:
        if op == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.split()[0])
            tag = image.rsplit(":", 1)[-1]
            assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {image}"
        if op in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY)\w*=", value), f"secret in {op} {value}"
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [value for op, value in final_stage if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" for op, _ in final_stage)


def test_the_model_server_image_serves_a_gpu_repository_and_documents_shm() -> None:
    text = (DEPLOY / "docker" / "model-server.Dockerfile").read_text()
    assert "--shm-size" in text and "triton-configs --instance-kind gpu" in text
    subprocess.run(["sh", "-n", str(DEPLOY / "docker" / "model-server-entrypoint.sh")], check=True)


def test_the_facade_image_installs_no_model_library() -> None:
    """The core package (what the facade image installs) and the facade's imports hold no model code."""
    heavy = ("torch", "ctranslate2", "faster_whisper", "transformers", "llama_cpp", "pytriton", "sentencepiece")
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in core if re.split(r"[\[=<>]", d)[0].replace("-", "_") in heavy]
    assert re.search(r"pip install \.( |$)", (DEPLOY / "docker" / "facade.Dockerfile").read_text(), re.MULTILINE)
    probe = f"import sys, api_facade.main; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"


# -- Kubernetes ------------------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()) if d]
    return documents


def by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kubernetes_manifests_follow_the_kubernetes_schemas() -> None:
    documents = k8s_documents()
    assert len(documents) >= 12
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    broken = by_kind("Deployment", "model-server")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_model_server_probes_gpu_and_queue_time_autoscaling() -> None:
    pod = by_kind("Deployment", "model-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["python", "-m", "milo_voice.serving.readiness"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    (metric,) = by_kind("HorizontalPodAutoscaler", "model-server")["spec"]["metrics"]
    adapter = yaml.safe_load(by_kind("ConfigMap", "milo-prometheus-adapter-rules")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]


def test_facade_replicas_share_redis_and_scale_on_cpu() -> None:
    deployment = by_kind("Deployment", "facade")
    assert deployment["spec"]["replicas"] >= 2
    config = by_kind("ConfigMap", "milo-facade")["data"]
    assert config["MILO_REDIS_URL"].startswith("redis://redis:")
    assert by_kind("StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    (metric,) = by_kind("HorizontalPodAutoscaler", "facade")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    for document in k8s_documents():
        if document["kind"] in ("Deployment", "StatefulSet"):
            assert document["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


# -- Prometheus and Grafana ------------------------------------------------------------------


def promtool(*args: str) -> str:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run `make setup` (Debian package prometheus)")
    result = subprocess.run(["promtool", *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_prometheus_config_and_rules_pass_promtool() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("test", "rules", "tests/alerts_test.yml")


def recording_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "recording.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alerting_targets_are_the_audit_table() -> None:
    from api_facade.main import create_app

    app = create_app()
    targets = {r["labels"]["route"]: float(r["expr"][7:-1]) for r in recording_rules() if "audit" in r["record"]}
    routes = {"health": "/health", "tts": "/v1/tts", "stt": "/v1/stt", "chat": "/v1/chat", "translate": "/v1/translate"}
    assert targets == {routes[name]: ms / 1000 for name, ms in AUDIT_TARGETS_MS.items()}
    assert set(targets) <= set(app.openapi()["paths"])


def test_the_dashboard_queries_defined_series() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "milo-voice.json").read_text())
    recorded = {rule["record"] for rule in recording_rules()}
    exported = {"milo_chat_active_sessions", "milo_triton_endpoint_up", "milo_model_ready",
                "milo_http_request_duration_seconds_count", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
                "nv_cpu_utilization", "nv_cpu_memory_used_bytes"}  # fmt: skip
    positions = set()
    for panel in dashboard["panels"]:
        positions.add((panel["gridPos"]["x"], panel["gridPos"]["y"]))
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            names = set(re.findall(r"[a-z_]+:[a-z0-9_]+|\b(?:milo|nv)_[a-z0-9_]+", target["expr"]))
            assert names and names <= recorded | exported, f"{panel['title']}: {names - recorded - exported}"
    assert len(positions) == len(dashboard["panels"])
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for subject in ("requests per second", "Queue", "Compute", "Batch size", "GPU", "audit", "errors", "sessions",
                    "cache hit"):  # fmt: skip
        assert subject.lower() in titles.lower(), subject
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "milo-voice.yml").read_text())
    grafana = load_compose("docker-compose.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana["volumes"]
