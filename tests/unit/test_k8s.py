"""The manifests under k8s/ are valid, strictly, and agree with serve_config.yaml, the Dockerfile and each other.

KubeRay objects are checked against the KubeRay CRDs (``tests/data/kuberay`` or ``$SAM2_SERVE_KUBERAY_CRDS``) with
unknown fields rejected, as kubeconform does; the PodMonitor against the part of the Prometheus Operator's CRD it
may use (``tests/podmonitor.py``, strict); core objects against Kubernetes' own schemas (kubernetes-validate,
offline, strict). ``spec.serveConfigV2`` is a string to the CRD: it is parsed and checked with Ray's schema.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from tests.podmonitor import PODMONITOR_SCHEMA
from tests.strict_serve import serve_config_problems

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests target; fields used exist since 1.19
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}


def _load_render():
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


# ---- schemas ----------------------------------------------------------------------------------------------------

def strict_schema(schema):
    """``additionalProperties: false`` on every object schema listing ``properties`` without its own rule."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict_schema(s) for s in out[key]]
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    folder = Path(os.environ.get("SAM2_SERVE_KUBERAY_CRDS", ROOT / "tests" / "data" / "kuberay"))
    missing = [f for f in CRD_FILES.values() if not (folder / f).is_file()]
    assert not missing, f"KubeRay CRDs {missing} missing from {folder} (they ship in tests/data/kuberay)"
    validators = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((folder / name).read_text())
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strict_schema(v1["schema"]["openAPIV3Schema"])
        validators[kind] = jsonschema.Draft7Validator(schema)
    validators["PodMonitor"] = jsonschema.Draft7Validator(strict_schema(PODMONITOR_SCHEMA))
    return validators


def validate(obj: dict, crd_validators) -> None:
    """Raise ``jsonschema.ValidationError`` / ``kubernetes_validate.ValidationError`` if ``obj`` is invalid."""
    kind = obj["kind"]
    if kind == "PodMonitor":
        crd_validators[kind].validate(obj)
    elif kind in crd_validators:
        assert obj["apiVersion"] == "ray.io/v1", f"{kind} must use ray.io/v1"
        crd_validators[kind].validate(obj)
        for template in _pod_templates(obj):  # the pod specs once more, against Kubernetes' own schema
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pod_templates(obj: dict) -> list[dict]:
    cluster = obj["spec"]["rayClusterConfig"] if obj["kind"] == "RayService" else obj["spec"]
    return [g["template"] for g in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]]


# ---- what is under k8s/ -------------------------------------------------------------------------------------------

def _is_manifest(path: Path) -> bool:
    return path.name != "kustomization.yaml" and not path.name.endswith(".patch.yaml")


MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if _is_manifest(p))
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    """{kustomization dir: the objects it renders}."""
    return {_id(d): render.kustomize_build(d) for d in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return render.load_serve_config()


@pytest.fixture(scope="module")
def shares(serve_config) -> dict[str, float]:
    (app,) = serve_config["applications"]
    return render.gpu_shares(app)


def _rayservice(objects: list[dict]) -> dict:
    (rs,) = [o for o in objects if o["kind"] == "RayService"]
    return rs


def _serve_v2(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def test_layout():
    assert MANIFEST_FILES and (K8S / "base") in KUSTOMIZATIONS
    assert {p.name for p in OVERLAYS} >= {"single-gpu", "multi-gpu"}


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=_id)
def test_manifest_files_validate(path, crd_validators):
    docs = render.load_docs(path)
    assert docs
    for obj in docs:
        validate(obj, crd_validators)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_rendered_kustomizations_validate(directory, built, crd_validators):
    objects = built[_id(directory)]
    assert [o["kind"] for o in objects].count("RayService") == 1
    for obj in objects:
        validate(obj, crd_validators)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: the Python build stands alone")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_python_kustomize_equals_kubectl(directory, built):
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(out.stdout), key=key) == sorted(built[_id(directory)], key=key)


# ---- validation can fail ------------------------------------------------------------------------------------------

def _base_rayservice() -> dict:
    return _rayservice(render.load_docs(K8S / "base" / "rayservice.yaml"))


