"""The Kubernetes definitions in infra/ are checked as the cluster would check them, offline.

KubeRay's RayCluster and RayJob go through the CRDs' openAPIV3Schema (vendored in
infra/kuberay/schemas/, Kubernetes' own pod and service types included) with strict field
validation, as ``kubectl apply`` does; then through Ray's own autoscaler, which reads the groups
on the cluster; then through rules no schema states (requests within limits, GPUs only where the
GPU group is, credentials only from a Secret, an entrypoint that is a real sleepsound command).
The Prefect work pool's base job template goes through the Prefect server's validation, keeps
prefect-kubernetes' shape, and renders to a valid Kubernetes Job.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

INFRA = Path(__file__).resolve().parents[2] / "infra"
KUBERAY = INFRA / "kuberay"
SCHEMAS = KUBERAY / "schemas"
WORK_POOL = INFRA / "prefect" / "k8s-work-pool.json"
STOCK_WORK_POOL = INFRA / "prefect" / "prefect-kubernetes-0.8.0-default-base-job-template.json"
K8S_DEFS = "kubernetes-v1.33-defs.json"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
K8S_JOB = f"{K8S_DEFS}#/$defs/io.k8s.api.batch.v1.Job"
SCHEMA_FOR_KIND = {"RayCluster": "raycluster.v1.json", "RayJob": "rayjob.v1.json"}
SECRET = "sleepsound-env"
GPU = "nvidia.com/gpu"
JOB_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode")  # KubeRay v1.3's JobSubmissionMode
MANIFESTS = ("raycluster.yaml", "rayjob.yaml")
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|KEY|CREDENTIAL", re.IGNORECASE)
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


# --- validators -------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """Refuse unknown fields, as ``kubectl apply`` does, where the API server alone would prune them."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@cache
def _registry() -> Registry:
    """Every vendored schema by file name, so their relative ``$ref``s resolve offline."""
    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(contents if path.name == K8S_DEFS else _strict(contents))))
    return Registry().with_resources(resources)


def schema_errors(instance: Any, ref: str) -> list[str]:
    """``path: message`` for each way ``instance`` breaks the schema at ``ref``."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": ref}
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)
    )


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """What the API server would refuse in a ray.io/v1 RayCluster or RayJob (its metadata as ObjectMeta)."""
    schema = SCHEMA_FOR_KIND.get(manifest.get("kind", ""))
    if manifest.get("apiVersion") != "ray.io/v1" or schema is None:
        return [f"<root>: not a ray.io/v1 RayCluster or RayJob ({manifest.get('apiVersion')} {manifest.get('kind')})"]
    meta = schema_errors(manifest.get("metadata", {}), f"{K8S_DEFS}#/$defs/{OBJECT_META}")
    return schema_errors(manifest, schema) + [f"metadata/{e}" for e in meta]


# --- reading the manifests --------------------------------------------------------------------


@cache
def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


def manifest(name: str) -> dict[str, Any]:
    """A fresh copy, free to break."""
    return copy.deepcopy(_load(name))


def work_pool() -> dict[str, Any]:
    return json.loads(WORK_POOL.read_text())


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def ray_pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group, pod spec) of the head and every worker group."""
    spec = cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def all_pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Ray pods and, for a RayJob, the submitter pod."""
    yield from ray_pods(doc)
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]


def quantity(value: str | int | float) -> Decimal:
    from ray.autoscaler._private.kuberay.utils import parse_quantity

    return parse_quantity(str(value))


def rendered_work_pool_job(template: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes Job a flow run gets from the pool's defaults, as prefect-kubernetes builds it.

    Variables are applied with Prefect's own templating; then, as the worker's
    ``prepare_for_flow_run`` does, env becomes a list and the command an argument list.
    prefect-kubernetes requires ``parallelism``/``completions`` inside the pod spec (its base
    manifest), where Kubernetes drops them with a warning; they are left out of the check.
    """
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    values |= {"name": "calm-otter", "command": "prefect flow-run execute"}
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container.get("env", {}).items()]
    container["args"] = shlex.split(container["args"])
    for ignored in ("parallelism", "completions"):
        pod.pop(ignored)
    return job


