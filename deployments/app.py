"""The application graph, bound in one place: ``build_app(args)``.

    serve run deployments.app:build_app model=sam2.1-hiera-tiny checkpoint=path/to/ckpt.pt device=cpu
    serve run serve_config.yaml            # the same keys under ``args:``

Deployments are plain classes (see their files); here they get their Ray options and handles.
GPU shares are applied only when the model runs on CUDA: ``device=cuda``, or ``device=auto`` on a cluster
that has GPUs. On a CPU-only machine the same config runs with fractional CPU shares instead.
"""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from common.config import Limits
from deployments.cache import EmbeddingCache
from deployments.decoder import MaskDecoder
from deployments.encoder import ImageEncoder
from deployments.ingress import HTTPIngress
from models.registry import DEFAULT_MODEL, MODELS


class Placement(BaseModel):
    """Ray resources of one deployment's replicas. ``num_gpus`` applies only when the model is on CUDA."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: Optional[int] = Field(None, gt=0, description="CPU threads for torch; default all cores.")
    num_replicas: Optional[int] = Field(
        None, gt=0, description="Fixed replica count; default: Serve's, or the config's autoscaling_config.")


class EncoderPlacement(Placement):
    num_cpus: float = 0.5
    num_gpus: float = 0.5
    max_batch_size: int = Field(4, gt=0, description="Images per encoder forward pass.")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="How long a batch waits to fill.")


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (CLI ``key=value`` pairs or ``args:`` in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description=f"one of {', '.join(MODELS)}")
    checkpoint: Optional[str] = Field(None, description="local .pt path; default: cache, then Hugging Face Hub")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    cache_bytes: int = Field(2 << 30, gt=0, description="Embedding cache bound (~16 MB per image in float32).")
    limits: Limits = Field(default_factory=Limits)
    encoder: EncoderPlacement = Field(default_factory=EncoderPlacement)
    decoder: Placement = Field(default_factory=lambda: Placement(num_cpus=0.25, num_gpus=0.25))
    ingress: Placement = Field(default_factory=lambda: Placement(num_cpus=0.25))


def uses_gpu(device: str) -> bool:
    """Whether replicas should ask Ray for GPUs: explicitly, or ``auto`` on a cluster that has some."""
    if device != "auto":
        return device == "cuda"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def _options(p: Placement, gpu: bool) -> dict:
    """serve.deployment options of one placement: Ray resources, and a replica count when fixed."""
    options = {"ray_actor_options": {"num_cpus": p.num_cpus, "num_gpus": p.num_gpus if gpu else 0}}
    if p.num_replicas is not None:
        options["num_replicas"] = p.num_replicas
    return options


def build_app(args: AppArgs) -> Application:
    """Bind encoder, decoder and cache under the ingress. Application name ``sam2``, route prefix ``/``.

    Serve validates CLI ``key=value`` pairs and config ``args:`` into ``AppArgs`` (this annotation is what tells
    it to); Python callers may pass a plain dict.
    """
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    gpu = uses_gpu(a.device)
    model_kwargs = {"model": a.model, "checkpoint": a.checkpoint, "device": a.device, "dtype": a.dtype}

    encoder = serve.deployment(ImageEncoder, name="ImageEncoder", **_options(a.encoder, gpu)).bind(
        **model_kwargs, max_batch_size=a.encoder.max_batch_size,
        batch_wait_timeout_s=a.encoder.batch_wait_timeout_s, torch_threads=a.encoder.torch_threads)
    decoder = serve.deployment(MaskDecoder, name="MaskDecoder", **_options(a.decoder, gpu)).bind(
        **model_kwargs, torch_threads=a.decoder.torch_threads)
    cache = serve.deployment(EmbeddingCache, name="EmbeddingCache", num_replicas=1,
                             ray_actor_options={"num_cpus": 0}).bind(max_bytes=a.cache_bytes)
    ingress = serve.deployment(HTTPIngress, name="SAM2Ingress", **_options(a.ingress, False)).bind(
        encoder=encoder, decoder=decoder, cache=cache, limits=a.limits.model_dump())
    return ingress
