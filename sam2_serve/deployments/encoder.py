"""ImageEncoder: the heavy image backbone, batching concurrent requests into one forward pass."""

from __future__ import annotations

import logging

import ray
from ray import serve

from sam2_serve.common.types import EmbeddingRef, EncodeRequest
from sam2_serve.deployments.metrics import EncoderMetrics
from sam2_serve.deployments.replica import TorchThread, load_for_replica
from sam2_serve.models.fast_encoder import load_fast_encoder
from sam2_serve.models.image import ImageModel

logger = logging.getLogger("ray.serve")


class ImageEncoder:
    """Encodes images and puts each embedding in the object store, returning only an ``EmbeddingRef``.

    The embedding is owned by this replica: it stays in the object store while anyone (the embedding cache, a
    decoder call) holds the reference, and it travels to decoders by reference, never by value.
    """

    def __init__(self, model: str, checkpoint: str | None = None, device: str = "auto", dtype: str = "float32",
                 max_batch_size: int = 4, batch_wait_timeout_s: float = 0.02, torch_threads: int | None = None,
                 cpu_max_batch_size: int = 1, checkpoint_sha256: str | None = None,
                 stuck_after_s: float | None = None, encoder_backend: str = "auto"):
        self.torch = TorchThread()
        self.stuck_after_s = stuck_after_s
        loaded = self.torch.call(load_for_replica, model, checkpoint, device, dtype, torch_threads,
                                 expected_sha256=checkpoint_sha256)
        # On the CPU: OpenVINO (exported from this checkpoint, or read from its cache), else torch with the reason.
        encoder = self.torch.call(load_fast_encoder, loaded, encoder_backend)
        logger.info("ImageEncoder: network on %s: %s", encoder.backend, encoder.reason)
        self.model = ImageModel(loaded, encoder)
        if self.model.loaded.device.type == "cpu":
            # On CPU a batch only adds memory traffic: per image, batches of 4 took 5.3-5.5 s against 4.5-4.7 s
            # one at a time (base-plus, 1800x1200, 2 cores). Batching is for GPUs.
            max_batch_size = cpu_max_batch_size
        logger.info("ImageEncoder on %s: up to %d images per forward pass", self.model.loaded.device, max_batch_size)
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.metrics = EncoderMetrics()

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def encode(self, requests: list[EncodeRequest]) -> list[EmbeddingRef]:
        """Encode a batch (Serve gathers concurrent single-image calls into ``requests``)."""
        embeddings = await self.torch.run(self.metrics.forward.timed(self.model.encode), [r.rgb for r in requests],
                                          [r.image_id for r in requests])
        self.metrics.images.inc(len(requests))
        self.metrics.batch_size.observe(len(requests))
        return [EmbeddingRef(e.image_id, e.orig_hw, e.nbytes, ray.put(e)) for e in embeddings]

    def info(self) -> dict:
        """What ``GET /v1/models`` reports: model name, checkpoint sha256, device, dtype, input size, and the
        runtime of the image encoder's network (``openvino`` or ``torch``)."""
        loaded = self.model.loaded
        return {"name": loaded.spec.name, "checkpoint_sha256": loaded.sha256, "device": str(loaded.device),
                "dtype": loaded.dtype, "image_size": self.model.image_size,
                "encoder_backend": self.model.encoder.backend}

    def check_health(self) -> None:
        """Serve's periodic health check: fails when the torch thread is dead or stuck (``TorchThread``)."""
        self.torch.check_health(self.stuck_after_s)

    def stats(self) -> dict:
        """Counters for tests (the exported metrics' values): images encoded, forward passes, seconds in them."""
        m = self.metrics
        return {"images_encoded": m.images.value, "batches": m.forward.count, "forward_s": m.forward.sum}