@pytest.mark.parametrize("path, typo", [
    (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "minReplica"),
    (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers", 0), "resource"),
    (("spec",), "upgradeStrategyy"),
])
def test_misspelt_field_fails_crd_validation(path, typo, crd_validators):
    rs = _base_rayservice()
    validate(rs, crd_validators)
    node = rs
    for key in path:
        node = node[key]
    node[typo] = 1
    with pytest.raises(jsonschema.ValidationError, match=typo):
        crd_validators["RayService"].validate(rs)


def test_wrong_type_fails_crd_validation(crd_validators):
    rs = _base_rayservice()
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        crd_validators["RayService"].validate(rs)
    rs = _base_rayservice()
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        crd_validators["RayService"].validate(rs)


def test_core_objects_fail_validation_when_wrong():
    (ingress,) = render.load_docs(K8S / "base" / "ingress.yaml")
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    bad = copy.deepcopy(ingress)
    bad["spec"]["rules"][0]["http"]["paths"][0]["pathTyp"] = "Prefix"
    with pytest.raises(kubernetes_validate.ValidationError, match="pathTyp"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(ingress)
    bad["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError, match="is not of type 'integer'"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# ---- the cluster the RayService asks for ----------------------------------------------------------------------

@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_cluster_shape(directory, built):
    rs = _rayservice(built[_id(directory)])
    spec = rs["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert spec["upgradeStrategy"]["type"] in ("NewCluster", "None")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head must not run replicas"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group has nvidia.com/gpu limits"
    for group in gpu_groups:
        assert 1 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), "GPU nodes are usually tainted"
        for c in group["template"]["spec"]["containers"]:
            res = c["resources"]
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
            assert {"cpu", "memory"} <= set(res["limits"]) and {"cpu", "memory"} <= set(res["requests"])
    images = {c["image"] for t in _pod_templates(rs) for c in t["spec"]["containers"]}
    assert len(images) == 1, f"head and workers must run the same image (the head builds the app): {images}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_http_path_reaches_serve(directory, built):
    objects = built[_id(directory)]
    rs = _rayservice(objects)
    port = _serve_v2(rs)["http_options"]["port"]
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": port} in [dict(name=p["name"], containerPort=p["containerPort"])
                                                         for p in head["ports"]]
    ingresses = [o for o in objects if o["kind"] == "Ingress"]
    assert ingresses
    for ing in ingresses:
        backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        # KubeRay names the Service that follows the serving cluster "<RayService name>-serve-svc".
        assert backends == [{"name": f"{rs['metadata']['name']}-serve-svc", "port": {"number": port}}]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_network_policy_closes_ray_ports(directory, built):
    """Every Ray pod is selected by the NetworkPolicy; Ray's ports admit only Ray pods (and the operator on the
    dashboard port, Prometheus on the metrics port); the Serve port is the one port open to everyone."""
    objects = built[_id(directory)]
    rs = _rayservice(objects)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    pods = [t.get("metadata", {}).get("labels", {}) for t in _pod_templates(rs)]
    assert len(pods) >= 2 and all(_matches(spec["podSelector"], labels) for labels in pods)
    serve_port = _serve_v2(rs)["http_options"]["port"]
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers = rule.get("from")
        if peers is None:  # open to every source: only the API port
            assert ports == {serve_port}, rule
        elif not ports:  # every port: only from pods of this service's Ray clusters
            assert peers and all(set(p) == {"podSelector"} and any(_matches(p["podSelector"], labels)
                                                                     for labels in pods) for p in peers), rule
        else:  # the operator talks to the dashboard, Prometheus scrapes the metrics port
            peer = {8265: "kuberay-operator", 8080: "prometheus"}.get(min(ports)) if len(ports) == 1 else None
            assert peer, rule
            assert all(p["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": peer} for p in peers), rule


# ---- serveConfigV2: one source of truth --------------------------------------------------------------------------

def test_generated_files_are_up_to_date():
    stale = render.stale(render.render())
    assert not stale, f"run python scripts/render_k8s.py; stale: {[str(p.relative_to(ROOT)) for p in stale]}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_serve_config_v2_is_strictly_valid(directory, built):
    assert serve_config_problems(_serve_v2(_rayservice(built[_id(directory)]))) == []


def _without_derived(config: dict, shares: dict[str, float]) -> dict:
    """``config`` minus what render_k8s derives: the device, auth.required and the GPU deployments' max_replicas."""
    config = copy.deepcopy(config)
    for app in config["applications"]:
        app["args"].pop("device", None)
        app["args"].get("auth", {}).pop("required", None)
        for dep in app["deployments"]:
            if dep["name"] in shares and "autoscaling_config" in dep:
                dep["autoscaling_config"].pop("max_replicas")
    return config


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_serve_config_v2_matches_serve_config_yaml(directory, built, serve_config, shares):
    v2 = _serve_v2(_rayservice(built[_id(directory)]))
    assert _without_derived(v2, shares) == _without_derived(serve_config, shares)
    (app,) = v2["applications"]
    assert app["args"]["device"] == "cuda"
    original = {d["name"]: d for d in serve_config["applications"][0]["deployments"]}
    for dep in app["deployments"]:
        if dep["name"] in shares and "autoscaling_config" in dep:
            assert dep["autoscaling_config"]["max_replicas"] <= original[dep["name"]]["autoscaling_config"][
                "max_replicas"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_gpu_deployments_fit_the_worker_groups(directory, built, shares):
    rs = _rayservice(built[_id(directory)])
    (app,) = _serve_v2(rs)["applications"]
    deps = {d["name"]: d for d in app["deployments"]}
    assert shares, "no deployment asks for a GPU on device=cuda"
    for name in shares:  # every GPU deployment autoscales and never to zero (a cold start loads a model)
        auto = deps.get(name, {}).get("autoscaling_config")
        assert auto and auto["min_replicas"] >= 1, f"{name}: autoscaling_config with min_replicas >= 1 needed"
    at_min, at_max = render.gpu_demand(app, shares)
    workers_min, workers_max = render.worker_gpus(rs)
    assert at_min <= workers_min, f"min_replicas need {at_min} GPUs but only {workers_min} are always up"
    assert at_max <= workers_max, f"max_replicas need {at_max} GPUs but the workers reach only {workers_max}"
    for name, original in _original_max(shares).items():  # capped only where the next replica would not fit
        if deps[name]["autoscaling_config"]["max_replicas"] < original:
            assert at_max + shares[name] > workers_max, f"{name} capped although a GPU share is left for it"


def _original_max(shares) -> dict[str, int]:
    config = render.load_serve_config()
    deps = {d["name"]: d for d in config["applications"][0]["deployments"]}
    return {n: deps[n]["autoscaling_config"]["max_replicas"] for n in shares if "autoscaling_config" in deps[n]}


def test_render_caps_and_refuses(serve_config, shares):
    before = copy.deepcopy(serve_config)
    capped = render.k8s_serve_config(serve_config, 1.0, {"sam2": shares})
    assert serve_config == before
    assert 0 < render.gpu_demand(capped["applications"][0], shares)[1] <= 1.0
    with pytest.raises(ValueError, match="add GPU workers"):
        render.k8s_serve_config(serve_config, min(shares.values()) / 2, {"sam2": shares})


# ---- the image ---------------------------------------------------------------------------------------------------

def test_dockerfile_agrees_with_the_project(serve_config):
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"rayproject/ray:{ray.__version__}-py311-gpu"], froms
    runs = [line for line in re.findall(r"^RUN\s+(.*(?:\\\n.*)*)", text, re.M)]
    torch_at = next(i for i, r in enumerate(runs) if re.search(r"\btorch==", r))
    sam2_at = next(i for i, r in enumerate(runs) if "sam2==" in r)
    assert torch_at < sam2_at and "--no-build-isolation" in runs[sam2_at]
    assert re.search(r"^ARG SAM2_MODEL=" + re.escape(serve_config["applications"][0]["args"]["model"]) + "$",
                     text, re.M), "the baked checkpoint must be the model serve_config.yaml serves"
    assert re.search(r"^ENV SAM2_SERVE_CHECKPOINT_DIR=\S+", text, re.M)
