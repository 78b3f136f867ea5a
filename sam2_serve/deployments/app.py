"""The application graph, bound in one place: ``build_app(args)``.

    serve run sam2_serve.deployments.app:build_app model=sam2.1-hiera-tiny checkpoint=path/to/ckpt.pt device=cpu
    sam2-serve serve serve_config.yaml     # the same keys under ``args:``; checks the checkpoint, then `serve run`

``build_app`` resolves the checkpoint (``resolve_app_checkpoint``) before it binds anything, so a missing one
fails the build (at once in the ``serve run`` process for an import path) instead of every replica retrying.
``bind_app`` binds only, resolving nothing (for checks of the graph, e.g. ``scripts/render_k8s.py``).

Deployments are plain classes (see their files); here they get their Ray options and handles.
GPU shares are applied only when the model runs on CUDA: ``device=cuda``, or ``device=auto`` on a cluster
that has GPUs. On a CPU-only machine the same config runs with fractional CPU shares instead.
"""

import logging
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig, RequestRouterConfig
from ray.serve.schema import LoggingConfig

from sam2_serve.common.auth import AuthConfig
from sam2_serve.common.limits import Limits
from sam2_serve.deployments.cache import EmbeddingCache
from sam2_serve.deployments.decoder import MaskDecoder
from sam2_serve.deployments.encoder import ImageEncoder
from sam2_serve.deployments.ingress import SAM2Ingress
from sam2_serve.deployments.tracker import SessionRouter, VideoTracker
from sam2_serve.models.registry import DEFAULT_MODEL, MODELS


# glibc's allocator, set per replica kind through the environment (read once, at process start).
# Model replicas (encoder, decoder, tracker): one arena, no mmapped blocks, no automatic trimming. A forward pass
# allocates GBs of activations in large blocks; glibc serves blocks over its mmap threshold (32 MiB at most), and
# every block of a thread's own arena (64 MiB heaps, unmapped when empty), with fresh mmaps that are page-faulted and
# zeroed anew on every pass: 1.3 GB of faults a video frame, 2.4 GB a base-plus image encoding. In the one sbrk heap
# they are reused: 8-13 % faster passes on CPU (BENCHMARKS.md). The torch thread of a replica hands the heap back
# with malloc_trim once idle for a second (``sam2_serve.deployments.replica.TorchThread``).
MODEL_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
# Ingress and cache: at most 2 arenas (threads otherwise get up to 8 per core, each keeping what it freed), and
# buffers over 1 MiB (uploaded images, encoded masks) mmapped, so that they go back to the OS when freed.
IO_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


