"""The client installs alone: the wheel in a fresh virtual environment (no system site packages, its dependencies
from the package index) has no torch and no Ray, and still calls the running service, from Python and through its
``sam2-serve`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.packaging import ROOT, build_wheel, copy_sources

pytestmark = pytest.mark.integration

POINT = (0.45, 0.5)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("client-wheel")
    return build_wheel(copy_sources(ROOT, tmp / "src"), tmp / "dist")


def _env() -> dict:
    """The environment of a shell in which only the fresh venv exists (no worktree, no other venv)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(command, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    done = _run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    done = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
                cwd=venv.parent)
    assert done.returncode == 0, f"pip install {wheel.name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return venv


def test_no_torch_no_ray_in_the_client_venv(venv):
    for module in ("torch", "ray", "sam2"):
        done = _run([venv / "bin" / "python", "-c", f"import {module}"], cwd=venv.parent)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, f"{module} is importable: {done}"
    done = _run([venv / "bin" / "python", "-c", "import sam2_serve, requests, numpy, PIL; print(sam2_serve.__file__)"],
                cwd=venv.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()).resolve().is_relative_to(venv.resolve()), done.stdout


def _assert_some_object(mask: np.ndarray) -> None:
    assert mask.shape == (534, 800) and mask.dtype == bool
    assert 0 < int(mask.sum()) < mask.size, f"mask covers {mask.mean():.3f} of the image"


def test_client_and_command_call_the_service(venv, base_url, groceries_path, tmp_path):
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from sam2_serve import Model, Region\n"
        "with Model(sys.argv[1]) as model:\n"
        f"    regions = model.predict(image=Path(sys.argv[2]), regions=[Region(point=[{POINT[0]}, {POINT[1]}])])\n"
        "np.save(sys.argv[3], regions[0].mask)\n"
        "print(json.dumps({'n': len(regions), 'score': regions[0].score}))\n")
    done = _run([venv / "bin" / "python", "-c", script, base_url, groceries_path, tmp_path / "mask.npy"],
                cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["n"] == 1 and isinstance(summary["score"], float)
    from_python = np.load(tmp_path / "mask.npy")
    _assert_some_object(from_python)

    out = tmp_path / "cli" / "mask.png"
    done = _run([venv / "bin" / "sam2-serve", "predict", groceries_path, "--point", f"{POINT[0]},{POINT[1]}",
                 "-o", out, "--url", base_url], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    png = np.asarray(PILImage.open(out))
    assert set(np.unique(png)) <= {0, 255}
    _assert_some_object(png == 255)
    assert np.array_equal(png == 255, from_python), "the command and the client got different masks"


def test_serve_command_asks_for_the_server_extra(venv, tmp_path):
    done = _run([venv / "bin" / "sam2-serve", "serve", ROOT / "serve_config.yaml"], cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert "pip install 'sam2-serve[server]'" in done.stderr and "torch" in done.stderr, done.stderr[-3000:]
