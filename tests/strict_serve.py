"""Strict validation of Serve config files (serve_config.yaml, a RayService's serveConfigV2).

Ray's schemas (``ray.serve.schema.ServeDeploySchema`` and the models under it, ``AutoscalingConfig``) ignore
unknown keys: a misspelt ``max_replica`` is dropped without a word and the default applies. ``serve_config_problems``
parses with Ray's own schema and then walks the same pydantic models to report every key they do not declare,
validates every ``autoscaling_config`` with ``ray.serve.config.AutoscalingConfig`` and the application ``args``
with ``sam2_serve.deployments.app.AppArgs`` (which forbids unknown keys itself).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


def _field_keys(model: type[BaseModel]) -> dict[str, str]:
    """{key accepted in input: field name} for a pydantic v2 model."""
    keys = {}
    for name, field in model.model_fields.items():
        keys[name] = name
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                keys[alias] = name
    return keys


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Dotted paths of keys in ``data`` that ``model`` (and the models nested in it) do not declare."""
    if not isinstance(data, dict) or model.model_config.get("extra") == "allow":
        return []
    keys = _field_keys(model)
    problems = [f"{path}{k}: unknown key for {model.__name__} (Ray would ignore it)" for k in data if k not in keys]
    for key, value in data.items():
        if key in keys:
            problems += _walk(model.model_fields[keys[key]].annotation, value, f"{path}{key}.")
    return problems


def _walk(annotation: Any, value: Any, path: str) -> list[str]:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _walk(args[0], value, path)
    if origin in (Union, types.UnionType):
        # Union[Dict, SomeConfig]: Serve turns the dict into SomeConfig later, so hold it to the model.
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(value, dict) and models:
            return unknown_keys(models[0], value, path)
        lists = [a for a in args if get_origin(a) in (list, typing.List)]
        return _walk(lists[0], value, path) if isinstance(value, list) and lists else []
    if origin in (list, typing.List) and isinstance(value, list) and args:
        return [p for i, item in enumerate(value) for p in _walk(args[0], item, f"{path}{i}.")]
    if origin in (dict, typing.Dict) and isinstance(value, dict) and len(args) == 2:
        return [p for k, v in value.items() for p in _walk(args[1], v, f"{path}{k}.")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return unknown_keys(annotation, value, path)
    return []


def serve_config_problems(config: dict) -> list[str]:
    """Everything wrong with a Serve multi-application config, strictly; [] when it is right."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from sam2_serve.deployments.app import AppArgs

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return [f"ServeDeploySchema: {exc}"]
    problems = unknown_keys(ServeDeploySchema, config)
    for i, app in enumerate(config.get("applications", [])):
        where = f"applications.{i}"
        if app.get("import_path") == "sam2_serve.deployments.app:build_app":
            try:
                AppArgs.model_validate(app.get("args") or {})
            except ValidationError as exc:
                problems.append(f"{where}.args: {exc}")
        for j, dep in enumerate(app.get("deployments", [])):
            auto = dep.get("autoscaling_config")
            if auto is not None:
                try:
                    AutoscalingConfig.model_validate(auto)
                except ValidationError as exc:
                    problems.append(f"{where}.deployments.{j}.autoscaling_config: {exc}")
    return problems
