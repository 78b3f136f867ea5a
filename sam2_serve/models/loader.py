"""Resolve a checkpoint, pick a device and dtype, and build a sam2 model from it.

Resolution order for a checkpoint (``resolve_checkpoint``):
1. an explicit local path given by the user;
2. the local cache, ``$SAM2_SERVE_CHECKPOINT_DIR/<hf_file>``, by default ``<project>/checkpoints`` in a source
   checkout, ``~/.cache/sam2-serve/checkpoints`` for an installed package;
3. a download from the Hugging Face Hub into that cache (progress bars from ``huggingface_hub``);
4. otherwise ``ModelUnavailable`` saying where to put the file by hand.

``check_checkpoint`` tells, without building real weights, whether a file is that model's state dict; the
``sam2-serve serve`` command runs it before it starts anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from sam2_serve.common.errors import ModelUnavailable
from sam2_serve.models.mask_decoder import wrap_mask_decoder
from sam2_serve.models.registry import ModelSpec, get_spec

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["float32", "bfloat16"]

# sam2_serve/models/loader.py -> the project root when this runs from a source checkout (or an editable install).
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def checkpoint_dir() -> Path:
    """The local checkpoint cache: ``$SAM2_SERVE_CHECKPOINT_DIR``, else ``checkpoints/`` of the source checkout,
    else (an installed package, whose project root is a site-packages folder) ``~/.cache/sam2-serve/checkpoints``."""
    if os.environ.get("SAM2_SERVE_CHECKPOINT_DIR"):
        return Path(os.environ["SAM2_SERVE_CHECKPOINT_DIR"]).expanduser()
    if (_PROJECT_ROOT / "pyproject.toml").is_file():
        return _PROJECT_ROOT / "checkpoints"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "sam2-serve" / "checkpoints"


def resolve_checkpoint(spec: ModelSpec, checkpoint: str | os.PathLike | None = None) -> Path:
    """Return a local path to ``spec``'s weights, downloading them into the cache if needed."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"checkpoint {str(path)!r} does not exist or is not a file")
        return path
    cached = checkpoint_dir() / spec.hf_file
    if cached.is_file():
        return cached
    url = f"https://huggingface.co/{spec.hf_repo}/resolve/main/{spec.hf_file}"
    try:
        from huggingface_hub import constants, hf_hub_download

        if not constants.HF_HUB_OFFLINE:
            _probe(f"{constants.ENDPOINT}/{spec.hf_repo}/resolve/main/{spec.hf_file}")
        logger.info("downloading %s from the Hugging Face Hub (%s) into %s", spec.name, spec.hf_repo, cached.parent)
        return Path(hf_hub_download(repo_id=spec.hf_repo, filename=spec.hf_file, local_dir=cached.parent))
    except Exception as exc:  # offline, proxy, 404, disk full: the remedy is the same
        raise ModelUnavailable(
            f"no checkpoint for {spec.name}: not at {cached} and the download from {spec.hf_repo} failed "
            f"({type(exc).__name__}: {exc}). Download {url} on a machine with internet access and either "
            f"put it at {cached} or pass checkpoint=/path/to/{spec.hf_file}"
        ) from exc


def _probe(url: str, timeout_s: float = 10.0) -> None:
    """One request to the Hub, which raises when it cannot be reached at all (no route, DNS, refused, timeout).

    huggingface_hub retries those five times with back-off (23 s of sleep, ten times that with packets dropped):
    right for a flaky link, but without any network a start would hang for minutes before saying what to do. Any
    HTTP answer (even an error status) counts as reachable; the download itself then keeps its own retries.
    """
    from huggingface_hub.utils import get_session

    get_session().head(url, timeout=timeout_s, allow_redirects=False)


def select_device(device: Device = "auto") -> torch.device:
    """``auto`` takes CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("device=cuda was asked for but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def autocast(device: torch.device, dtype: DType):
    """The context the model runs under: bfloat16 autocast when asked for, float32 otherwise."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype != "float32":
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    return nullcontext()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint file (``{"model": state_dict}`` as sam2 saves them, or a bare state dict),
    read with ``weights_only=True``: a file that pickles anything but tensors and containers is refused."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = state["model"] if isinstance(state, dict) and "model" in state else state
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("the file holds no state dict (a mapping of names to tensors)")
    return state_dict


