"""bench/gpu.py, the GPU check, kept working without a GPU: its smoke mode runs every stage on the CPU (tiny model,
small sizes, compilation forced off), and what it imports must be on the GPU machine or among the wheels that
scripts/gpu_wheels.sh prepares for it (no network there)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "scripts" / "gpu_wheels.sh"
# Modules found on the GPU machine's image (/work/.library/device/KINDS.md) besides torch's own imports, which
# are there by definition; and the import names of the wheels gpu_wheels.sh carries.
ON_GPU_MACHINE = {"numpy", "PIL", "tqdm", "psutil", "requests", "urllib3", "idna", "certifi", "charset_normalizer",
                  "yaml", "packaging", "portalocker", "typing_extensions", "attr", "filelock", "fsspec", "jinja2",
                  "markupsafe", "mpmath", "networkx", "sympy", "triton", "functorch"}  # the last: torch's compiler
CARRIED = {"av": "av", "pycocotools": "pycocotools", "isal": "isal", "hydra": "hydra-core",
           "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "iopath": "iopath", "sam2": "sam2"}
OURS = {"bench", "sam2_serve"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("gpu")
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "gpu.md").read_text().strip() == done.stdout.strip()  # the file holds the printed table
    return done.stdout, json.loads((out / "gpu.json").read_text())


@pytest.mark.slow
def test_smoke_runs_every_stage(smoke):
    from bench.gpu import COLUMNS

    stdout, rows = smoke
    assert "Seeded random checkpoints" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert re.search(r"^\| tiny +\| eager +\|", stdout, re.M) and re.search(r"^\| tiny +\| compiled +\|", stdout, re.M)
    eager, compiled = rows["sam2.1-hiera-tiny eager"], rows["sam2.1-hiera-tiny compiled"]
    assert eager["errors"] == [] and compiled["errors"] == [], (eager["errors"], compiled["errors"])
    for key in ("enc_b1_float32", "click_ms", "amg_keepall_s", "amg_keepall_up_s", "video_fps", "video_fps_up"):
        assert eager[key] > 0, key
    for key in ("enc_b1_float32", "video_fps", "video_fps_up"):
        assert compiled[key] > 0, key
    # Equal to upstream on the same checkpoint, on masks that are neither empty nor full.
    assert 0.005 < eager["area_click"] < 0.995 and 0.005 < eager["area_video"] < 0.995
    assert eager["amg_keepall_masks"] == eager["amg_keepall_up_masks"] > 0
    for row, keys in ((eager, ("iou_click", "iou_amg", "iou_video")), (compiled, ("iou_video",))):
        for key in keys:
            assert row[key] >= 0.99, (key, row[key])


def _pins() -> dict[str, str]:
    return dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", WHEELS.read_text()))


@pytest.mark.slow
def test_the_gpu_machine_has_or_gets_every_module(smoke):
    """A new import on the model path (pydantic, ray, ...) would fail there at once: it must be carried."""
    _, rows = smoke
    torch_own = subprocess.run([sys.executable, "-c", "import sys, torch, torchvision; print(' '.join(sys.modules))"],
                               capture_output=True, text=True, check=True).stdout.split()
    used = {m for row in rows.values() for m in row["modules"]} - {m.split(".")[0] for m in torch_own}
    missing = sorted(m for m in used - ON_GPU_MACHINE - set(CARRIED) - OURS if not m.startswith("_"))
    assert missing == [], f"imported by bench/gpu.py but neither on the GPU machine nor in gpu_wheels.sh: {missing}"
    assert {"sam2", "hydra", "av", "pycocotools", "isal"} <= used  # the record is real


def test_wheel_pins_are_the_tested_versions():
    """gpu_wheels.sh carries exactly the versions this project's environment runs (and tests) together."""
    pins = _pins()
    assert set(pins) == set(CARRIED.values()), pins
    for dist, pinned in pins.items():
        assert version(dist) == pinned, f"{dist}: gpu_wheels.sh pins {pinned}, the environment has {version(dist)}"
