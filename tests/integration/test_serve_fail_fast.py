"""Without a checkpoint and without a network, both run commands stop within a minute and say what to do.

No mocks: the cache is an empty folder and the Hub is ``HF_ENDPOINT`` on a local port nobody listens on, so the
download really fails (connection refused), as it does on a machine without internet access.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sam2_serve.models.registry import get_spec
from sam2_serve.testing import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 60


def _offline_env(cache: Path) -> dict:
    env = {**os.environ, "SAM2_SERVE_CHECKPOINT_DIR": str(cache), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    for key in ("HF_HUB_OFFLINE", "RAY_ADDRESS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    return env


def _run(command: list[str], env: dict) -> tuple[int, str, float]:
    """(exit code, stderr, seconds); fails the test when the command is still running after LIMIT_S."""
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} still running after {LIMIT_S} s:\n{(out + err)[-3000:]}")
    return proc.returncode, err, time.monotonic() - start


def _assert_says_how_to_get_it(stderr: str, cache: Path, model: str, hf_file: str) -> None:
    assert f"https://huggingface.co/facebook/{model}/resolve/main/{hf_file}" in stderr, stderr[-3000:]
    assert str(cache / hf_file) in stderr and f"checkpoint=/path/to/{hf_file}" in stderr, stderr[-3000:]


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    assert path.is_file(), f"no {name} next to {sys.executable}: run scripts/setup.sh (pip install -e '.[server]')"
    return str(path)


def test_sam2_serve_serve_exits_with_the_remedy(tmp_path):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    model = config["applications"][0]["args"]["model"]

    rc, stderr, took = _run([_bin("sam2-serve"), "serve", str(config_path)], _offline_env(cache))
    assert rc == 1, stderr[-3000:]
    assert took < LIMIT_S
    assert "sam2-serve: error: no checkpoint for " + model in stderr
    _assert_says_how_to_get_it(stderr, cache, model, get_spec(model).hf_file)
    assert "starting: " not in stderr, "handed over to serve run without a checkpoint"


def test_serve_run_import_path_exits_with_the_remedy(tmp_path):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    rc, stderr, took = _run([_bin("serve"), "run", "sam2_serve.deployments.app:build_app", "model=sam2.1-hiera-tiny",
                             "device=cpu"], _offline_env(cache))
    assert rc != 0, stderr[-3000:]
    assert took < LIMIT_S
    assert "ModelUnavailable: no checkpoint for sam2.1-hiera-tiny" in stderr
    _assert_says_how_to_get_it(stderr, cache, "sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")


def test_sam2_serve_serve_refuses_a_checkpoint_of_another_size(tmp_path, tiny_checkpoint):
    """A file that is there but is not the configured model's weights stops the start as clearly."""
    cache = tmp_path / "cache"
    cache.mkdir()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = config["applications"][0]
    app["args"].update(model="sam2.1-hiera-small", checkpoint=str(tiny_checkpoint))
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    rc, stderr, took = _run([_bin("sam2-serve"), "serve", str(config_path)], _offline_env(cache))
    assert rc == 1 and took < LIMIT_S, stderr[-3000:]
    assert f"checkpoint {tiny_checkpoint} is not a sam2.1-hiera-small state dict" in stderr, stderr[-3000:]
    assert "starting: " not in stderr