def check_entrypoint(entrypoint: str) -> None:
    """Raise unless ``entrypoint`` is a sleepsound command whose options parse (nothing runs)."""
    import typer.main

    from sleepsound.cli import app

    argv = shlex.split(entrypoint)
    if argv[:1] != ["sleepsound"] or len(argv) < 2:
        raise ValueError(f"not a sleepsound command: {entrypoint!r}")
    group = typer.main.get_command(app)
    command = group.commands.get(argv[1])  # type: ignore[attr-defined]
    if command is None:
        raise ValueError(f"sleepsound has no command {argv[1]!r}")
    if any(a == "--ray-address" or a.startswith("--ray-address=") for a in argv):
        raise ValueError("a Ray job runs on its own cluster: leave --ray-address out")
    try:
        command.make_context(argv[1], argv[2:])  # parses only: unknown options, missing required ones
    except Exception as exc:
        if not any(cls.__name__ == "UsageError" for cls in type(exc).__mro__):  # click's, or typer's own copy
            raise
        raise ValueError(f"sleepsound {argv[1]}: {exc}") from exc


# --- the KubeRay manifests ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_pass_the_kuberay_crd_schema(name: str) -> None:
    assert crd_errors(manifest(name)) == []


def _worker(doc: dict[str, Any], group: str) -> dict[str, Any]:
    return next(g for g in cluster_spec(doc)["workerGroupSpecs"] if g["groupName"] == group)


def _gpu_container(doc: dict[str, Any]) -> dict[str, Any]:
    return _worker(doc, "gpu")["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "name, break_it, message",
    [
        ("raycluster.yaml", lambda m: m["spec"].update(workerGroupSpec=[]), "'workerGroupSpec' was unexpected"),
        ("raycluster.yaml", lambda m: m["spec"].pop("headGroupSpec"), "'headGroupSpec' is a required property"),
        ("raycluster.yaml", lambda m: _worker(m, "cpu").update(minReplicas="zero"), "'zero' is not of type 'integer'"),
        (
            "raycluster.yaml",
            lambda m: m["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "0 is not of type 'string'",
        ),
        ("raycluster.yaml", lambda m: _gpu_container(m).update(resource={}), "'resource' was unexpected"),
        (
            "raycluster.yaml",
            lambda m: _worker(m, "gpu")["template"]["spec"].update(tolerations={"key": GPU}),
            "is not of type 'array'",
        ),
        (
            "raycluster.yaml",
            lambda m: m["spec"]["autoscalerOptions"].update(upscalingMode="Eager"),
            "'Eager' is not one of",
        ),
        ("raycluster.yaml", lambda m: m["metadata"].update(name=7), "7 is not of type 'string'"),
        ("raycluster.yaml", lambda m: m.update(apiVersion="ray.io/v1alpha1"), "not a ray.io/v1 RayCluster or RayJob"),
        (
            "rayjob.yaml",
            lambda m: m["spec"].update(ttlSecondsAfterFinshed=60),
            "'ttlSecondsAfterFinshed' was unexpected",
        ),
        ("rayjob.yaml", lambda m: m["spec"].update(shutdownAfterJobFinishes="yes"), "'yes' is not of type 'boolean'"),
        ("rayjob.yaml", lambda m: _worker(m, "gpu").update(maxReplica=8), "'maxReplica' was unexpected"),
    ],
)
def test_a_broken_manifest_is_refused(name: str, break_it: Callable[[dict[str, Any]], Any], message: str) -> None:
    doc = manifest(name)
    break_it(doc)
    errors = crd_errors(doc)
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize("name", MANIFESTS)
def test_rays_autoscaler_sees_a_cpu_less_head_and_the_gpu_group(name: str) -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"metadata": {"name": "sleepsound", "namespace": "sleepsound"}, "spec": cluster_spec(manifest(name))}
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]  # also runs Ray's validate_config
    assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]
    assert types["gpu"]["resources"]["GPU"] == 1
    assert types["cpu"]["resources"]["CPU"] > 0 and "GPU" not in types["cpu"]["resources"]
    for group in ("cpu", "gpu"):
        assert types[group]["min_workers"] == 0 < types[group]["max_workers"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_head_serves_the_job_api_and_autoscales(name: str) -> None:
    spec = cluster_spec(manifest(name))
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0" and head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"]: p.get("name") for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports[8265] == "dashboard" and 10001 in ports
    assert spec["enableInTreeAutoscaling"] is True
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names))
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_container_has_requests_within_limits(name: str) -> None:
    doc = manifest(name)
    resources = [
        (f"{group}/{c['name']}", c.get("resources", {})) for group, pod in all_pods(doc) for c in pod["containers"]
    ]
    resources.append(("autoscaler", cluster_spec(doc)["autoscalerOptions"]["resources"]))
    for where, res in resources:
        requests, limits = res.get("requests", {}), res.get("limits", {})
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), where
        for key, request in requests.items():  # the API server refuses a request above its limit
            assert quantity(request) <= quantity(limits[key]), f"{where}: {key}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_only_the_gpu_group_asks_for_gpus_and_it_lands_on_gpu_nodes(name: str) -> None:
    for group, pod in ray_pods(manifest(name)):
        container = pod["containers"][0]
        gpus = container["resources"]["limits"].get(GPU)
        if group != "gpu":
            assert gpus is None and container["image"].endswith(":cpu"), group
            continue
        assert quantity(gpus) >= 1 and container["resources"]["requests"][GPU] == gpus  # extended resources: equal
        assert container["image"].endswith(":cuda")
        assert pod["nodeSelector"]
        assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_volume_mounts_name_declared_volumes_and_hf_home_is_one(name: str) -> None:
    for group, pod in all_pods(manifest(name)):
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            assert set(mounts) <= volumes, group
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if group != "submitter":
                assert env["HF_HOME"] in mounts.values(), group


