"""Monitoring in k8s/: the PodMonitor scrapes every Ray pod on the port Ray exports its metrics on, Prometheus may
reach that port, and the pods log JSON. Schema validation of every manifest (the PodMonitor's included) is in
test_k8s.py, whose helpers these tests share."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.unit.test_k8s import (K8S, KUSTOMIZATIONS, _id, _matches, _pod_templates, _rayservice, built,  # noqa: F401
                                 crd_validators, render)

KUBERAY_METRICS_PORT = "8080"  # KubeRay's default metrics-export-port


def _ray_groups(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port(directory, built):
    objects = built[_id(directory)]
    rs = _rayservice(objects)
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint.get("path", "/metrics") == "/metrics"
    for group in _ray_groups(rs):
        labels = group["template"].get("metadata", {}).get("labels", {})
        assert _matches(spec["selector"], labels), f"the PodMonitor does not select {labels}"
        port = int(group["rayStartParams"].get("metrics-export-port", KUBERAY_METRICS_PORT))
        for container in group["template"]["spec"]["containers"]:
            named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert named.get(endpoint["port"]) == port, (container["name"], named, port)
    # Ray's Grafana dashboards filter by the cluster label KubeRay puts on its pods.
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster"} in \
        endpoint["relabelings"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_prometheus_may_reach_the_metrics_port_and_pods_log_json(directory, built):
    objects = built[_id(directory)]
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    metrics_rules = [r for r in policy["spec"]["ingress"] if {p["port"] for p in r.get("ports", [])} == {8080}]
    assert metrics_rules, "the NetworkPolicy keeps Prometheus off the metrics port"
    for template in _pod_templates(_rayservice(objects)):
        for container in template["spec"]["containers"]:
            assert {"name": "RAY_SERVE_LOG_ENCODING", "value": "JSON"} in container.get("env", []), container["name"]


def test_podmonitor_validation_can_fail(crd_validators):
    (monitor,) = render.load_docs(K8S / "base" / "podmonitor.yaml")
    crd_validators["PodMonitor"].validate(monitor)
    for path, key, value, match in [
        (("spec", "podMetricsEndpoints", 0), "intervall", "15s", "intervall"),
        (("spec", "podMetricsEndpoints", 0), "interval", "15 seconds", "does not match"),
        (("spec", "podMetricsEndpoints", 0, "relabelings", 0), "action", "rename", "is not one of"),
        (("spec",), "selectors", {}, "selectors"),
    ]:
        bad = copy.deepcopy(monitor)
        node = bad
        for k in path:
            node = node[k]
        node[key] = value
        with pytest.raises(jsonschema.ValidationError, match=match):
            crd_validators["PodMonitor"].validate(bad)
    bad = copy.deepcopy(monitor)
    del bad["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError, match="'selector' is a required property"):
        crd_validators["PodMonitor"].validate(bad)
