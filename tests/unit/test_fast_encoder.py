"""sam2_serve.models.fast_encoder without Ray: OpenVINO's encoder against torch and upstream, its cache, its fallbacks.

The tiny model at 1024 (what SAM2ImagePredictor takes) for equivalence, ``fast``; the tests of the cache, the race
and the fallbacks load an encoder several times and rebuild entries: they take the tiny video model at 256
(``small``: an export and a compile cost a fraction of 1024's). Both entries are in the cache folder beside the
session's checkpoint (the integration app's encoders and trackers export them first); the tests that rebuild an
entry work on their own copy of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

from sam2_serve.models import fast_encoder as fe
from sam2_serve.models.image import ImageModel
from sam2_serve.models.loader import load_model
from sam2_serve.testing import TINY, iou, load_video_reference


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(TINY, tiny_checkpoint, "cpu")


@pytest.fixture(scope="module")
def cache(loaded):
    """The default cache folder, beside the session's checkpoint: shared with test_amg and the integration app."""
    return fe.cache_root(loaded)


@pytest.fixture(scope="module")
def fast(loaded, cache):
    return fe.load_fast_encoder(loaded, "openvino", cache)


@pytest.fixture(scope="module")
def small(tiny_checkpoint):
    """The tiny video predictor at 256 (as the integration app's trackers load it)."""
    return load_video_reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def small_fast(small, cache):
    return fe.load_fast_encoder(small, "openvino", cache)


@pytest.fixture(scope="module")
def embeddings(loaded, fast, groceries_rgb):
    """(OpenVINO's, torch's) embedding of the groceries photo, through ImageModel.encode."""
    (ours,) = ImageModel(loaded, fast).encode([groceries_rgb], ["g"])
    (ref,) = ImageModel(loaded).encode([groceries_rgb], ["g"])
    return ours, ref


def test_openvino_on_cpu_is_exported_and_checked(fast, cache):
    assert fast.backend == "openvino", fast.reason
    assert fast.cache_entry.parent == cache and fast.forward_image is not None and fast.precision == "f32"
    assert fast.error is not None and 0 <= fast.error <= fe.RTOL["f32"]
    assert {"manifest.json", "model.bin", "model.xml"} <= {p.name for p in fast.cache_entry.iterdir()}


def test_features_equal_torchs(embeddings):
    """Same structure as torch's embedding, every map within 1e-4 of its largest value (measured: ~1e-6)."""
    ours, ref = embeddings
    assert ours.orig_hw == ref.orig_hw and len(ours.high_res_feats) == len(ref.high_res_feats) == 2
    for a, b in zip((ours.image_embed, *ours.high_res_feats), (ref.image_embed, *ref.high_res_feats)):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


def test_masks_from_the_fast_embedding_equal_upstream_predictor(loaded, fast, embeddings, groceries_rgb,
                                                                tiny_checkpoint):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_serve.common.types import ObjectPrompt
    from sam2_serve.models.registry import get_spec

    upstream = SAM2ImagePredictor(build_sam2(get_spec(TINY).config, str(tiny_checkpoint), device="cpu"))
    upstream.set_image(groceries_rgb)
    h, w = groceries_rgb.shape[:2]
    for point in ([0.45 * w, 0.55 * h], [0.3 * w, 0.6 * h]):
        coords, labels = np.array([point], np.float32), np.array([1])
        ref_masks, ref_scores, ref_logits = upstream.predict(coords, labels, multimask_output=True)
        (pred,) = ImageModel(loaded, fast).decode(embeddings[0], [ObjectPrompt(coords, labels)], multimask_output=True)
        assert len(pred.masks) == 3
        for bits, ref in zip(pred.masks, ref_masks):
            mask = bits.unpack()
            assert 0 < mask.sum() < mask.size, "trivial mask proves nothing"
            assert iou(mask, ref > 0) >= 0.99
        np.testing.assert_allclose(pred.low_res_logits, ref_logits, atol=1e-3)
        np.testing.assert_allclose(pred.scores, ref_scores, atol=1e-3)


def test_the_cache_is_reused(loaded, fast, cache):
    again = fe.load_fast_encoder(loaded, "openvino", cache)
    assert again.backend == "openvino" and not again.exported and again.cache_entry == fast.cache_entry
    assert "export" not in again.timings and again.error <= fe.RTOL["f32"]


def test_the_key_is_the_checkpoint_sha256_the_network_and_versions(loaded):
    key = fe._cache_key(loaded, 1024, "f32", "ov-1")
    assert fe._cache_key(loaded, 1024, "f32", "ov-1") == key
    assert fe._cache_key(dataclasses.replace(loaded, sha256="0" * 64), 1024, "f32", "ov-1") != key
    assert fe._cache_key(loaded, 512, "f32", "ov-1") != key
    assert fe._cache_key(loaded, 1024, "bf16", "ov-1") != key
    assert fe._cache_key(loaded, 1024, "f32", "ov-2") != key