def _env_entries(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``{name, value}`` env entry anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (e for e in value if isinstance(e, dict))
            yield from _env_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_entries(item)


@pytest.mark.parametrize("name", [*MANIFESTS, "work pool"])
def test_credentials_come_only_from_the_secret(name: str) -> None:
    if name == "work pool":
        doc, text = work_pool(), WORK_POOL.read_text()
        env_defaults = doc["variables"]["properties"]["env"]["default"]
        entries = [{"name": k, "value": v} for k, v in env_defaults.items()]
    else:
        doc, text = manifest(name), (KUBERAY / name).read_text()
        entries = list(_env_entries(doc))
    assert not AWS_KEY_ID.search(text)
    for entry in entries:
        assert "value" not in entry or not CREDENTIAL_NAME.search(entry["name"]), entry["name"]
    if name == "work pool":
        container = doc["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "{{ env_secret }}"}}]
        assert doc["variables"]["properties"]["env_secret"]["default"] == SECRET
        return
    for group, pod in ray_pods(doc):
        assert {"secretRef": {"name": SECRET}} in pod["containers"][0]["envFrom"], group


def secrets_sent_with_the_job(spec: dict[str, Any]) -> list[str]:
    """Secret-looking variables a RayJob hands Ray itself (its ``runtimeEnvYAML`` or ``NAME=value``
    in its entrypoint): Ray stores both and shows them on the dashboard and Jobs API in plain text."""
    from sleepsound.runs.submit import stays_here

    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    sent = dict(runtime_env.get("env_vars") or {})
    for word in shlex.split(spec["entrypoint"]):
        name, is_assignment, value = word.partition("=")
        if is_assignment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            sent[name] = value
    return sorted(name for name, value in sent.items() if stays_here(name, str(value)))


def test_the_rayjob_sends_no_secret_through_ray() -> None:
    """Credentials reach the job's driver and workers from the Secret in their pods' environment,
    never through Ray's job record."""
    spec = manifest("rayjob.yaml")["spec"]
    assert secrets_sent_with_the_job(spec) == []
    leaky = {
        **spec,
        "runtimeEnvYAML": "env_vars:\n  AWS_SECRET_ACCESS_KEY: x\n  AWS_DEFAULT_REGION: eu-west-2\n",
        "entrypoint": f"PREFECT_API_KEY=pnu_x {spec['entrypoint']}",
    }
    assert secrets_sent_with_the_job(leaky) == ["AWS_SECRET_ACCESS_KEY", "PREFECT_API_KEY"]


def test_the_rayjob_runs_the_raycluster_it_describes() -> None:
    import ray
    from packaging.version import Version

    cluster, job = manifest("raycluster.yaml"), manifest("rayjob.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    head_image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == head_image
    assert Version(cluster["spec"]["rayVersion"]).major == Version(ray.__version__).major


def test_the_rayjob_runs_a_real_sleepsound_command_and_cleans_up() -> None:
    spec = manifest("rayjob.yaml")["spec"]
    check_entrypoint(spec["entrypoint"])
    assert shlex.split(spec["entrypoint"])[1] in ("run", "score", "train", "nightly")
    # KubeRay's own ValidateRayJobSpec rules (ray-operator/controllers/ray/utils/validation.go)
    assert spec["submissionMode"] in JOB_MODES
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0


@pytest.mark.parametrize(
    "entrypoint, message",
    [
        ("python -m sleepsound score", "not a sleepsound command"),
        ("sleepsound scor --source s3://b/c --root s3://b/r", "no command 'scor'"),
        ("sleepsound score --sorce s3://b/c --root s3://b/r", "No such option"),
        ("sleepsound score --root s3://b/r", "Missing parameter: source"),
        ("sleepsound score --source s3://b/c --root s3://b/r --ray-address auto", "leave --ray-address out"),
    ],
)
def test_a_wrong_entrypoint_is_refused(entrypoint: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_entrypoint(entrypoint)


# --- the Prefect work pool ----------------------------------------------------------------------


def test_the_work_pool_template_passes_the_prefect_servers_validation() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = work_pool()
    WorkPoolCreate(name="sleepsound-k8s", type="kubernetes", base_job_template=template)
    variables = template["variables"]
    jsonschema.validators.validator_for(variables).check_schema(variables)
    defaults = {k: p["default"] for k, p in variables["properties"].items() if "default" in p}
    jsonschema.validate(defaults, variables)  # as Prefect checks a deployment's job variables


def test_an_undeclared_work_pool_variable_is_refused() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = work_pool()
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ imagee }}"
    with pytest.raises(ValueError, match="undeclared variable"):
        WorkPoolCreate(name="sleepsound-k8s", type="kubernetes", base_job_template=template)


def _stock_template() -> dict[str, Any]:
    """prefect-kubernetes' own default template: the installed worker's, else the vendored copy."""
    try:
        from prefect_kubernetes.worker import KubernetesWorker
    except ImportError:
        return json.loads(STOCK_WORK_POOL.read_text())
    return KubernetesWorker.get_default_base_job_template()


def _key_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {p for k, v in node.items() for p in {f"{prefix}/{k}"} | _key_paths(v, f"{prefix}/{k}")}
    if isinstance(node, list) and node:
        return _key_paths(node[0], f"{prefix}/0")
    return set()


def test_the_work_pool_template_keeps_prefect_kubernetes_shape() -> None:
    mine, stock = work_pool(), _stock_template()
    assert set(mine["job_configuration"]) == set(stock["job_configuration"])
    stock_paths = _key_paths(stock["job_configuration"]["job_manifest"])
    assert stock_paths <= _key_paths(mine["job_configuration"]["job_manifest"])
    for name, prop in stock["variables"]["properties"].items():  # a stock pool's job variables work here too
        ours = mine["variables"]["properties"][name]
        assert (ours.get("type"), ours.get("anyOf"), ours.get("enum")) == (
            prop.get("type"),
            prop.get("anyOf"),
            prop.get("enum"),
        ), name


def test_the_work_pool_renders_a_valid_kubernetes_job_with_the_sleepsound_image() -> None:
    job = rendered_work_pool_job(work_pool())
    assert schema_errors(job, K8S_JOB) == []
    container = job["spec"]["template"]["spec"]["containers"][0]
    head = manifest("raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"]
    assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
    for key, request in container["resources"]["requests"].items():
        assert quantity(request) <= quantity(container["resources"]["limits"][key]), key


def test_a_broken_work_pool_job_is_refused() -> None:
    template = work_pool()
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["containers"][0]["envFrom"] = {"secretRef": {"name": "{{ env_secret }}"}}  # an object, not a list
    errors = schema_errors(rendered_work_pool_job(template), K8S_JOB)
    assert any("is not of type 'array'" in e for e in errors), errors


def test_prefect_kubernetes_accepts_the_rendered_job_when_installed() -> None:
    """With the worker's package at hand, its own job configuration model and flow-run preparation."""
    worker = pytest.importorskip("prefect_kubernetes.worker")
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = work_pool()
    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    config = worker.KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], values))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="calm-otter"))
    job = copy.deepcopy(config.job_manifest)
    for ignored in ("parallelism", "completions"):
        job["spec"]["template"]["spec"].pop(ignored)
    assert schema_errors(job, K8S_JOB) == []
