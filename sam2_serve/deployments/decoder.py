"""MaskDecoder: stateless prompt encoder + mask decoder over an embedding passed in by reference."""

from __future__ import annotations

import os
from typing import Sequence

from ray.exceptions import ObjectLostError, OwnerDiedError

from sam2_serve.common.errors import EmbeddingNotFound
from sam2_serve.common.types import EmbeddingRef, ImageEmbedding, MaskPrediction, ObjectPrompt
from sam2_serve.deployments.metrics import DecoderMetrics
from sam2_serve.deployments.replica import TorchThread, load_for_replica
from sam2_serve.models.amg import decode_batch_steps, run_step
from sam2_serve.common.types import AmgParams, BatchMasks
from sam2_serve.models.image import ImageModel


class MaskDecoder:
    """Decodes prompts against an image embedding it is handed; it never holds an image of its own."""

    def __init__(self, model: str, checkpoint: str | None = None, device: str = "auto", dtype: str = "float32",
                 torch_threads: int | None = None, checkpoint_sha256: str | None = None,
                 stuck_after_s: float | None = None):
        self.torch = TorchThread()
        self.stuck_after_s = stuck_after_s
        loaded = self.torch.call(load_for_replica, model, checkpoint, device, dtype, torch_threads,
                                 expected_sha256=checkpoint_sha256)
        # The decoder never runs the backbone: drop its weights (most of the model) from this replica.
        loaded.model.image_encoder = None
        self.model = ImageModel(loaded)
        self.decodes = 0
        self.amg_batches = 0
        self.metrics = DecoderMetrics()
        # Clicks run before queued automatic-mask steps on the one torch thread (TorchThread), so a click waits for
        # one decoder pass at most, not for whole grids; batches in flight keep only their low-res logits between
        # steps (16 MB for 64 prompts), never their activations.

    async def _embedding(self, emb: EmbeddingRef | ImageEmbedding) -> ImageEmbedding:
        if isinstance(emb, ImageEmbedding):
            return emb
        try:
            return await emb.ref
        except (ObjectLostError, OwnerDiedError):
            raise EmbeddingNotFound(
                f"the embedding of image {emb.image_id} was lost with the replica that held it; send the image again"
            ) from None

    async def decode(self, emb: EmbeddingRef | ImageEmbedding, prompts: Sequence[ObjectPrompt],
                     multimask_output: bool = False, with_logits: bool = True) -> list[MaskPrediction]:
        """Masks per object; ``prompts`` are in pixels of the original image (see ``ObjectPrompt``)."""
        embedding = await self._embedding(emb)
        self.decodes += 1
        return await self.torch.run(self.metrics.passes.timed(self.model.decode, {"op": "predict"}), embedding,
                                    prompts, multimask_output, with_logits=with_logits)

    async def segment_batch(self, emb: EmbeddingRef | ImageEmbedding, points, crop_box: tuple[int, int, int, int],
                            orig_hw: tuple[int, int], params: AmgParams) -> BatchMasks:
        """One batch of automatic-mask grid points on a (crop's) embedding -> compact filtered masks.

        ``points``: float (N, 2) (x, y) pixels of the crop; ``crop_box``: (x0, y0, x1, y1) of the crop in the
        original image of size ``orig_hw`` = (height, width). See ``sam2_serve.models.amg.decode_batch``.
        """
        embedding = await self._embedding(emb)
        self.amg_batches += 1
        # In steps of one decoder pass, queued behind interactive clicks: a click waits for one step at most.
        steps = decode_batch_steps(self.model, embedding, points, crop_box, orig_hw, params)
        step = self.metrics.passes.timed(run_step, {"op": "segment"})
        while True:
            done, result = await self.torch.run(step, self.model, steps, priority=TorchThread.BULK)
            if done:
                self.metrics.amg_prompts.inc(len(points))
                self.metrics.amg_stopped.inc(result.stopped)
                return result

    def check_health(self) -> None:
        """Serve's periodic health check: fails when the torch thread is dead or stuck (``TorchThread``)."""
        self.torch.check_health(self.stuck_after_s)

    def stats(self) -> dict:
        return {"decodes": self.decodes, "amg_batches": self.amg_batches, "trims": self.torch.trims,
                "pid": os.getpid()}