def check_checkpoint(spec: ModelSpec, path: Path) -> None:
    """Raise ``ModelUnavailable`` unless ``path`` holds ``spec``'s weights: same names and shapes as the network
    sam2 builds from ``spec.config`` (on the CPU; sam2's builder cannot run on the meta device)."""
    from sam2.build_sam import build_sam2

    try:
        state_dict = read_state_dict(path)
    except Exception as exc:
        raise ModelUnavailable(
            f"checkpoint {path} could not be read as a {spec.name} state dict ({type(exc).__name__}: "
            f"{str(exc)[:300]}); is the file complete? Fetch it again") from exc
    expected = {k: tuple(v.shape) for k, v in build_sam2(spec.config, None, device="cpu").state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    problems = [f"{len(keys)} weights {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
                if keys]
    if problems:
        raise ModelUnavailable(
            f"checkpoint {path} is not a {spec.name} state dict: {'; '.join(problems)}. Is it for another model "
            f"size? {spec.name} is {spec.hf_file} from https://huggingface.co/{spec.hf_repo}")


@dataclass(frozen=True)
class LoadedModel:
    """A sam2 model ready for inference, with what ``GET /v1/models`` reports about it."""

    model: torch.nn.Module
    spec: ModelSpec
    checkpoint: Path
    sha256: str
    device: torch.device
    dtype: DType

    def autocast(self):
        return autocast(self.device, self.dtype)


def load_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    device: Device = "auto",
    dtype: DType = "float32",
    *,
    video: bool = False,
    hydra_overrides: Sequence[str] = (),
    sam2_exact: bool = False,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Build ``name``'s network with sam2's own builder and load its weights with ``weights_only=True``.

    Args:
        name: registry name (``sam2_serve.models.registry.MODELS``).
        checkpoint: local ``.pt`` file holding ``{"model": state_dict}``; None resolves through the cache/Hub.
        device: ``auto`` | ``cpu`` | ``cuda``.
        dtype: ``float32`` | ``bfloat16`` (applied as autocast at inference; weights stay float32).
        video: build ``SAM2VideoPredictor`` (the video model class) instead of ``SAM2Base``.
        hydra_overrides: extra sam2 config overrides, e.g. ``["++model.image_size=256"]``.
        sam2_exact: leave the network exactly as sam2 builds it, as references and upstream baselines need.
            By default the mask decoder's transformer is wrapped (``sam2_serve.models.mask_decoder``: channels-last inputs on
            CPU, and a stop after the transformer for automatic masks); the network and weights are sam2's.
        expected_sha256: the file's sha256 as resolved where the application was built; another file (replaced
            since, or a different one on this node) is refused with ``ModelUnavailable``.
    """
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise ModelUnavailable(str(exc.args[0])) from None
    autocast(torch.device("cpu"), dtype)  # validates dtype before any heavy work
    torch_device = select_device(device)
    path = resolve_checkpoint(spec, checkpoint)
    sha256 = file_sha256(path)
    if expected_sha256 and sha256 != expected_sha256:
        raise ModelUnavailable(f"checkpoint {path} has sha256 {sha256}, not {expected_sha256} as where the "
                               "application was built: the nodes hold different files for the same model")
    builder = build_sam2_video_predictor if video else build_sam2
    # Build without weights, then load them ourselves so a bad file gives a clear message instead of
    # sam2's bare RuntimeError().
    model = builder(spec.config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(hydra_overrides))
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except Exception as exc:
        raise ModelUnavailable(
            f"checkpoint {path} could not be loaded as a {spec.name} state dict "
            f"({type(exc).__name__}: {str(exc)[:300]}); is the file complete and for this model size?"
        ) from exc
    model = model.to(torch_device).eval()
    if not sam2_exact:
        wrap_mask_decoder(model)
    logger.info("loaded %s from %s on %s (%s)", spec.name, path, torch_device, dtype)
    return LoadedModel(model, spec, path, sha256, torch_device, dtype)
