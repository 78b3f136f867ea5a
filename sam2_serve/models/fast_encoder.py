"""sam2's image encoder on the CPU through OpenVINO: exported from the loaded model, cached on disk, checked.

``load_fast_encoder(loaded)`` returns a ``FastEncoder`` whose ``forward_image`` takes the place of
``SAM2Base.forward_image`` (image encoder + the decoder's high-resolution projections) where upstream code calls it
(``sam2_internals.image_predictor_view(..., forward_image=...)``): transforms, ``_prepare_backbone_features``, the
no-memory embedding and the reshape stay upstream's. The network is the loaded model's, converted by OpenVINO's
own PyTorch frontend (``openvino.convert_model``); no sam2 code is rewritten.

Why OpenVINO: measured on the same inputs (BENCHMARKS.md, encoder), its float32 output is within ~1e-6 of torch's
and it runs the encoder faster than torch eager and ONNX Runtime on the CPU.

Start-up (``load_fast_encoder``), on the replica's torch thread:
1. The backend: ``auto`` is OpenVINO on the CPU where it is measurably faster (step 4), torch on CUDA (the GPU
   stays torch); ``openvino`` is OpenVINO on the CPU whatever its speed; ``torch`` is torch.
2. The cache entry ``<cache dir>/<model>-<size>-<key>/``, key = sha256 of the checkpoint's sha256, the network's
   structure, the input size, precision and the versions of OpenVINO, torch, sam2 and this export. The cache dir is
   ``$SAM2_SERVE_CACHE_DIR`` or ``encoder-cache/`` beside the checkpoint. An entry holds ``model.xml``/``.bin``
   and ``manifest.json`` (the files' sha256, written last): a missing, incomplete or corrupt entry is exported
   again (under a file lock, so replicas starting together export once), and written atomically.
3. The check: torch and OpenVINO encode one fixed input; every output must be within ``RTOL[precision]`` x its
   largest magnitude of torch's. An entry from the cache that fails is exported again once.
4. For ``auto``, a race: one more pass of each on the same input (both warm); OpenVINO is kept only when it took
   at most ``KEEP_IF`` of torch's time. Its compiled network holds its own weights and activation buffers (base-plus
   at 1024: ~2 GiB more in the replica), which pays on CPUs where it is much faster (measured 2x with AVX-512) and
   not on those where it is not (0.8-1.0x on an AVX2-only EPYC: BENCHMARKS.md). The race's times are kept in the
   entry per kind of CPU (``race.json``), so later starts on such a machine do not race again; replicas starting
   together race one at a time, under the entry's lock, and the later ones take the first one's times.
Any failure (OpenVINO missing, export or compile error, a mismatch) or a lost race leaves torch in place, with the
reason logged and in ``FastEncoder.reason``.

The VideoTracker runs each frame's backbone pass through the same loader (``VideoModel(loaded, encoder)``).

Nothing here runs at import; OpenVINO is imported when an encoder is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from sam2_serve.models import sam2_internals
from sam2_serve.models.loader import LoadedModel, file_sha256

logger = logging.getLogger(__name__)

EncoderBackend = Literal["auto", "torch", "openvino"]
BACKENDS = ("auto", "torch", "openvino")
# Bump when what is exported, or how, changes: entries written before are then never read.
# 2: the network's key is its modules' structure without the model's class (image and video models share entries).
EXPORT_FORMAT = 2
# Largest |OpenVINO - torch| allowed on the start-up check, relative to each output's largest |torch| value.
# Measured: float32 ~1.4e-6 (tiny and base-plus); bfloat16 ~1e-2 on hosts with avx512_bf16.
RTOL = {"f32": 1e-4, "bf16": 5e-2}
# ``auto`` keeps OpenVINO when its pass takes at most this fraction of torch's (its memory must buy speed).
KEEP_IF = 0.85
_FILES = ("model.xml", "model.bin")
# Race outcomes per CPU (``cpu_signature``) in an entry; not part of the network, so not in its manifest.
RACE_FILE = "race.json"


@dataclass
class FastEncoder:
    """Which runtime encodes images, and why.

    ``forward_image``: None when torch runs (the model's own ``forward_image``), else a callable B x 3 x S x S
    float32 (CPU) -> the dict ``SAM2Base.forward_image`` returns. ``reason``: a sentence for logs and ``info``.
    ``timings``: seconds spent at start-up (``export``, ``compile``, ``check``), and ``error``: the check's largest
    relative difference, for reports.
    """

    backend: str
    reason: str
    forward_image: Optional[Callable[[torch.Tensor], dict]] = None
    precision: str = "f32"
    cache_entry: Optional[Path] = None
    exported: bool = False
    timings: dict = field(default_factory=dict)
    error: Optional[float] = None


def cache_root(loaded: LoadedModel) -> Path:
    """``$SAM2_SERVE_CACHE_DIR``, else ``encoder-cache/`` in the checkpoint's folder."""
    env = os.environ.get("SAM2_SERVE_CACHE_DIR")
    return Path(env).expanduser() if env else Path(loaded.checkpoint).resolve().parent / "encoder-cache"


def load_fast_encoder(loaded: LoadedModel, backend: EncoderBackend = "auto",
                      cache_dir: str | os.PathLike | None = None) -> FastEncoder:
    """The encoder for ``loaded`` as ``backend`` asks, falling back to torch with a logged reason (module doc).

    Precision follows ``loaded.dtype``: float32, or bfloat16 (OpenVINO's bf16 inference, where the CPU has it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "torch":
        return FastEncoder("torch", "encoder_backend=torch")
    if loaded.device.type != "cpu":
        return _fallback(f"the model runs on {loaded.device.type}: the GPU stays torch")
    try:
        enc = _load_openvino(loaded, Path(cache_dir) if cache_dir else cache_root(loaded))
        if backend == "auto" and enc.forward_image is not None:
            torch_s, ov_s, when = _race_once(loaded.model, enc)
            if ov_s > KEEP_IF * torch_s:
                return _fallback(f"OpenVINO took {ov_s:.2f} s a pass against torch's {torch_s:.2f} s on this CPU "
                                 f"{when} (auto keeps it only at <= {KEEP_IF:g}x, for its memory; encoder_backend: "
                                 "openvino forces it)")
            enc.reason += f"; {ov_s:.2f} s a pass against torch's {torch_s:.2f} s {when}"
        return enc
    except Exception as exc:  # any failure leaves torch in place: the service still runs, slower
        return _fallback(f"OpenVINO failed ({type(exc).__name__}: {str(exc)[:500]})")


def race(model: torch.nn.Module, forward_image: Callable[[torch.Tensor], dict], size: int) -> tuple[float, float]:
    """Seconds of one warm ``forward_image`` pass of torch and of ``forward_image`` on the same input."""
    sample = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        start = time.perf_counter()
        model.forward_image(sample)
        torch_s = time.perf_counter() - start
    start = time.perf_counter()
    forward_image(sample)
    return torch_s, time.perf_counter() - start


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else the platform's processor or machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_signature() -> str:
    """What the race's outcome depends on besides the network: the CPU model, the instruction set torch uses and
    the threads this process runs with."""
    return f"{cpu_model_name()} | {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} threads"


def _race_once(model: torch.nn.Module, enc: FastEncoder) -> tuple[float, float, str]:
    """``race``'s times for ``enc``'s entry on this CPU (``cpu_signature``), run at the first start and kept in
    the entry's ``race.json``: a later start on the same kind of machine skips two warm passes (~20 s for
    base-plus on 2 cores). Returns (torch seconds, OpenVINO seconds, when they were measured)."""
    # Under the entry's lock: replicas that start together (an ImageEncoder and a VideoTracker share the entry) race
    # one at a time and the later ones take the first one's verdict. Racing side by side on a few cores, each timed
    # the other's load, and they could decide differently for the same network (measured: one kept torch, the
    # other OpenVINO, in one start).
    with _entry_lock(enc.cache_entry):
        return _race_locked(model, enc)


def _race_locked(model: torch.nn.Module, enc: FastEncoder) -> tuple[float, float, str]:
    path, sig = enc.cache_entry / RACE_FILE, cpu_signature()
    verdicts = _read_json(path)
    try:
        torch_s, ov_s = float(verdicts[sig]["torch_s"]), float(verdicts[sig]["openvino_s"])
        enc.timings.update(race_torch=torch_s, race_openvino=ov_s)
        return torch_s, ov_s, "(raced at an earlier start on this CPU)"
    except (KeyError, TypeError, ValueError):  # none yet for this CPU, or unreadable: race now
        pass
    torch_s, ov_s = race(model, enc.forward_image, int(model.image_size))
    enc.timings.update(race_torch=torch_s, race_openvino=ov_s)
    verdicts[sig] = {"torch_s": torch_s, "openvino_s": ov_s}
    try:  # atomic: a start killed while writing leaves the old record, not half a file
        fd, tmp = tempfile.mkstemp(prefix=f".{RACE_FILE}-", dir=enc.cache_entry)
        with os.fdopen(fd, "w") as f:
            json.dump(verdicts, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("image encoder: could not record the race in %s (%s); the next start races again", path, exc)
    return torch_s, ov_s, "(raced at this start)"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _fallback(reason: str) -> FastEncoder:
    logger.warning("image encoder: torch, not OpenVINO: %s", reason)
    return FastEncoder("torch", reason)


def _load_openvino(loaded: LoadedModel, root: Path) -> FastEncoder:
    import openvino as ov

    model, size = loaded.model, int(loaded.model.image_size)
    precision = "bf16" if loaded.dtype == "bfloat16" else "f32"
    key = _cache_key(loaded, size, precision, ov.get_version())
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root)
        probe.close()
    except OSError as exc:
        logger.warning("image encoder: cache dir %s is not writable (%s): exporting into a temporary folder", root,
                       exc)
        root = Path(tempfile.mkdtemp(prefix="sam2-serve-encoder-"))
    entry = root / f"{loaded.spec.name}-{size}-{key[:16]}"
    sample = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        start = time.perf_counter()
        expected = [t.numpy().copy() for t in sam2_internals.backbone_tensors(model.forward_image(sample))]
        torch_s = time.perf_counter() - start
    enc = FastEncoder("openvino", "", precision=precision, cache_entry=entry, timings={"torch_check": torch_s})
    with _entry_lock(entry):
        for attempt in (0, 1):
            if not _entry_ok(entry, key):
                _export(model, sample, entry, key, enc)
            compiled = _compile(ov, entry, precision, enc)
            start = time.perf_counter()
            run = _OpenVinoForward(compiled)
            got = [t.numpy() for t in sam2_internals.backbone_tensors(run(sample))]
            enc.timings["check"] = time.perf_counter() - start
            enc.error = max(_relative_error(a, b) for a, b in zip(got, expected))
            if len(got) == len(expected) and enc.error <= RTOL[enc.precision]:
                break
            reason = (f"its outputs differ from torch's by {enc.error:.2e} (relative to the largest value; "
                      f"allowed {RTOL[enc.precision]:.0e})")
            if enc.exported:  # a fresh export is wrong: no point in another
                return _fallback(reason)
            logger.warning("image encoder: cached %s: %s; exporting it again", entry, reason)
            shutil.rmtree(entry, ignore_errors=True)
    enc.forward_image = run
    enc.reason = (f"OpenVINO {enc.precision} ({'exported' if enc.exported else 'cached'} at {entry}; start-up check "
                  f"within {enc.error:.1e} of torch)")
    logger.info("image encoder: %s; seconds: %s", enc.reason,
                {k: round(v, 2) for k, v in enc.timings.items()})
    return enc


def _entry_lock(entry: Path):
    """The file lock of a cache entry (beside it: the entry itself may be removed and rewritten under it), taken
    around its export, compile and check, and around the race; a new lock object each call."""
    from filelock import FileLock

    return FileLock(str(entry) + ".lock")


def _cache_key(loaded: LoadedModel, size: int, precision: str, ov_version: str) -> str:
    """sha256 of everything the exported network depends on: weights (the checkpoint's sha256), structure (the
    modules' repr: config overrides that change the network show there), input size, precision, versions. The
    structure is the model's submodules, not its class: the image model and the video predictor built from one
    config and checkpoint export the same ``forward_image``, so an ImageEncoder and a VideoTracker at the same input
    size share one entry."""
    import sam2

    network = "\n".join(f"{name}: {module!r}" for name, module in loaded.model.named_children())
    fields = {"format": EXPORT_FORMAT, "checkpoint_sha256": loaded.sha256, "config": loaded.spec.config,
              "network": hashlib.sha256(network.encode()).hexdigest(), "image_size": size,
              "precision": precision, "openvino": ov_version, "torch": torch.__version__,
              "sam2": getattr(sam2, "__version__", sam2_internals.SAM2_PIN)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _entry_ok(entry: Path, key: str) -> bool:
    """Whether ``entry`` is complete and intact: its manifest names ``key`` and every file has its sha256."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        intact = manifest["key"] == key and all(file_sha256(entry / name) == manifest["files"][name]
                                                for name in _FILES)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if entry.exists():
            logger.warning("image encoder: cache entry %s is unreadable (%s): exporting it again", entry, exc)
        return False
    if not intact:
        logger.warning("image encoder: cache entry %s is corrupt or for another model: exporting it again", entry)
    return intact


