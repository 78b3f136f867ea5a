"""Render ``spec.serveConfigV2`` of the KubeRay manifests from ``serve_config.yaml`` (the one source of truth).

    python scripts/render_k8s.py            # rewrite the generated parts under k8s/
    python scripts/render_k8s.py --check    # exit 1 listing stale files (tests/unit/test_k8s_render.py does this)

What it derives from ``serve_config.yaml``, per manifest (``k8s/base`` and each ``k8s/overlays/*``):

* ``args.device: cuda``: pods have GPUs; ``cuda`` fails loudly on a pod without one, where ``auto`` would
  silently serve from the CPU.
* ``args.auth.required: true``: the pods get the API key from a Secret (``k8s/base/secret.yaml``) as the variable
  ``auth.api_key_env`` names; a missing key then fails the deployment instead of opening the API.
* ``max_replicas`` of the GPU deployments, capped so that their GPU shares at maximum fit the GPUs the worker
  groups can reach (``maxReplicas`` x ``nvidia.com/gpu``): when the sum of ``max_replicas x num_gpus`` exceeds
  them, each maximum is scaled down in proportion (never below ``min_replicas``). Replicas beyond the cluster's
  GPUs would only sit pending.

Everything else (placements, batching, autoscaling targets, HTTP options) is copied as it is. Which deployments
use GPUs is read from the application itself, as ``sam2_serve.deployments.app.bind_app`` binds it with ``device: cuda``.

It also holds ``kustomize_build``, the subset of ``kubectl kustomize`` the manifests use (resources, images,
JSON 6902 patches), so the rendered overlays can be checked where kubectl is not installed.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "serve_config.yaml"
K8S = ROOT / "k8s"
BASE_RAYSERVICE = K8S / "base" / "rayservice.yaml"
GENERATED_PATCH = "serve-config.patch.yaml"  # in each overlay
GPU_RESOURCE = "nvidia.com/gpu"
API_KEY_ENV = "SAM2_SERVE_API_KEY"  # sam2_serve.common.auth.DEFAULT_KEY_ENV; set from the Secret in rayservice.yaml


# ---- kustomize (the subset these manifests use) --------------------------------------------------------------

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """Apply RFC 6902 ``add``/``replace``/``remove`` operations (what kustomize applies for such patches)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise ValueError(f"unsupported patch op {kind!r}")
        else:
            if kind in ("replace", "remove") and last not in node:
                raise KeyError(f"patch path {op['path']} does not exist")
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            else:
                raise ValueError(f"unsupported patch op {kind!r}")
    return doc


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(wanted[k] == v for k, v in target.items())


def kustomize_build(directory: Path, skip_patches: tuple[str, ...] = ()) -> list[dict]:
    """The objects ``kubectl kustomize directory`` outputs (for the features listed in ``_KUSTOMIZATION_KEYS``)."""
    directory = Path(directory)
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}: teach kustomize_build first")
    objects: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        objects += kustomize_build(path) if path.is_dir() else load_docs(path)
    for patch in kust.get("patches", []):
        if patch["path"] in skip_patches:
            continue
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise ValueError(f"{directory / patch['path']}: only JSON 6902 patches (a list of ops) are supported")
        hits = [i for i, o in enumerate(objects) if _matches(o, patch["target"])]
        if not hits:
            raise ValueError(f"patch {patch['path']} in {directory} matches no object")
        for i in hits:
            objects[i] = json_patch(objects[i], ops)
    for image in kust.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return objects


