"""A JSON schema for the Prometheus Operator's ``PodMonitor`` (``monitoring.coreos.com/v1``), for test_k8s.py.

The operator's CRDs are not shipped in tests/data (unlike KubeRay's), so this is the part of the CRD's
``openAPIV3Schema`` that k8s/base/podmonitor.yaml can use: the same field names, types, enums and patterns as the
CRD (prometheus-operator 0.7x-0.9x), every other field left out. test_k8s makes it strict (unknown fields are
errors), so a misspelt or unsupported field fails as it would against the real CRD; a field the real CRD has but
this subset lacks fails too, until it is added here.
"""

from __future__ import annotations

_STR = {"type": "string"}
_STRINGS = {"type": "array", "items": _STR}
# Prometheus durations, e.g. 30s, 1m30s (the CRD's pattern for interval and scrapeTimeout).
_DURATION = {"type": "string",
             "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR = {"type": "object", "properties": {
    "matchLabels": {"type": "object", "additionalProperties": _STR},
    "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"], "properties": {
        "key": _STR, "operator": _STR, "values": _STRINGS}}}}}
_RELABEL_ACTIONS = ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
                    "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase",
                    "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]
_RELABEL = {"type": "object", "properties": {
    "action": {"type": "string", "enum": _RELABEL_ACTIONS},
    "modulus": {"type": "integer"},
    "regex": _STR,
    "replacement": _STR,
    "separator": _STR,
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "targetLabel": _STR}}
_ENDPOINT = {"type": "object", "properties": {
    "port": _STR,
    "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
    "path": _STR,
    "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _RELABEL},
    "metricRelabelings": {"type": "array", "items": _RELABEL}}}

PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": _STR, "namespace": _STR,
            "labels": {"type": "object", "additionalProperties": _STR},
            "annotations": {"type": "object", "additionalProperties": _STR}}},
        "spec": {"type": "object", "required": ["selector"], "properties": {
            "jobLabel": _STR,
            "podTargetLabels": _STRINGS,
            "namespaceSelector": {"type": "object", "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS}},
            "selector": _LABEL_SELECTOR,
            "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT}}},
    },
}
