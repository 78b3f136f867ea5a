"""The Docker image's Python side, without Docker: exactly the files the Dockerfile copies (.dockerignore applied)
build a wheel, which installed on its own (``pip install --target``) serves serve_config.yaml's import path and the
browser page, and runs the Dockerfile's checkpoint-baking line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam2_serve.models.registry import get_spec
from tests.packaging import ROOT, DockerIgnore, build_wheel, copy_build_context, dockerfile_instructions


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, list[str]]:
    """(target folder of the installed wheel, files the COPY lines put in the WORKDIR)."""
    tmp = tmp_path_factory.mktemp("docker")
    copied = copy_build_context(ROOT, tmp / "workdir")
    wheel = build_wheel(tmp / "workdir", tmp / "dist")
    target = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target, copied


def _isolated_env(target: Path, **extra: str) -> dict:
    """Only the installed copy: no worktree on PYTHONPATH (and the cwd is elsewhere, so not on sys.path either)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def test_copy_lines_take_the_package_and_leave_the_rest(installed):
    _, copied = installed
    assert {"pyproject.toml", "README.md", "sam2_serve/__init__.py", "sam2_serve/deployments/app.py",
            "sam2_serve/web/index.html"} <= set(copied)
    assert not [f for f in copied if f.startswith(("tests/", "bench/", "k8s/", "checkpoints/")) or "__pycache__" in f]


def test_installed_wheel_serves_the_config_import_path_and_the_page(installed, tmp_path):
    target, _ = installed
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    import_paths = sorted({app["import_path"] for app in config["applications"]})
    assert import_paths == ["sam2_serve.deployments.app:build_app"]
    probe = (
        "import importlib, json, sys\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    module, _, attr = path.partition(':')\n"
        "    m = importlib.import_module(module)\n"
        "    out[path] = [m.__file__, callable(getattr(m, attr))]\n"
        "print(json.dumps(out))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", probe, *import_paths], cwd=elsewhere, env=_isolated_env(target),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, (module_file, is_callable) in json.loads(done.stdout.strip().splitlines()[-1]).items():
        assert Path(module_file).resolve().is_relative_to(target.resolve()), (path, module_file)
        assert is_callable, path
    page = sorted(p.name for p in (ROOT / "sam2_serve" / "web").iterdir() if p.suffix in (".html", ".js", ".css"))
    assert "index.html" in page
    for name in page:
        installed_file = target / "sam2_serve" / "web" / name
        assert installed_file.is_file(), f"{name} is not in the wheel"
        assert installed_file.read_bytes() == (ROOT / "sam2_serve" / "web" / name).read_bytes()
    (metadata,) = target.glob("sam2_serve-*.dist-info/METADATA")
    assert "\n# sam2-serve\n" in metadata.read_text(), "the wheel was built without README.md (its readme)"
    assert not (target / "common").exists() and not (target / "models").exists()
    assert not (target / "deployments").exists() and not (target / "tests").exists()


def test_dockerfile_installs_the_server_extra():
    runs = [args for instruction, args in dockerfile_instructions(ROOT / "Dockerfile") if instruction == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert any(re.search(r"""(^|\s)["']?\.\[([\w,-]*,)?server(,[\w,-]*)?\]["']?(\s|$)""", r) for r in installs), \
        f"no `pip install \".[server]\"` in the Dockerfile: {installs}"


def test_checkpoint_baking_line_runs_against_the_installed_package(installed, tmp_path, tiny_checkpoint):
    """The Dockerfile's baking RUN line, for real, with the model the test can write (tiny) already in the cache."""
    target, _ = installed
    (bake,) = [args for instruction, args in dockerfile_instructions(ROOT / "Dockerfile")
               if instruction == "RUN" and "resolve_checkpoint" in args]
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    spec = get_spec("sam2.1-hiera-tiny")
    shutil.copy2(tiny_checkpoint, cache / spec.hf_file)
    bin_dir = str(Path(sys.executable).parent)  # `python` in the line is this environment's
    env = _isolated_env(target, SAM2_MODEL=spec.name, SAM2_SERVE_CHECKPOINT_DIR=str(cache), HF_HUB_OFFLINE="1",
                        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["bash", "-c", bake], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{bake}\n{done.stderr[-3000:]}"
    assert done.stdout.strip().splitlines()[-1] == str(cache / spec.hf_file)

    # and the same line refuses a file that is not that model's weights
    (cache / spec.hf_file).write_bytes(b"not a checkpoint")
    done = subprocess.run(["bash", "-c", bake], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "could not be read as a sam2.1-hiera-tiny state dict" in done.stderr


@pytest.mark.parametrize("path, ignored", [
    ("tests/unit/test_x.py", True), ("sam2_serve/__pycache__/app.cpython-311.pyc", True),
    ("sam2_serve/deployments/__pycache__", True), ("checkpoints/sam2.1_hiera_tiny.pt", True),
    ("sam2_serve/deployments/app.py", False), ("sam2_serve/web/index.html", False), ("pyproject.toml", False),
])
def test_dockerignore_matching(path, ignored):
    assert DockerIgnore((ROOT / ".dockerignore").read_text()).ignored(path) is ignored


def test_dockerignore_semantics():
    rules = DockerIgnore("docs\n*.md\n!README.md\n**/*.tmp\nsrc/?.txt\n")
    assert rules.ignored("docs/a/b.txt") and rules.ignored("CHANGES.md") and not rules.ignored("README.md")
    assert not rules.ignored("sub/CHANGES.md")  # `*` does not cross folders
    assert rules.ignored("a.tmp") and rules.ignored("x/y/a.tmp")
    assert rules.ignored("src/a.txt") and not rules.ignored("src/ab.txt")