def test_a_manifest_that_does_not_match_is_not_read(fast, tmp_path):
    entry = shutil.copytree(fast.cache_entry, tmp_path / "entry")
    key = json.loads((entry / "manifest.json").read_text())["key"]
    assert fe._entry_ok(entry, key)
    assert not fe._entry_ok(entry, "another key")
    with open(entry / "model.xml", "ab") as f:
        f.write(b" ")
    assert not fe._entry_ok(entry, key)
    (entry / "manifest.json").unlink()
    assert not fe._entry_ok(entry, key)


def test_a_corrupt_entry_is_exported_again(small, small_fast, tmp_path, caplog):
    """Weights damaged and the manifest made to agree: only the start-up check against torch can tell."""
    cache = tmp_path / "cache"
    entry = shutil.copytree(small_fast.cache_entry, cache / small_fast.cache_entry.name)
    weights = np.fromfile(entry / "model.bin", dtype=np.uint8)
    weights[len(weights) // 3: len(weights) // 3 + 4096] ^= 0x55
    weights.tofile(entry / "model.bin")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["model.bin"] = fe.file_sha256(entry / "model.bin")
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger=fe.__name__):
        rebuilt = fe.load_fast_encoder(small, "openvino", cache)
    assert rebuilt.backend == "openvino" and rebuilt.exported and rebuilt.error <= fe.RTOL["f32"]
    assert "exporting it again" in caplog.text
    assert fe._entry_ok(entry, manifest["key"]) and fe.file_sha256(entry / "model.bin") == fe.file_sha256(
        small_fast.cache_entry / "model.bin")


@pytest.mark.parametrize("ov_s, kept", [(0.5, True), (0.84, True), (0.9, False), (1.2, False)])
def test_auto_keeps_openvino_only_where_it_is_faster(small, small_fast, cache, monkeypatch, caplog, ov_s, kept):
    """auto races one warm pass of each (``fe.race``, timed here as given): OpenVINO stays at <= KEEP_IF of
    torch's time, else torch runs with the times in the reason."""
    monkeypatch.setattr(fe, "race", lambda model, forward, size: (1.0, ov_s))
    monkeypatch.setattr(fe, "cpu_signature", lambda: f"a CPU where OpenVINO takes {ov_s}")  # no earlier verdict
    with caplog.at_level(logging.WARNING, logger=fe.__name__):
        enc = fe.load_fast_encoder(small, "auto", cache)
    assert enc.backend == ("openvino" if kept else "torch"), enc.reason
    assert (enc.forward_image is not None) == kept and f"{ov_s:.2f} s a pass against torch's 1.00 s" in enc.reason
    assert kept or enc.reason in caplog.text


def _cache_without_races(small_fast, tmp_path):
    """A cache folder in ``tmp_path`` holding a copy of ``small_fast``'s entry with no race recorded yet."""
    cache = tmp_path / "cache"
    shutil.copytree(small_fast.cache_entry, cache / small_fast.cache_entry.name,
                    ignore=shutil.ignore_patterns(fe.RACE_FILE))
    return cache


def test_the_race_is_run_once_per_kind_of_cpu(small, small_fast, tmp_path, monkeypatch):
    """The first auto start on a CPU races and records the times in the entry; a later start on the same kind of
    CPU takes the same verdict without racing; another kind of CPU (or a lost record) races again."""
    cache = _cache_without_races(small_fast, tmp_path)
    races = []

    def timed(times):
        def race(model, forward, size):
            races.append(times)
            return times
        return race

    monkeypatch.setattr(fe, "cpu_signature", lambda: "cpu A")
    monkeypatch.setattr(fe, "race", timed((1.0, 2.0)))
    first = fe.load_fast_encoder(small, "auto", cache)
    assert first.backend == "torch" and "(raced at this start)" in first.reason and len(races) == 1
    monkeypatch.setattr(fe, "race", timed((1.0, 0.5)))  # would keep OpenVINO, were it asked
    again = fe.load_fast_encoder(small, "auto", cache)
    assert again.backend == "torch" and "2.00 s a pass" in again.reason and "earlier start" in again.reason
    assert len(races) == 1
    monkeypatch.setattr(fe, "cpu_signature", lambda: "cpu B")
    other = fe.load_fast_encoder(small, "auto", cache)
    assert other.backend == "openvino" and len(races) == 2 and "(raced at this start)" in other.reason
    assert set(json.loads((other.cache_entry / fe.RACE_FILE).read_text())) == {"cpu A", "cpu B"}
    (other.cache_entry / fe.RACE_FILE).write_text("{not json")
    monkeypatch.setattr(fe, "cpu_signature", lambda: "cpu A")
    assert fe.load_fast_encoder(small, "auto", cache).backend == "openvino" and len(races) == 3


