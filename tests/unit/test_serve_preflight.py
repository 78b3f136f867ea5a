"""What ``sam2-serve serve`` checks before it starts anything: the config, the app's args, the checkpoint's weights.

Only failures run in this process (a check that passed would exec ``serve run`` in place of pytest); the passing
path runs as a subprocess in tests/integration/test_serve_config_run.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sam2_serve.client.cli import main
from sam2_serve.common.errors import ModelUnavailable
from sam2_serve.models.loader import check_checkpoint, checkpoint_dir, file_sha256, load_model
from sam2_serve.models.registry import get_spec

ROOT = Path(__file__).resolve().parents[2]


def test_check_checkpoint_accepts_the_model_and_refuses_others(tiny_checkpoint, tmp_path):
    check_checkpoint(get_spec("sam2.1-hiera-tiny"), tiny_checkpoint)
    bare = tmp_path / "bare.pt"  # a bare state dict, without sam2's {"model": ...} wrapper
    torch.save(torch.load(tiny_checkpoint, weights_only=True)["model"], bare)
    check_checkpoint(get_spec("sam2.1-hiera-tiny"), bare)

    with pytest.raises(ModelUnavailable, match="is not a sam2.1-hiera-small state dict") as err:
        check_checkpoint(get_spec("sam2.1-hiera-small"), tiny_checkpoint)
    assert "missing" in str(err.value) and "sam2.1_hiera_small.pt" in str(err.value)

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model"].pop("sam_mask_decoder.iou_prediction_head.layers.0.weight")
    state["model"]["extra.weight"] = torch.zeros(1)
    odd = tmp_path / "odd.pt"
    torch.save(state, odd)
    with pytest.raises(ModelUnavailable) as err:
        check_checkpoint(get_spec("sam2.1-hiera-tiny"), odd)
    assert "1 weights missing (sam_mask_decoder.iou_prediction_head.layers.0.weight)" in str(err.value)
    assert "1 weights unexpected (extra.weight)" in str(err.value)

    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:100_000])  # an interrupted download
    with pytest.raises(ModelUnavailable, match="could not be read as a sam2.1-hiera-tiny state dict"):
        check_checkpoint(get_spec("sam2.1-hiera-tiny"), cut)


def test_load_model_refuses_another_file_than_the_one_resolved(tiny_checkpoint):
    with pytest.raises(ModelUnavailable, match="not 0{64}"):
        load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu", expected_sha256="0" * 64)
    loaded = load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu",
                        expected_sha256=file_sha256(tiny_checkpoint))
    assert loaded.sha256 == file_sha256(tiny_checkpoint)


def test_default_cache_is_the_checkouts_checkpoints_folder(monkeypatch):
    monkeypatch.delenv("SAM2_SERVE_CHECKPOINT_DIR", raising=False)
    assert checkpoint_dir() == ROOT / "checkpoints"


def _config(tmp_path: Path, **args) -> Path:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"].update(args)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name, setup, message", [
    ("missing file", lambda tmp: tmp / "nope.yaml", "no Serve config at"),
    ("not YAML", lambda tmp: _write(tmp, "applications: [\n"), "is not a valid Serve config"),
    ("not a Serve config", lambda tmp: _write(tmp, "applications: 3\n"), "is not a valid Serve config"),
    ("no sam2 app", lambda tmp: _write(tmp, "applications:\n- {name: x, route_prefix: /, import_path: a.b:c}\n"),
     "has no application with import_path sam2_serve.deployments.app:build_app (found: a.b:c)"),
    ("misspelt arg", lambda tmp: _config(tmp, modle="sam2.1-hiera-tiny"), "application 'sam2' has invalid args"),
    ("unknown model", lambda tmp: _config(tmp, model="sam2.1-hiera-huge"), "unknown model 'sam2.1-hiera-huge'"),
    ("missing checkpoint", lambda tmp: _config(tmp, checkpoint=str(tmp / "gone.pt")), "gone.pt' does not exist"),
])
def test_serve_stops_before_ray_with_a_message(name, setup, message, tmp_path, capsys):
    assert main(["serve", str(setup(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sam2-serve") and message in err, err
    assert "starting: " not in err


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path
