"""README's run command, for real: `sam2-serve serve serve_config.yaml` (what `make serve` runs) with the default
model from the local cache.

The test writes a sam2.1-hiera-base-plus checkpoint (random, seeded) where the loader's cache expects it, runs the
command on serve_config.yaml (only the HTTP port changed, to a free one): it checks the checkpoint and hands over to
Ray's `serve run` in the same process, which starts its own Ray instance; then the test calls the service.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from sam2_serve.testing import write_checkpoint
from sam2_serve.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(proc, url: str, timeout_s: float, deadline: float, log: Path, what: str) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if ``proc`` exits or ``deadline`` passes."""
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url, timeout=timeout_s).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(2)
    pytest.fail(f"{what}:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_run")
    ckpt = write_checkpoint(tmp / "checkpoints" / "sam2.1_hiera_base_plus.pt", "sam2.1-hiera-base-plus", seed=1)
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    config_path = tmp / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SAM2_SERVE_CHECKPOINT_DIR": str(ckpt.parent), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    command = Path(sys.executable).with_name("sam2-serve")
    assert command.is_file(), f"no sam2-serve next to {sys.executable}: run scripts/setup.sh"
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([str(command), "serve", str(config_path)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 780  # both waits; under pytest's 900 s per test
        _wait_for(proc, f"{base}/healthz", 5, deadline, tmp / "serve.log", "sam2-serve serve did not come up")
        # The ingress answers /healthz first; the model replicas may still be starting (on the CPU the encoder
        # exports its network to OpenVINO at a first start and races it against torch): wait for /v1/models.
        _wait_for(proc, f"{base}/v1/models", 60, deadline, tmp / "serve.log", "the model deployments did not come up")
        log.flush()
        text = (tmp / "serve.log").read_text()
        # the checkpoint was checked before Ray started, then `serve run` took over the same process
        assert f"{ckpt} (sha256 {hashlib.sha256(ckpt.read_bytes()).hexdigest()}) holds" in text, text[-3000:]
        assert f"starting: {command.with_name('serve')} run {config_path}" in text, text[-3000:]
        yield base, ckpt, proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_sam2_serve_serve_config_yaml(served, groceries_path):
    base, ckpt, _ = served
    [info] = requests.get(f"{base}/v1/models", timeout=60).json()
    assert info["name"] == "sam2.1-hiera-base-plus"
    assert info["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    body = {"image": {"base64": base64.b64encode(groceries_path.read_bytes()).decode()},
            "regions": [{"point": [0.5, 0.5]}]}
    r = requests.post(f"{base}/v1/predict", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["width"], out["height"]) == (800, 534) and len(out["regions"]) == 1


def test_ray_started_by_serve_has_the_quiet_intervals(served):
    """`sam2-serve serve` lengthens two Serve intervals (ray_internals.QUIET_IDLE_ENV) for the Ray it starts: the
    controller and the proxy, started under `serve run`, have them in their environment."""
    import psutil

    from sam2_serve.deployments.ray_internals import QUIET_IDLE_ENV

    *_, proc = served
    found = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if cmd.startswith(("ray::ServeController", "ray::ProxyActor")):
                found[cmd.split()[0]] = child.environ()
        except psutil.Error:
            continue
    assert {"ray::ServeController", "ray::ProxyActor"} <= {name.split(".")[0] for name in found}, found.keys()
    for name, env in found.items():
        assert {k: env.get(k) for k in QUIET_IDLE_ENV} == QUIET_IDLE_ENV, name
