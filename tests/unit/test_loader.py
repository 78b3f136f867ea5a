"""Checkpoint resolution and loading: local path, cache, Hub download (offline here), bad files."""

from __future__ import annotations

import pytest
import torch

from sam2_serve.common.errors import ModelUnavailable
from sam2_serve.models.loader import autocast, checkpoint_dir, load_model, resolve_checkpoint, select_device
from sam2_serve.models.registry import DEFAULT_MODEL, MODELS, get_spec


def test_registry_has_the_four_sizes():
    assert set(MODELS) == {"sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large"}
    assert DEFAULT_MODEL == "sam2.1-hiera-base-plus"
    spec = get_spec("sam2.1-hiera-base-plus")
    assert spec.config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert (spec.hf_repo, spec.hf_file) == ("facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt")
    with pytest.raises(KeyError, match="known models"):
        get_spec("sam3")


def test_explicit_path_wins(tmp_path, monkeypatch):
    f = tmp_path / "mine.pt"
    f.write_bytes(b"x")
    monkeypatch.setenv("SAM2_SERVE_CHECKPOINT_DIR", str(tmp_path / "cache"))
    assert resolve_checkpoint(get_spec("sam2.1-hiera-tiny"), f) == f
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve_checkpoint(get_spec("sam2.1-hiera-tiny"), tmp_path / "missing.pt")


def test_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2_SERVE_CHECKPOINT_DIR", str(tmp_path))
    assert checkpoint_dir() == tmp_path
    (tmp_path / "sam2.1_hiera_small.pt").write_bytes(b"x")
    assert resolve_checkpoint(get_spec("sam2.1-hiera-small")) == tmp_path / "sam2.1_hiera_small.pt"


def test_offline_download_error_says_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2_SERVE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as err:
        resolve_checkpoint(get_spec("sam2.1-hiera-large"))
    msg = str(err.value)
    assert "https://huggingface.co/facebook/sam2.1-hiera-large/resolve/main/sam2.1_hiera_large.pt" in msg
    assert str(tmp_path / "sam2.1_hiera_large.pt") in msg and "checkpoint=" in msg


def test_load_test_checkpoint(tiny_checkpoint):
    loaded = load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu")
    assert loaded.device.type == "cpu" and loaded.dtype == "float32"
    assert len(loaded.sha256) == 64 and not loaded.model.training
    saved = torch.load(tiny_checkpoint, weights_only=True)["model"]
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(loaded.model.state_dict()[key], saved[key])


def test_corrupt_and_mismatched_checkpoints(tmp_path, tiny_checkpoint):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:4096])
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_model("sam2.1-hiera-tiny", bad, device="cpu")
    with pytest.raises(ModelUnavailable, match="sam2.1-hiera-small"):
        load_model("sam2.1-hiera-small", tiny_checkpoint, device="cpu")  # wrong size for the weights


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    f = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, f)
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_model("sam2.1-hiera-tiny", f, device="cpu")


def test_device_and_dtype_choice():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ValueError):
        autocast(torch.device("cpu"), "float16")
    with pytest.raises(ModelUnavailable, match="unknown model"):
        load_model("sam2.1-hiera-huge", None, device="cpu")