class Placement(BaseModel):
    """Ray resources of one deployment's replicas. ``num_gpus`` applies only when the model is on CUDA."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: Optional[int] = Field(None, gt=0, description="CPU threads for torch; default all cores.")
    num_replicas: Optional[int] = Field(
        None, gt=0, description="Fixed replica count; default: Serve's, or the config's autoscaling_config.")
    # Backpressure: a replica takes at most max_ongoing_requests at once, and each caller (HTTP proxy or upstream
    # deployment) queues at most max_queued_requests more; beyond that the client gets a fast 503 + Retry-After.
    max_ongoing_requests: int = Field(8, gt=0, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(64, gt=0, description="Requests each caller queues for this deployment "
                                     "before answering 503 (bounds waiting time and memory).")
    # Serve calls each replica's health check every period; 3 failures (or timeouts) in a row and it replaces it.
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between Serve's health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds a health check may take before it "
                                          "counts as failed.")


class ModelPlacement(Placement):
    """A deployment whose replicas run a model on their one torch thread (encoder, decoder, tracker)."""

    stuck_after_s: Optional[float] = Field(
        300.0, gt=0, description="The replica's health check fails once its torch thread has run one job (a forward "
        "pass, a video frame) this long, and Serve replaces it. Generous by default for CPUs (a base-plus encode "
        "takes 5-11 s there, a video frame 7-11 s, more with many objects); GPU work is far faster. None: no bound.")


class EncoderPlacement(ModelPlacement):
    num_cpus: float = 0.5
    num_gpus: float = 0.5
    max_queued_requests: int = 32
    max_batch_size: int = Field(4, gt=0, description="Images per encoder forward pass on a GPU.")
    cpu_max_batch_size: int = Field(1, gt=0, description="Images per forward pass when the model runs on the CPU, "
                                    "where batching is slower per image (BENCHMARKS.md, predict).")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="How long a batch waits to fill.")


class TrackerPlacement(ModelPlacement):
    """The VideoTracker: a whole model (backbone included) per replica, holding streams and sessions."""

    num_cpus: float = 1.0
    num_gpus: float = 0.25
    hydra_overrides: list[str] = Field(default_factory=list, description="Extra sam2 config overrides for the "
                                       "tracker's model, e.g. ['++model.image_size=512'] (weights unchanged).")
    session_ttl_s: float = Field(600.0, gt=0, description="Idle seconds before a session expires (410 after).")
    max_sessions: int = Field(8, gt=0, description="Sessions one replica holds at most (422 beyond).")
    session_keep_frames: int = Field(
        300, ge=16, description="Sessions on videos longer than this keep each object's tracking state for this "
        "many frames around the latest propagated frame (plus prompted frames): memory bounded in video length. A "
        "correction or propagation that would read dropped state is refused (422) with what to do.")
    max_live_streams: int = Field(8, gt=0, description="Live streams (WS /v1/live) one replica tracks at most; "
                                  "each also holds one of the ingress's max_ongoing_requests while connected.")
    max_ongoing_requests: int = Field(16, gt=0, description="Concurrent streams and session calls per replica.")


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (CLI ``key=value`` pairs or ``args:`` in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description=f"one of {', '.join(MODELS)}")
    checkpoint: Optional[str] = Field(None, description="local .pt path; default: cache, then Hugging Face Hub")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    encoder_backend: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="What runs the image encoder's network on the CPU, for images (ImageEncoder) and for "
        "each video frame (VideoTracker): auto = OpenVINO (exported from the checkpoint at start, cached on disk, "
        "checked against torch) where a start-up race finds it at most 0.85x torch's time, else torch; openvino = "
        "OpenVINO whatever its speed; torch. CUDA always runs torch.")
    cache_bytes: int = Field(2 << 30, gt=0, description="Embedding cache bound (~16 MB per image in float32).")
    limits: Limits = Field(default_factory=Limits)
    encoder: EncoderPlacement = Field(default_factory=EncoderPlacement)
    # The decoder's queue is deep because one segment_anything request fans out points/points_per_batch calls.
    decoder: ModelPlacement = Field(default_factory=lambda: ModelPlacement(
        num_cpus=0.25, num_gpus=0.25, max_ongoing_requests=16, max_queued_requests=512))
    ingress: Placement = Field(default_factory=lambda: Placement(num_cpus=0.25, max_ongoing_requests=64,
                                                                 max_queued_requests=128))
    tracker: TrackerPlacement = Field(default_factory=TrackerPlacement)
    cache: Placement = Field(default_factory=lambda: Placement(
        num_cpus=0, num_replicas=1, max_ongoing_requests=256, max_queued_requests=1024),
        description="EmbeddingCache: one replica (its LRU is the shared one); only the queue bounds apply.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Optional API-key authentication (SECURITY.md).")
    request_timeout_s: Optional[float] = Field(
        300.0, gt=0, description="Ingress bound on one request (streams: until the response starts); 504 after. "
        "Keep below http_options.request_timeout_s of the Serve config so clients get the JSON error.")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of 503 answers (overload, replica lost).")
    logging: LoggingConfig = Field(
        default_factory=lambda: LoggingConfig(encoding="JSON"), description="Serve's logging_config of every "
        "deployment (it wins over an application-level logging_config). JSON: one object a line, with the request_id "
        "of the request each line was logged in; TEXT for plain lines.")
    replica_env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of every replica, over the allocator settings of "
        "its kind (model replicas: MODEL_MALLOC_ENV, ingress and cache: IO_MALLOC_ENV); a key given here wins. "
        "Without those settings a decoder's resident memory grew 1.45x under mixed load (BENCHMARKS.md, load) and "
        "model passes were 8-13 % slower on CPU.")


def uses_gpu(device: str) -> bool:
    """Whether replicas should ask Ray for GPUs: explicitly, or ``auto`` on a cluster that has some."""
    if device != "auto":
        return device == "cuda"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def _options(p: Placement, gpu: bool, retry_after_s: float = 1.0, env: dict | None = None,
             logging_config: LoggingConfig | None = None) -> dict:
    """serve.deployment options of one placement: Ray resources, backpressure, health checks, logging, and a
    replica count when fixed."""
    options = {"ray_actor_options": {"num_cpus": p.num_cpus, "num_gpus": p.num_gpus if gpu else 0},
               "max_ongoing_requests": p.max_ongoing_requests, "max_queued_requests": p.max_queued_requests,
               "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
               "health_check_period_s": p.health_check_period_s, "health_check_timeout_s": p.health_check_timeout_s}
    if logging_config is not None:
        options["logging_config"] = logging_config
    if env:
        options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(env)}
    if p.num_replicas is not None:
        options["num_replicas"] = p.num_replicas
    return options


def resolve_app_checkpoint(args: AppArgs | dict) -> tuple[Path, str]:
    """(path, sha256) of the application's checkpoint: ``checkpoint=``, the cache, or a download from the Hub
    (huggingface_hub's progress bar); ``ModelUnavailable`` saying how to get the file otherwise."""
    from sam2_serve.common.errors import ModelUnavailable
    from sam2_serve.models.loader import file_sha256, resolve_checkpoint
    from sam2_serve.models.registry import get_spec

    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    try:
        spec = get_spec(a.model)
    except KeyError as exc:
        raise ModelUnavailable(str(exc.args[0])) from None
    path = resolve_checkpoint(spec, a.checkpoint)
    return path, file_sha256(path)


def build_app(args: AppArgs) -> Application:
    """Resolve the checkpoint once (an error here fails the build, before any replica starts), then ``bind_app``.

    Serve validates CLI ``key=value`` pairs and config ``args:`` into ``AppArgs`` (this annotation is what tells
    it to); Python callers may pass a plain dict.
    """
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    path, sha256 = resolve_app_checkpoint(a)
    logging.getLogger("ray.serve").info("sam2: %s checkpoint %s (sha256 %s)", a.model, path, sha256)
    # Replicas resolve it again where they run (the same path on one machine or in the baked image) and refuse a
    # file with another sha256: every replica serves the weights the application was built with.
    return bind_app(a, checkpoint_sha256=sha256)


def bind_app(args: AppArgs | dict, checkpoint_sha256: str | None = None) -> Application:
    """Bind encoder, decoder, cache and tracker under the ingress. Application name ``sam2``, route prefix ``/``.

    Binds only: nothing is resolved or loaded here (``build_app`` checks the checkpoint first and passes its
    ``checkpoint_sha256``, which model replicas then require of the file they load).
    """
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    gpu = uses_gpu(a.device)
    model_kwargs = {"model": a.model, "checkpoint": a.checkpoint, "device": a.device, "dtype": a.dtype,
                    "checkpoint_sha256": checkpoint_sha256}

    retry, log = a.retry_after_s, a.logging
    model_env, io_env = {**MODEL_MALLOC_ENV, **a.replica_env}, {**IO_MALLOC_ENV, **a.replica_env}
    encoder = serve.deployment(ImageEncoder, name="ImageEncoder",
                               **_options(a.encoder, gpu, retry, model_env, log)).bind(
        **model_kwargs, max_batch_size=a.encoder.max_batch_size, cpu_max_batch_size=a.encoder.cpu_max_batch_size,
        batch_wait_timeout_s=a.encoder.batch_wait_timeout_s, torch_threads=a.encoder.torch_threads,
        stuck_after_s=a.encoder.stuck_after_s, encoder_backend=a.encoder_backend)
    decoder = serve.deployment(MaskDecoder, name="MaskDecoder", **_options(a.decoder, gpu, retry, model_env, log)).bind(
        **model_kwargs, torch_threads=a.decoder.torch_threads, stuck_after_s=a.decoder.stuck_after_s)
    cache = serve.deployment(EmbeddingCache, name="EmbeddingCache",
                             **_options(a.cache, False, retry, io_env, log)).bind(max_bytes=a.cache_bytes)
    t = a.tracker
    # Sessions live on one replica: SessionRouter sends each call with a session_id to the replica that minted it.
    tracker = serve.deployment(
        VideoTracker, name="VideoTracker",
        request_router_config=RequestRouterConfig(request_router_class=SessionRouter),
        **_options(t, gpu, retry, model_env, log)).bind(
        **model_kwargs, torch_threads=t.torch_threads, hydra_overrides=t.hydra_overrides,
        session_ttl_s=t.session_ttl_s, max_sessions=t.max_sessions, stuck_after_s=t.stuck_after_s,
        max_live_streams=t.max_live_streams, session_keep_frames=t.session_keep_frames,
        encoder_backend=a.encoder_backend)
    # serve.ingress() without an app: each replica builds its FastAPI app from SAM2Ingress.__serve_build_asgi_app__.
    ingress = serve.deployment(serve.ingress()(SAM2Ingress), name="SAM2Ingress",
                               **_options(a.ingress, False, retry, io_env, log)).bind(
        encoder=encoder, decoder=decoder, cache=cache, tracker=tracker, limits=a.limits.model_dump(),
        auth=a.auth.model_dump(), request_timeout_s=a.request_timeout_s, retry_after_s=retry)
    return ingress