def _export(model: torch.nn.Module, sample: torch.Tensor, entry: Path, key: str, enc: FastEncoder) -> None:
    """Convert ``forward_image`` with OpenVINO's PyTorch frontend and write the entry atomically (a temporary
    folder beside it, renamed into place once complete)."""
    import openvino as ov

    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches (static here)
        converted = ov.convert_model(_ForwardImage(model).eval(), example_input=sample)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        # compress_to_fp16 (the default) would round the weights: the export must be exact.
        ov.save_model(converted, tmp / "model.xml", compress_to_fp16=False)
        manifest = {"key": key, "files": {name: file_sha256(tmp / name) for name in _FILES},
                    "export_s": time.perf_counter() - start}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    enc.exported = True
    enc.timings["export"] = time.perf_counter() - start
    logger.info("image encoder: exported to OpenVINO in %.1f s (%s, %.0f MB)", enc.timings["export"], entry,
                sum(f.stat().st_size for f in entry.iterdir()) / 1e6)


def _compile(ov, entry: Path, precision: str, enc: FastEncoder):
    start = time.perf_counter()
    compiled = ov.Core().compile_model(str(entry / "model.xml"), "CPU", {
        # Explicit: on CPUs with bf16 units OpenVINO's default precision is bf16.
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        # The replica's torch threads (replica.load_for_replica): the cores this replica is given.
        "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    enc.timings["compile"] = time.perf_counter() - start
    # What runs: a CPU without bf16 units (no avx512_bf16/AMX) runs a bf16 request in f32.
    enc.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return float("inf")
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - expected).max()) / scale


class _ForwardImage(torch.nn.Module):
    """``model.forward_image`` with its output flattened (``sam2_internals.backbone_tensors``): what is exported."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, img_batch: torch.Tensor):
        return sam2_internals.backbone_tensors(self.model.forward_image(img_batch))


class _OpenVinoForward:
    """``forward_image`` on a compiled OpenVINO model: B x 3 x S x S float32 -> sam2's dict of float32 CPU
    tensors. The model takes one image at a time (a batch only adds memory traffic on the CPU: ImageEncoder)."""

    def __init__(self, compiled):
        self._request = compiled.create_infer_request()
        self._outputs = list(compiled.outputs)

    def __call__(self, img_batch: torch.Tensor) -> dict:
        images = img_batch.detach().to("cpu", torch.float32)
        per_image = []
        for i in range(images.shape[0]):
            # share_outputs=False (the default): the results are the caller's copies, not the request's buffers.
            result = self._request.infer({0: images[i:i + 1].contiguous().numpy()}, share_inputs=True)
            per_image.append([torch.from_numpy(result[out]) for out in self._outputs])
        tensors = per_image[0] if len(per_image) == 1 else [torch.cat(ts) for ts in zip(*per_image)]
        return sam2_internals.backbone_out(tensors)
