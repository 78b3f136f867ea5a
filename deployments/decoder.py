"""MaskDecoder: stateless prompt encoder + mask decoder over an embedding passed in by reference."""

from __future__ import annotations

import asyncio
from typing import Sequence

from ray.exceptions import ObjectLostError, OwnerDiedError

from common.errors import EmbeddingNotFound
from common.types import EmbeddingRef, ImageEmbedding, MaskPrediction, ObjectPrompt
from deployments.common import load_for_replica
from models.image import ImageModel


class MaskDecoder:
    """Decodes prompts against an image embedding it is handed; it never holds an image of its own."""

    def __init__(self, model: str, checkpoint: str | None = None, device: str = "auto", dtype: str = "float32",
                 torch_threads: int | None = None):
        loaded = load_for_replica(model, checkpoint, device, dtype, torch_threads)
        # The decoder never runs the backbone: drop its weights (most of the model) from this replica.
        loaded.model.image_encoder = None
        self.model = ImageModel(loaded)
        self.decodes = 0

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
                     multimask_output: bool = False) -> list[MaskPrediction]:
        """Masks per object; ``prompts`` are in pixels of the original image (see ``ObjectPrompt``)."""
        embedding = await self._embedding(emb)
        self.decodes += 1
        return await asyncio.to_thread(self.model.decode, embedding, prompts, multimask_output)

    def stats(self) -> dict:
        return {"decodes": self.decodes}