def _containers(obj: dict) -> list[dict]:
    """Containers of every pod template of a RayService."""
    if obj.get("kind") != "RayService":
        return []
    cluster = obj["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---- GPU layout ----------------------------------------------------------------------------------------------

def load_serve_config(path: Path = SERVE_CONFIG) -> dict:
    return yaml.safe_load(Path(path).read_text())


def gpu_shares(app: dict) -> dict[str, float]:
    """``{deployment name: GPUs per replica}`` of the application when it runs on CUDA.

    Binds the real graph (``bind_app`` with ``device: cuda``; nothing is resolved or loaded) and applies the
    config's own ``ray_actor_options`` on top, as Serve does.
    """
    sys.path.insert(0, str(ROOT))
    from ray.serve._private.build_app import build_app as build_serve_app

    from sam2_serve.deployments.app import bind_app

    args = dict(app.get("args") or {}, device="cuda")
    built = build_serve_app(bind_app(args), name=app["name"])
    overrides = {d["name"]: d.get("ray_actor_options") or {} for d in app.get("deployments", [])}
    shares = {}
    for dep in built.deployments:
        gpus = overrides.get(dep.name, {}).get("num_gpus", (dep.ray_actor_options or {}).get("num_gpus", 0))
        if gpus:
            shares[dep.name] = float(gpus)
    return shares


def _quantity(value: Any) -> float:
    return float(value)  # GPUs are whole numbers; no Ki/Mi suffixes to parse


def worker_gpus(rayservice: dict) -> tuple[float, float]:
    """(GPUs at the worker groups' minReplicas, GPUs at their maxReplicas) of a RayService."""
    low = high = 0.0
    for group in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        per_pod = sum(_quantity((c.get("resources", {}).get("limits") or {}).get(GPU_RESOURCE, 0))
                      for c in group["template"]["spec"]["containers"])
        low += per_pod * group.get("minReplicas", 0)
        high += per_pod * group["maxReplicas"]
    return low, high


def replica_range(dep: dict) -> tuple[int, int]:
    """(min, max) replicas of one deployment entry of a Serve config."""
    auto = dep.get("autoscaling_config")
    if auto:
        return int(auto.get("min_replicas", 1)), int(auto.get("max_replicas", 1))
    n = int(dep.get("num_replicas", 1))
    return n, n


def gpu_demand(app: dict, shares: dict[str, float]) -> tuple[float, float]:
    """(GPUs at min_replicas, GPUs at max_replicas) of an application's GPU deployments."""
    deps = {d["name"]: d for d in app.get("deployments", [])}
    low = high = 0.0
    for name, share in shares.items():
        lo, hi = replica_range(deps.get(name, {"num_replicas": 1}))
        low += lo * share
        high += hi * share
    return low, high


def k8s_serve_config(config: dict, capacity: float, shares: dict[str, dict[str, float]] | None = None) -> dict:
    """``serve_config.yaml`` as the RayService runs it: ``device: cuda``, ``auth.required``, GPU maxima capped to
    ``capacity``."""
    out = copy.deepcopy(config)
    for app in out["applications"]:
        app.setdefault("args", {})["device"] = "cuda"
        auth = app["args"].setdefault("auth", {})
        auth["required"] = True
        auth.setdefault("api_key_env", API_KEY_ENV)
        app_shares = (shares or {}).get(app["name"]) or gpu_shares(app)
        deps = {d["name"]: d for d in app.get("deployments", [])}
        scalable = {n: s for n, s in app_shares.items() if (deps.get(n) or {}).get("autoscaling_config")}
        fixed = sum(s * replica_range(deps.get(n, {}))[1] for n, s in app_shares.items() if n not in scalable)
        wanted = sum(s * replica_range(deps[n])[1] for n, s in scalable.items())
        room = capacity - fixed
        if wanted > room + 1e-9:
            factor = room / wanted
            ceiling = {n: replica_range(deps[n])[1] for n in scalable}
            for name in scalable:
                lo, hi = replica_range(deps[name])
                deps[name]["autoscaling_config"]["max_replicas"] = max(lo, math.floor(hi * factor + 1e-9))
            # Rounding down leaves GPU fractions unused: hand them out one replica at a time, in config order.
            grown = True
            while grown:
                grown = False
                for name, share in scalable.items():
                    auto = deps[name]["autoscaling_config"]
                    used = sum(s * replica_range(deps[n])[1] for n, s in scalable.items())
                    if auto["max_replicas"] < ceiling[name] and used + share <= room + 1e-9:
                        auto["max_replicas"] += 1
                        grown = True
        low, high = gpu_demand(app, app_shares)
        if high > capacity + 1e-9:
            raise ValueError(f"application {app['name']!r} needs {low:g} GPUs at min_replicas and {high:g} at "
                             f"max_replicas, but the worker groups reach only {capacity:g}: add GPU workers")
        capacity -= high  # a second application gets what is left
    return out


def dump_serve_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120)


# ---- writing ---------------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"^(?P<indent>[ ]*)serveConfigV2: \|\n(?P<body>(?:(?P=indent)[ ]+.*\n|[ ]*\n)*)", re.M)


def replace_serve_block(manifest_text: str, serve_yaml: str) -> str:
    """``manifest_text`` with the literal block of ``serveConfigV2:`` replaced, comments elsewhere kept."""
    match = _BLOCK.search(manifest_text)
    if match is None:
        raise ValueError("no 'serveConfigV2: |' block found")
    pad = match["indent"] + "  "
    body = "".join(f"{pad}{line}\n" if line else "\n" for line in serve_yaml.splitlines())
    return manifest_text[:match.start("body")] + body + manifest_text[match.end("body"):]


def overlay_patch_text(serve_yaml: str) -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in serve_yaml.splitlines())
    return ("# GENERATED by scripts/render_k8s.py from serve_config.yaml for this overlay's GPU capacity: do not\n"
            "# edit; change serve_config.yaml (or the worker group in cluster.patch.yaml) and run the script.\n"
            "- op: replace\n  path: /spec/serveConfigV2\n  value: |\n" + body)


def _rayservice(objects: list[dict]) -> dict:
    found = [o for o in objects if o.get("kind") == "RayService"]
    if len(found) != 1:
        raise ValueError(f"expected one RayService, found {len(found)}")
    return found[0]


def overlays() -> list[Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def render(config_path: Path = SERVE_CONFIG) -> dict[Path, str]:
    """``{file: its generated text}`` for the base RayService and every overlay's serve-config patch."""
    config = load_serve_config(config_path)
    shares = {app["name"]: gpu_shares(app) for app in config["applications"]}
    files: dict[Path, str] = {}
    base_text = BASE_RAYSERVICE.read_text()
    base = yaml.safe_load(base_text)
    files[BASE_RAYSERVICE] = replace_serve_block(
        base_text, dump_serve_config(k8s_serve_config(config, worker_gpus(base)[1], shares)))
    for overlay in overlays():
        rayservice = _rayservice(kustomize_build(overlay, skip_patches=(GENERATED_PATCH,)))
        serve_yaml = dump_serve_config(k8s_serve_config(config, worker_gpus(rayservice)[1], shares))
        files[overlay / GENERATED_PATCH] = overlay_patch_text(serve_yaml)
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    return [p for p, text in files.items() if not p.is_file() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    args = parser.parse_args(argv)
    files = render()
    outdated = stale(files)
    if args.check:
        for path in outdated:
            print(f"stale: {path.relative_to(ROOT)} (run python scripts/render_k8s.py)")
        return 1 if outdated else 0
    for path in outdated:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