def test_replicas_starting_together_race_once_and_agree(small, small_fast, tmp_path, monkeypatch):
    """Two loads of one entry at once (an ImageEncoder and a VideoTracker starting together): the race runs under
    the entry's lock, once; the other load waits and takes its times, so both decide alike."""
    from concurrent.futures import ThreadPoolExecutor

    from filelock import FileLock, Timeout

    cache = _cache_without_races(small_fast, tmp_path)
    lock = fe._entry_lock(cache / small_fast.cache_entry.name).lock_file
    races, held = [], []

    def race(model, forward, size):
        try:  # another holder of the entry's lock: this (second) lock cannot be taken while the race runs
            FileLock(lock, timeout=0).acquire()
        except Timeout:
            held.append(True)
        else:
            held.append(False)
        races.append(size)
        return (1.0, 2.0) if len(races) == 1 else (1.0, 0.5)  # a second race would decide otherwise

    monkeypatch.setattr(fe, "cpu_signature", lambda: "cpu C")
    monkeypatch.setattr(fe, "race", race)
    with ThreadPoolExecutor(2) as pool:
        encoders = list(pool.map(lambda _: fe.load_fast_encoder(small, "auto", cache), range(2)))
    assert races == [int(small.model.image_size)] and held == [True]
    assert [e.backend for e in encoders] == ["torch", "torch"], [e.reason for e in encoders]
    assert sorted("(raced at this start)" in e.reason for e in encoders) == [False, True]


def test_the_cpu_signature_names_the_cpu_and_threads():
    sig = fe.cpu_signature()
    assert f"{torch.get_num_threads()} threads" in sig and torch.backends.cpu.get_cpu_capability() in sig


def test_the_race_times_both(small, small_fast):
    torch_s, ov_s = fe.race(small.model, small_fast.forward_image, int(small.model.image_size))
    assert torch_s > 0 and ov_s > 0


def test_torch_when_asked(loaded, cache):
    enc = fe.load_fast_encoder(loaded, "torch", cache)
    assert enc.backend == "torch" and enc.forward_image is None


def test_the_gpu_stays_torch(loaded, cache, caplog):
    with caplog.at_level(logging.WARNING, logger=fe.__name__):
        enc = fe.load_fast_encoder(dataclasses.replace(loaded, device=torch.device("cuda")), "auto", cache)
    assert enc.backend == "torch" and enc.forward_image is None and "GPU stays torch" in caplog.text


def test_without_openvino_torch_runs_with_the_reason_logged(loaded, cache, groceries_rgb, embeddings, monkeypatch,
                                                            caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets where it is not installed
    with caplog.at_level(logging.WARNING, logger=fe.__name__):
        enc = fe.load_fast_encoder(loaded, "openvino", cache)
    assert enc.backend == "torch" and enc.forward_image is None
    assert "OpenVINO failed (ModuleNotFoundError" in enc.reason and enc.reason in caplog.text
    (emb,) = ImageModel(loaded, enc).encode([groceries_rgb], ["g"])
    np.testing.assert_array_equal(emb.image_embed, embeddings[1].image_embed)  # torch's own forward


def test_a_mismatch_beyond_the_tolerance_falls_back_to_torch(small, small_fast, tmp_path, monkeypatch, caplog):
    """Tolerance 0: the cached entry fails the check, is exported again, fails again: torch, with the reason.

    The second export is the good entry copied back (a real export is test_a_corrupt_entry_is_exported_again's,
    a minute of CPU): what is tested here is that a fresh entry failing the check is not tried again."""
    cache = tmp_path / "cache"
    shutil.copytree(small_fast.cache_entry, cache / small_fast.cache_entry.name)
    exports = []

    def export_again(model, sample, entry, key, enc):
        exports.append(entry)
        shutil.copytree(small_fast.cache_entry, entry)
        enc.exported = True

    monkeypatch.setattr(fe, "_export", export_again)
    monkeypatch.setitem(fe.RTOL, "f32", 0.0)
    with caplog.at_level(logging.WARNING, logger=fe.__name__):
        enc = fe.load_fast_encoder(small, "openvino", cache)
    assert enc.backend == "torch" and enc.forward_image is None and len(exports) == 1
    assert "differ from torch's" in enc.reason and enc.reason in caplog.text


def test_an_unknown_backend_is_refused(loaded):
    with pytest.raises(ValueError, match="auto, torch, openvino"):
        fe.load_fast_encoder(loaded, "onnx")
